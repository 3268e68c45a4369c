"""The source reports' networks, exactly, as specs for the spec-driven CNN (models/spec.py).

Each preset records the input and class count its report used; `cnnlab models list` counts its
parameters there, and tests assert the reports' figures.
"""

from __future__ import annotations

from typing import Any

from cnnlab.models._registry import MODELS
from cnnlab.models.spec import SpecCNN, build

# name -> (spec, default input (C, H, W), default number of classes)
PRESETS: dict[str, tuple[dict[str, Any], tuple[int, int, int], int]] = {
    # textbook A: MNIST. 3,274,634 parameters.
    "textbook-mnist": (
        dict(
            channels=[32, 64],
            kernel=5,
            padding=2,
            order="conv,act,pool",
            hidden=[1024],
            head_order="linear,act,dropout",
            head_dropout=0.5,
        ),
        (1, 28, 28),
        10,
    ),
    # textbook B: CelebA smile, 64x64 RGB, one sigmoid unit. 388,673 parameters. Exactly the listing the
    # report prints (its lines are numbered 1-20 without a gap: no dropout).
    "textbook-celeba-smile": (
        dict(
            channels=[32, 64, 128, 256],
            kernel=3,
            padding=1,
            orders=["conv,act,pool", "conv,act,pool", "conv,act,pool", "conv,act"],
            head_pool="avg",
            output="sigmoid",
        ),
        (3, 64, 64),
        2,
    ),
    # the same with Dropout(0.5) after pool1 and pool2, as in the book's own notebook (Raschka et al.,
    # "Machine Learning with PyTorch and Scikit-Learn", ch. 14): the report's listing may have left them out.
    "textbook-celeba-smile-dropout": (
        dict(
            channels=[32, 64, 128, 256],
            kernel=3,
            padding=1,
            orders=["conv,act,pool,dropout", "conv,act,pool,dropout", "conv,act,pool", "conv,act"],
            dropout=0.5,
            head_pool="avg",
            output="sigmoid",
        ),
        (3, 64, 64),
        2,
    ),
    # the UW lab's CNNModel. 28,938 parameters.
    "uw-lab": (dict(channels=[16, 32], kernel=5, padding=2, order="conv,act,pool"), (1, 28, 28), 10),
    # the comprehensive CIFAR-10 report: 1,278,218 parameters (the report says about 1.28 M).
    "cifar10-comprehensive": (
        dict(
            channels=[32, 64, 128],
            kernel=3,
            padding=1,
            order="conv,bn,act,pool,dropout2d",
            dropout2d=0.3,
            hidden=[512, 256],
            head_order="linear,bn,act,dropout",
            head_dropout=0.5,
        ),
        (3, 32, 32),
        10,
    ),
    # the KTH study's default: 'valid' padding, no ReLU after the third conv. 256,058 parameters.
    "kth-default": (
        dict(
            channels=[24, 48, 96],
            kernel=[5, 3, 3],
            padding="valid",
            orders=["conv,act,pool", "conv,act,pool", "conv,pool"],
            hidden=[512],
            head_order="linear,act",
        ),
        (3, 32, 32),
        10,
    ),
    # the Hanoi scratch CNN: pool then BatchNorm, activations called as functions. 6,983,444 for 20 classes.
    "hanoi-scratch": (
        dict(
            channels=[16, 32, 64, 128, 256],
            kernel=3,
            padding=1,
            order="conv,act,pool,bn",
            pre_dropout=0.5,
            hidden=[512, 256, 128],
            head_order="linear,act",
            final_dropout=0.5,
            functional=True,
        ),
        (3, 224, 224),
        20,
    ),
    # LeNet-5 (LeCun et al. 1998) on 28x28: padding 2 in the first conv gives its 32x32 geometry.
    "lenet5": (
        dict(
            channels=[6, 16],
            kernel=5,
            padding=[2, 0],
            order="conv,act,pool",
            act="tanh",
            pool="avg",
            hidden=[120, 84],
            head_order="linear,act",
        ),
        (1, 28, 28),
        10,
    ),
}


ABOUT = {
    "textbook-mnist": "textbook chapter, MNIST: 2 conv + FC 1024 + dropout",
    "textbook-celeba-smile": "textbook chapter, CelebA smile: 4 conv, global avg pool, sigmoid unit",
    "textbook-celeba-smile-dropout": "the same, with Dropout(0.5) after pool1 and pool2 (the book's notebook)",
    "uw-lab": "UW lab CNNModel: 2 conv (16, 32) + one linear layer",
    "cifar10-comprehensive": "comprehensive CIFAR-10 report: 3 conv-BN blocks + FC 512, 256",
    "kth-default": "KTH configuration study's default ('valid' padding)",
    "hanoi-scratch": "Hanoi bachelor project's scratch CNN: 5 conv blocks + FC 512, 256, 128",
    "lenet5": "LeNet-5: tanh, average pooling, FC 120, 84",
}


def _register(name: str, spec: dict[str, Any], default_input: tuple[int, int, int]) -> None:
    @MODELS.register(name)
    def builder(
        num_classes: int, in_channels: int, input_size: tuple[int, int] | None = None, **overrides: Any
    ) -> SpecCNN:
        return build(spec, overrides, num_classes, in_channels, tuple(input_size or default_input[1:]))

    builder.__doc__ = (
        f"{ABOUT[name]}\n\nA spec: the recipe's model.kwargs override any key of CNNSpec (models/spec.py)."
    )


for _name, (_spec, _input, _classes) in PRESETS.items():
    _register(_name, _spec, _input)
