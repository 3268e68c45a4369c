"""cnnlab: image classification with convolutional networks, on PyTorch and torchvision."""

__version__ = "0.1.0"


def load(checkpoint, tta=None):
    """A trained run's model with its preprocessing, for new images (a run folder or a checkpoint):

        clf = cnnlab.load("runs/fashion-mnist-fast-1")
        clf.predict("shoe.png").top   # [("Sneaker", 0.97), ("Sandal", 0.02), ...]

    The image may be a path, a file's bytes, a PIL image or a tensor. See cnnlab.serve.predictor.
    """
    from cnnlab.serve.predictor import load as _load  # here: `import cnnlab` stays light

    return _load(checkpoint, tta=tta)
