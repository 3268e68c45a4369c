"""Models: registered builder functions; `create_model` is the one public way to get a model."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from cnnlab.registry import Registry

MODELS: Registry = Registry("model")

from cnnlab.models import fastnet  # noqa: E402,F401  (registers its presets)


def create_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` for `num_classes` outputs and `in_channels` input channels."""
    builder = MODELS.get(name)
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as e:
        from cnnlab.errors import ConfigError

        raise ConfigError(f"model {name!r} rejects its arguments ({e}); check model.kwargs in the recipe") from None


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "create_model", "num_parameters"]
