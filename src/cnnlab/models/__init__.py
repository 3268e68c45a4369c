"""Models: registered builder functions; `create_model` is the one public way to get a model."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn as nn

# imported to register their models (each takes MODELS from models/_registry.py)
from cnnlab.models import backbones, fastnet, presets, timm_zoo  # noqa: F401  (fastnet: imported to register)
from cnnlab.models._registry import MODELS

MODELS.set_fallback(timm_zoo.find)  # timm/NAME, or a timm name that is not ours
if importlib.util.find_spec("timm") is not None:  # the timm models we name (their weights ship on PyPI)
    for _arch in timm_zoo.REGISTERED:
        MODELS.register(_arch)(timm_zoo.builder_for(_arch))

# name -> (default input (C, H, W), default number of classes), for `models list` and `summary`
DEFAULT_INPUTS: dict[str, tuple[tuple[int, int, int], int]] = {"fastnet": ((1, 28, 28), 10)}
DEFAULT_INPUTS.update({n: (inp, k) for n, (_, inp, k) in presets.PRESETS.items()})
DEFAULT_INPUTS.update(
    {n: ((3, 224, 224), 20) for n in [*backbones.BACKBONES, "squeezenet-finetuned"]}
)  # the Hanoi set-up
DEFAULT_INPUTS.update({n: ((3, 224, 224), 1000) for n in timm_zoo.REGISTERED})  # ImageNet, as the weights


def create_model(
    name: str, num_classes: int, in_channels: int, input_size: tuple[int, int] | None = None, **kwargs: Any
) -> nn.Module:
    """Build the registered model `name` for `num_classes` outputs, `in_channels` input channels and
    (H, W) `input_size` (None: the model's default); `kwargs` are the recipe's model.kwargs."""
    builder = MODELS.get(name)
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    except (TypeError, ValueError) as e:  # a keyword the builder lacks, or a value torch refuses
        from cnnlab.errors import ConfigError

        raise ConfigError(f"model {name!r} rejects its arguments ({e}); check model.kwargs in the recipe") from None


def default_input(name: str) -> tuple[tuple[int, int, int], int]:
    """((C, H, W), classes) the model `name` is shown at by `models list` and `summary` by default."""
    return DEFAULT_INPUTS.get(name, ((3, 32, 32), 10))


@torch.no_grad()
def dry_run(model: nn.Module, input_shape: tuple[int, ...], hint: str, name: str = "the model") -> torch.Tensor:
    """The output for one zero image of `input_shape` (C, H, W), in eval mode (the mode is restored).
    An input the network cannot take is a ConfigError ending in `hint`, not a torch traceback."""
    from cnnlab.errors import ConfigError

    was_training = model.training
    model.eval()
    try:
        return model(torch.zeros(1, *input_shape))
    except RuntimeError as e:  # a feature map shrank to nothing, or the shapes do not chain
        raise ConfigError(
            f"{name} cannot take a {'x'.join(map(str, input_shape))} input ({str(e).splitlines()[0][:120]}); {hint}"
        ) from None
    finally:
        model.train(was_training)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DEFAULT_INPUTS", "MODELS", "create_model", "default_input", "dry_run", "num_parameters"]
