"""A report's small worked examples (a filter over a 5x5 image, padding, pooling a 4x4 block), computed
again by torch and set beside the report's own numbers.

The examples are data, in the recipe's `reproduce: examples:` list (recipes/uw-lab-mnist.yaml):
- `op`: conv2d | pad | max_pool2d | avg_pool2d, applied to `input` (a 2-D grid of numbers), with
  `filter` (conv2d), `stride`, `padding` and `kernel` (pooling) as torch.nn.functional takes them;
- `reported`: the grid the report shows, `null` where it leaves a cell blank (a slide that fills
  the output in step by step); `decimals`: the report rounds to that many places (half up, as a person
  rounds: 3.25 -> 3.3);
- or, for a layer whose output only has a shape: `op: conv2d`, `input_shape`, `out_channels`,
  `kernel`, and `reported_shape`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

OPS = ("conv2d", "pad", "max_pool2d", "avg_pool2d")


@dataclass
class Example:
    name: str
    op: str
    input: list[list[float]] | None = None
    filter: list[list[float]] | None = None
    stride: int | None = None
    padding: int = 0
    kernel: int = 2
    decimals: int | None = None
    reported: list[list[float | None]] | None = None
    input_shape: list[int] | None = None
    out_channels: int | None = None
    reported_shape: list[int] | None = None
    note: str = ""


@dataclass
class Worked:
    example: Example
    ours: torch.Tensor | None  # the computed grid (None for a shape-only example)
    shape: list[int]
    differences: list[str] = field(default_factory=list)  # "(row, column): report 3, torch 2" per differing cell

    @property
    def equal(self) -> bool:
        return not self.differences


def parse(raw: Any, where: str) -> list[Example]:
    """The recipe's `examples:` list, checked."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ConfigError(f"{where}: examples must be a list of mappings")
    out = []
    for i, e in enumerate(raw):
        unknown = set(e) - set(Example.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where} example {i}: unknown key(s) {', '.join(sorted(unknown))}")
        ex = Example(**{"name": f"example {i}", **e})
        if ex.op not in OPS:
            raise ConfigError(f"{where} example {ex.name!r}: op {ex.op!r} is not one of {', '.join(OPS)}")
        if (ex.input is None or ex.reported is None) and (ex.input_shape is None or ex.reported_shape is None):
            raise ConfigError(
                f"{where} example {ex.name!r}: give input and reported, or input_shape and reported_shape"
            )
        out.append(ex)
    return out


def compute(ex: Example) -> Worked:
    """The example run through torch.nn.functional, compared cell by cell with the report's grid."""
    if ex.input is None:  # a layer's output shape only
        x = torch.zeros(ex.input_shape)  # type: ignore[arg-type]
        w = torch.zeros(ex.out_channels or 1, x.shape[1], ex.kernel, ex.kernel)
        shape = list(F.conv2d(x, w, stride=ex.stride or 1, padding=ex.padding).shape)
        diff = [] if shape == list(ex.reported_shape or []) else [f"shape: report {ex.reported_shape}, torch {shape}"]
        return Worked(ex, None, shape, diff)
    x = torch.tensor(ex.input, dtype=torch.float64)[None, None]
    if ex.op == "conv2d":
        y = F.conv2d(
            x, torch.tensor(ex.filter, dtype=torch.float64)[None, None], stride=ex.stride or 1, padding=ex.padding
        )
    elif ex.op == "pad":
        y = F.pad(x, [ex.padding] * 4)
    elif ex.op == "max_pool2d":
        y = F.max_pool2d(x, ex.kernel, stride=ex.stride or ex.kernel)
    else:
        y = F.avg_pool2d(x, ex.kernel, stride=ex.stride or ex.kernel)
    ours = y[0, 0]
    return Worked(ex, ours, list(ours.shape), _differences(ex, ours))


def _rounded(v: float, decimals: int | None) -> float:
    return (
        v
        if decimals is None
        else float(Decimal(repr(v)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))
    )


def _differences(ex: Example, ours: torch.Tensor) -> list[str]:
    rep = ex.reported or []
    if len(rep) != ours.shape[0] or any(len(r) != ours.shape[1] for r in rep):
        return [f"shape: report {len(rep)}x{len(rep[0]) if rep else 0}, torch {ours.shape[0]}x{ours.shape[1]}"]
    out = []
    for i, row in enumerate(rep):
        for j, v in enumerate(row):
            mine = _rounded(float(ours[i, j]), ex.decimals)
            if v is not None and abs(mine - float(v)) > 1e-9:
                out.append(f"row {i + 1}, column {j + 1}: the report shows {v:g}, torch gives {float(ours[i, j]):g}")
    return out


def _grid(rows: list[list[Any]], decimals: int | None) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return "."
        v = float(v)
        return f"{v:.{decimals}f}" if decimals is not None else f"{v:g}"

    cells = [[cell(v) for v in r] for r in rows]
    width = max((len(c) for r in cells for c in r), default=1)
    return [" ".join(c.rjust(width) for c in r) for r in cells]


def text(worked: list[Worked]) -> str:
    """The examples as plain text: torch's grid beside the report's, and whether they agree."""
    out = []
    for w in worked:
        ex = w.example
        verdict = "equal to the report" if w.equal else "differs from the report: " + "; ".join(w.differences)
        out.append(f"{ex.name} ({ex.op}): {verdict}" + (f" ({ex.note})" if ex.note else ""))
        if w.ours is None:
            out.append(f"  torch: output shape {w.shape}; the report: {ex.reported_shape}")
            continue
        left = _grid(w.ours.tolist(), None)
        right = _grid(ex.reported or [], ex.decimals)
        lw = max(len(s) for s in [*left, "torch"])
        out.append(f"  {'torch'.ljust(lw)}    the report")
        for i in range(max(len(left), len(right))):
            out.append(f"  {(left[i] if i < len(left) else '').ljust(lw)}    {right[i] if i < len(right) else ''}")
    return "\n".join(out) + ("\n" if out else "")


def report(examples: list[Example]) -> str:
    """text() of the examples, each computed by torch."""
    return text([compute(e) for e in examples])
