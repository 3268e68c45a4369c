"""A CNN built from a spec: the reports' networks, and their variants, as data rather than classes.

A network is blocks of ops then a head. Each block runs its ops in the order its `order` string
gives (`conv,act,pool`, `conv,bn,act,pool,dropout2d`, ...); the head flattens or pools globally,
then runs hidden linear layers (each in `head_order`) and the output layer. The flatten size is
computed from the input size by a dry run, never typed in.

`functional: true` calls activations and the flatten as functions instead of modules. The output
is the same; what changes is the layer table (cnnlab summary lists modules only), which is how the
Hanoi report's network was written and how its table came out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh}
BLOCK_OPS = {"conv", "act", "bn", "pool", "dropout", "dropout2d"}
HEAD_OPS = {"linear", "act", "bn", "dropout"}


@dataclass
class CNNSpec:
    channels: list[int]  # output channels of each block's conv
    kernel: int | list[int] = 3
    stride: int | list[int] = 1
    padding: int | str | list[Any] = "same"  # an int, 'same' or 'valid', or one per block
    order: str = "conv,act,pool"  # the ops of every block, in order
    orders: list[str] | None = None  # one order per block, where blocks differ (the KTH third block has no act)
    act: str = "relu"  # relu | leaky_relu | gelu | elu | tanh
    pool: str = "max"  # max | avg
    pool_size: int = 2
    dropout: float = 0.0  # p of the blocks' `dropout` op
    dropout2d: float = 0.0  # p of the blocks' `dropout2d` op
    head_pool: str = "flatten"  # flatten | avg | max (global pooling to 1x1, then flatten)
    hidden: list[int] = field(default_factory=list)  # hidden linear layer sizes
    head_order: str = "linear,act"  # the ops of each hidden layer
    head_dropout: float = 0.5  # p of the head's `dropout` op
    pre_dropout: float = 0.0  # dropout on the features, before the head (Hanoi)
    final_dropout: float = 0.0  # dropout before the output layer (Hanoi)
    output: str = "linear"  # linear | sigmoid (one unit and a Sigmoid for a binary task, the textbook's)
    functional: bool = False  # activations and flatten as functions, not modules

    def per_block(self, value: Any, name: str) -> list[Any]:
        n = len(self.channels)
        values = value if isinstance(value, list) else [value] * n
        if len(values) != n:
            raise ConfigError(f"model {name} has {len(values)} values for {n} blocks; give one, or one per block")
        return values


def _positive_ints(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _check(spec: CNNSpec) -> None:
    """Every spec value in range, with a ConfigError naming the key (before torch would fail)."""
    if not spec.channels or not _positive_ints(spec.channels):
        raise ConfigError(
            f"model channels must be a list of positive whole numbers, one per block, got {spec.channels!r}"
        )
    for key in ("kernel", "stride", "pool_size"):
        if not _positive_ints(getattr(spec, key)):
            raise ConfigError(
                f"model {key} must be a positive whole number or one per block, got {getattr(spec, key)!r}"
            )
    if spec.hidden and not _positive_ints(spec.hidden):
        raise ConfigError(f"model hidden must be a list of positive whole numbers, got {spec.hidden!r}")
    for p in spec.per_block(spec.padding, "padding"):
        if not (p in ("same", "valid") or (isinstance(p, int) and not isinstance(p, bool) and p >= 0)):
            raise ConfigError(f"model padding {p!r} must be a whole number >= 0, same or valid")
    if "same" in spec.per_block(spec.padding, "padding") and any(s > 1 for s in spec.per_block(spec.stride, "stride")):
        raise ConfigError("model padding 'same' needs stride 1 (torch refuses it with a larger stride); give a number")
    for key in ("dropout", "dropout2d", "head_dropout", "pre_dropout", "final_dropout"):
        v = getattr(spec, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            raise ConfigError(f"model {key} must be a probability in [0, 1], got {v!r}")
    if (
        not isinstance(spec.order, str)
        or not isinstance(spec.head_order, str)
        or not (spec.orders is None or (isinstance(spec.orders, list) and spec.orders))
    ):
        raise ConfigError(
            "model order and head_order are strings like 'conv,act,pool'; orders is null or a non-empty list of them"
        )
    if spec.act not in ACTIVATIONS:
        raise ConfigError(f"model act {spec.act!r} is not one of {', '.join(ACTIVATIONS)}")
    if spec.pool not in ("max", "avg") or spec.head_pool not in ("flatten", "avg", "max"):
        raise ConfigError(
            f"model pool must be max or avg and head_pool flatten, avg or max; got {spec.pool!r}, {spec.head_pool!r}"
        )
    if spec.output not in ("linear", "sigmoid"):
        raise ConfigError(f"model output {spec.output!r} is not linear or sigmoid")
    for order in spec.per_block(spec.orders or spec.order, "orders"):
        ops = order.split(",") if isinstance(order, str) else []
        if set(ops) - BLOCK_OPS or ops.count("conv") != 1 or ops.index("conv") != 0:
            raise ConfigError(
                f"block order {order!r}: ops are {', '.join(sorted(BLOCK_OPS))}, starting with the one conv"
            )
    head_ops = spec.head_order.split(",")
    if set(head_ops) - HEAD_OPS or head_ops.count("linear") != 1 or head_ops.index("linear") != 0:
        raise ConfigError(
            f"head_order {spec.head_order!r}: ops are {', '.join(sorted(HEAD_OPS))}, starting with the one linear"
        )


class Seq(nn.Module):
    """Ops in order; an op is a module, or the name of an activation to call as a function."""

    def __init__(self, ops: Sequence[nn.Module | str]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([op for op in ops if isinstance(op, nn.Module)])
        index = {id(m): j for j, m in enumerate(self.layers)}
        self.plan: list[str | int] = [op if isinstance(op, str) else index[id(op)] for op in ops]  # name or layer index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.plan:
            x = _call(step, x) if isinstance(step, str) else self.layers[step](x)
        return x


def _call(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "flatten":
        return torch.flatten(x, 1)
    return getattr(F, name)(x)


class SpecCNN(nn.Module):
    """features (blocks) -> head (pool/flatten, hidden layers, output)."""

    def __init__(self, spec: CNNSpec, num_classes: int, in_channels: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        _check(spec)
        self.spec = spec
        act = ACTIVATIONS[spec.act]
        blocks = []
        c = in_channels
        orders = spec.per_block(spec.orders or spec.order, "orders")
        for out, k, s, p, order in zip(
            spec.channels,
            spec.per_block(spec.kernel, "kernel"),
            spec.per_block(spec.stride, "stride"),
            spec.per_block(spec.padding, "padding"),
            orders,
        ):
            ops: list[nn.Module | str] = []
            for op in order.split(","):
                if op == "conv":
                    ops.append(nn.Conv2d(c, out, k, stride=s, padding=p))
                elif op == "act":
                    ops.append(spec.act if spec.functional else act())
                elif op == "bn":
                    ops.append(nn.BatchNorm2d(out))
                elif op == "pool":
                    ops.append(nn.MaxPool2d(spec.pool_size) if spec.pool == "max" else nn.AvgPool2d(spec.pool_size))
                elif op == "dropout":
                    ops.append(nn.Dropout(spec.dropout))
                elif op == "dropout2d":
                    ops.append(nn.Dropout2d(spec.dropout2d))
            blocks.append(Seq(ops))
            c = out
        self.features = nn.Sequential(*blocks)
        fh, fw = feature_size(self.features, in_channels, input_size)

        head: list[nn.Module | str] = []
        if spec.pre_dropout:
            head.append(nn.Dropout(spec.pre_dropout))
        if spec.head_pool != "flatten":
            head.append(nn.AdaptiveAvgPool2d(1) if spec.head_pool == "avg" else nn.AdaptiveMaxPool2d(1))
            fh = fw = 1
        head.append("flatten" if spec.functional else nn.Flatten())
        width = c * fh * fw
        for h in spec.hidden:
            for op in spec.head_order.split(","):
                if op == "linear":
                    head.append(nn.Linear(width, h))
                elif op == "act":
                    head.append(spec.act if spec.functional else act())
                elif op == "bn":
                    head.append(nn.BatchNorm1d(h))
                elif op == "dropout":
                    head.append(nn.Dropout(spec.head_dropout))
            width = h
        if spec.final_dropout:
            head.append(nn.Dropout(spec.final_dropout))
        binary = spec.output == "sigmoid"
        head.append(nn.Linear(width, 1 if binary else num_classes))
        if binary:
            head.append(nn.Sigmoid())
        self.head = Seq(head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, h, w)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, num_classes), or (B, 1) probabilities for output: sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def feature_size(features: nn.Sequential, in_channels: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the features for one input, by a dry run; a map that shrinks to nothing names its block."""
    x = torch.zeros(1, in_channels, *input_size)
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            for i, block in enumerate(features):
                try:
                    x = block(x)
                except RuntimeError as e:
                    raise ConfigError(
                        f"input {in_channels}x{input_size[0]}x{input_size[1]} is too small for this network: "
                        f"block {i + 1} fails ({str(e).splitlines()[0][:120]}); "
                        "give a larger input or fewer pooling blocks"
                    ) from None
                if min(x.shape[2:]) < 1:
                    raise ConfigError(
                        f"input {in_channels}x{input_size[0]}x{input_size[1]} is too small for this network: "
                        f"the feature map shrinks to {tuple(x.shape[1:])} in block {i + 1}"
                    )
    finally:
        features.train(was_training)
    return int(x.shape[2]), int(x.shape[3])


def build(
    spec: dict[str, Any], overrides: dict[str, Any], num_classes: int, in_channels: int, input_size: tuple[int, int]
) -> SpecCNN:
    """A SpecCNN from a preset's spec with the recipe's model.kwargs laid over it."""
    names = {f.name for f in dataclasses.fields(CNNSpec)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown model key {unknown[0]!r}; spec keys: {', '.join(sorted(names))}")
    return SpecCNN(CNNSpec(**{**spec, **overrides}), num_classes, in_channels, input_size)
