"""The fast default model: a small VGG-like network with BatchNorm and GELU, built for CPU speed.

Each block is conv3x3 -> maxpool2 -> BN -> GELU: pooling before the normalisation and activation
does them on a quarter of the pixels (about 1.3-1.5x the training throughput of conv -> BN -> act ->
pool on the 2-core CPU, measured with the same widths).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.models._registry import MODELS


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2), with a faster forward where no gradient is wanted (evaluation, predict).

    On the CPU, torch's max_pool2d always computes the argmax indices, and for bf16 channels_last
    tensors that makes it about a quarter of the default model's inference time. The max of the four
    strided 2x2 sub-grids gives the same values, bit for bit, at about twice the speed (measured at
    batch 256 on the 2-core CPU); its backward written by hand was slower than torch's, so training
    keeps torch's pooling. It has no parameters: checkpoints are the same either way.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.jit.is_scripting()
            or torch.jit.is_tracing()
            or (torch.is_grad_enabled() and x.requires_grad)
            or min(x.shape[-2:]) < 2
        ):
            return F.max_pool2d(x, 2)  # torch's: exported graphs, training, and its error for a map too small to pool
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor, as max_pool2d does
        x = x[..., :h, :w]
        return torch.maximum(
            torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]), torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2])
        )


ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": lambda: nn.ReLU(inplace=True),
}  # in place: BatchNorm's backward needs its input, not its output


def conv_bn(c_in: int, c_out: int, pool: bool, act: str = "gelu", strided: bool = False) -> nn.Sequential:
    """conv3x3 [-> maxpool2] -> BN -> act; `strided`: one 4x4 stride-2 conv in place of conv3x3 -> maxpool2."""
    if strided:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False)]
    else:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool and not strided:
        layers.append(MaxPool2x2())
    layers += [nn.BatchNorm2d(c_out), ACTIVATIONS[act]()]
    return nn.Sequential(*layers)


class FastNet(nn.Module):
    """[stem conv] -> len(widths) pooled blocks -> max pool to a pool_grid x pool_grid grid -> linear.

    For a 1x28x28 input and widths (32, 64, 128): (B, 32, 14, 14) -> (B, 64, 7, 7) ->
    (B, 128, 3, 3) -> (B, 128 * pool_grid**2) -> (B, num_classes). pool_grid 1 is a global max pool;
    the default recipe uses 3.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        stem_width: int = 0,
        extra_convs: int = 0,
        head_scale: float = 1.0,
        pool_grid: int = 1,
        act: str = "gelu",
        strided_first: bool = False,
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"fastnet's act is {act!r}; use one of {', '.join(ACTIVATIONS)}")
        # An optional full-resolution stem conv; costly at 28x28, so off by default.
        layers: list[nn.Module] = [conv_bn(in_channels, stem_width, pool=False, act=act)] if stem_width else []
        c = stem_width or in_channels
        for i, w in enumerate(widths):
            # strided_first: the first block halves the map with a 4x4 stride-2 conv (the learnable
            # superset of conv3x3 -> 2x2 average pool) instead of conv3x3 -> maxpool2, so no map at the
            # full resolution is made, pooled or stored for the backward: at 28x28 that full-size map's
            # conv, pooling and its zero-filled gradient are about a third of the training step.
            layers.append(conv_bn(c, w, pool=True, act=act, strided=strided_first and i == 0 and not stem_width))
            layers += [conv_bn(w, w, pool=False, act=act) for _ in range(extra_convs)]
            c = w
        self.features = nn.Sequential(*layers)
        # max-pooled to a pool_grid x pool_grid grid: 1 is a global pool; more keeps where a feature
        # was (a sleeve's length, a collar) for the head to see
        self.pool = nn.AdaptiveMaxPool2d(pool_grid)
        self.head = nn.Linear(c * pool_grid * pool_grid, num_classes, bias=False)
        self.head_scale = head_scale  # logits are scaled down: calmer early training with a high lr

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, h, w)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1)) * self.head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@MODELS.register("fastnet")
def fastnet(num_classes: int, in_channels: int, input_size: tuple[int, int] | None = None, **kwargs) -> FastNet:
    """the fast default: a small VGG-like CNN with BN and GELU, tuned for CPU time-to-accuracy

    Any input size works: it ends in an adaptive pool (model.kwargs: widths, extra_convs, stem_width,
    pool_grid, head_scale, act: gelu | relu)."""
    return FastNet(num_classes, in_channels, **kwargs)
