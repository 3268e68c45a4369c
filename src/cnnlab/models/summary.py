"""The layer table with memory estimates, in the form the reports printed (torchsummary's).

Written here rather than depending on torchsummary (unmaintained, prints instead of returning) or
torchinfo (whose memory figures are computed differently from the tables in the reports): the
reports' tables must come out to the digit. The rules, as that tool had them, for a batch of one:
- a row per leaf module (a module without children) that runs, with its output shape and its own
  parameter count; functions called in forward (F.relu, torch.flatten) get no row;
- input size = input elements x 4 bytes; forward/backward pass size = 2 x the sum of every row's
  output elements x 4 bytes; params size = parameters x 4 bytes; all in MB of 2**20 bytes;
- estimated total = the three added.
MACs count multiply-accumulates of conv and linear layers, per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

MB = 1024.0**2
BYTES = 4  # float32


@dataclass
class Row:
    layer: str  # e.g. Conv2d-1
    shape: list[int]  # output shape without the batch dimension
    params: int
    macs: int


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    total_params: int = 0
    trainable_params: int = 0

    @property
    def input_mb(self) -> float:
        return _prod(self.input_shape) * BYTES / MB

    @property
    def forward_backward_mb(self) -> float:
        return 2 * sum(_prod(r.shape) for r in self.rows) * BYTES / MB

    @property
    def params_mb(self) -> float:
        return self.total_params * BYTES / MB

    @property
    def total_mb(self) -> float:
        return self.input_mb + self.forward_backward_mb + self.params_mb

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)


def _prod(shape) -> int:
    out = 1
    for v in shape:
        out *= int(v)
    return out


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        return out[0].numel() * k
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> Summary:
    """Run one zero image of `input_shape` (C, H, W) through `model` in eval mode, recording each leaf."""
    summary = Summary(input_shape=tuple(input_shape))
    hooks = []

    def hook(module: nn.Module, _inputs, output) -> None:
        kind = type(module).__name__
        params = sum(p.numel() for p in module.parameters(recurse=False))
        summary.rows.append(
            Row(f"{kind}-{len(summary.rows) + 1}", list(output.shape[1:]), params, _macs(module, output))
        )

    for m in model.modules():
        if not any(True for _ in m.children()):
            hooks.append(m.register_forward_hook(hook))
    from cnnlab.models import dry_run

    try:
        dry_run(model, input_shape, "give a larger --input")
    finally:
        for h in hooks:
            h.remove()
    summary.total_params = sum(p.numel() for p in model.parameters())
    summary.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return summary


def format_summary(s: Summary) -> str:
    """The table as the reports printed it, plus MACs."""
    line = "-" * 64
    out = [line, f"{'Layer (type)':>25}  {'Output Shape':>25} {'Param #':>15}", "=" * 64]
    for r in s.rows:
        out.append(f"{r.layer:>25}  {str([-1, *r.shape]):>25} {r.params:>15,}")
    out += [
        "=" * 64,
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        f"Non-trainable params: {s.total_params - s.trainable_params:,}",
        line,
        f"Input size (MB): {s.input_mb:.2f}",
        f"Forward/backward pass size (MB): {s.forward_backward_mb:.2f}",
        f"Params size (MB): {s.params_mb:.2f}",
        f"Estimated Total Size (MB): {s.total_mb:.2f}",
        line,
        f"MACs per image: {s.macs:,} ({s.macs / 1e6:.2f} M)",
    ]
    return "\n".join(out)
