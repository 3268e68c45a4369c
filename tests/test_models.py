"""Every registered model builds, gives the right output shape, and backpropagates."""

import pytest
import torch

from cnnlab.models import MODELS, create_model, num_parameters
from cnnlab.errors import ConfigError


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape, classes", [((1, 28, 28), 10), ((3, 32, 32), 7)])
def test_builds_forwards_and_backpropagates(name, shape, classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=shape[0])
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, classes)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert num_parameters(model) > 0


@pytest.mark.parametrize("name", MODELS.names())
def test_features_then_head_is_forward(name):
    model = create_model(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize("name", MODELS.names())
def test_channels_last_gives_the_same_output(name):
    model = create_model(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    ref = model(x)
    model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5)


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ConfigError, match="unknown model 'nope'; known: fastnet"):
        create_model("nope", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match="rejects its arguments"):
        create_model("fastnet", num_classes=10, in_channels=1, no_such_arg=3)
