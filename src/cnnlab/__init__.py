"""cnnlab: image classification with convolutional networks, on PyTorch and torchvision.

In Python (a notebook, a script), beside the `cnnlab` command:

    run = cnnlab.train(data="fashion-mnist", **{"optim.lr": 0.1})   # a Run: metrics, history, figures
    run = cnnlab.open_run("runs/fashion-mnist-fast-1")
    clf = cnnlab.load("runs/fashion-mnist-fast-1")                   # a Classifier for new images

`import cnnlab` imports neither torch nor matplotlib: each of these imports what it needs when called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# the names of cnnlab.api that `cnnlab.NAME` gives, imported at their first use (see __getattr__)
_API = ("Run", "open_run", "train", "train_config")


def load(checkpoint, tta=None):
    """A trained run's model with its preprocessing, for new images (a run folder or a checkpoint):

        clf = cnnlab.load("runs/fashion-mnist-fast-1")
        clf.predict("shoe.png").top   # [("Sneaker", 0.97), ("Sandal", 0.02), ...]

    The image may be a path, a file's bytes, a PIL image or a tensor. See cnnlab.serve.predictor.
    """
    from cnnlab.serve.predictor import load as _load  # here: `import cnnlab` stays light

    return _load(checkpoint, tta=tta)


def __getattr__(name: str) -> Any:
    """cnnlab.train, cnnlab.open_run, cnnlab.Run and cnnlab.train_config, from cnnlab.api when first asked for."""
    if name in _API:
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
