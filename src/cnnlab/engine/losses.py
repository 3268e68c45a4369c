"""Training objectives, registered by name: the loss, how outputs become predictions, and what counts
as a hit.

- `cross-entropy`: one logit per class (label smoothing, class weights).
- `bce`: BCE-with-logits, for a binary target (one logit) or a multi-label one (one logit per attribute).
- `sigmoid-bce`: the textbook's Sigmoid unit + BCELoss, kept exactly: the model outputs probabilities.
- `auto`: bce for a multi-label target; sigmoid-bce or bce for a one-output model on a binary target
  (sigmoid-bce when the model ends in a Sigmoid); cross-entropy otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.data.base import Split
from cnnlab.data.splits import inverse_frequency_weights
from cnnlab.errors import ConfigError
from cnnlab.registry import Registry

LOSSES: Registry = Registry("loss")


@dataclass
class Objective:
    name: str
    outputs: int  # model outputs it needs
    multilabel: bool
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the training loss (batch mean, as optimised)
    sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B,) plain loss per sample, for evaluation
    predict: Callable[[torch.Tensor], torch.Tensor]  # (B,) class ids, or (B, A) 0/1 for multi-label

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.sample_loss(out, y).detach().cpu().double().sum()  # on the CPU: mps has no float64

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(correct, counted): samples, or sample-attribute pairs for multi-label."""
        pred = self.predict(out)
        return int((pred == y.to(pred.dtype)).sum()), y.numel()


@dataclass
class Target:
    """What the data asks for: class count, multi-label or not, and the training labels (for weights)."""

    num_classes: int
    multilabel: bool
    train: Split | None = None  # the training part: its labels give the class weights


def ends_in_sigmoid(model: nn.Module) -> bool:
    modules = [m for m in model.modules() if not list(m.children())]
    return bool(modules) and isinstance(modules[-1], nn.Sigmoid)


def _smooth_binary(y: torch.Tensor, smoothing: float) -> torch.Tensor:
    y = y.float()
    return y * (1 - smoothing) + 0.5 * smoothing if smoothing else y


def _positive_weight(t: Target) -> torch.Tensor:
    """negatives / positives per output (BCE's pos_weight), from the training labels."""
    y = t.train.labels.float()  # type: ignore[union-attr]
    y = y if t.multilabel else y.unsqueeze(1)
    pos = y.sum(0)
    return (len(y) - pos) / pos.clamp_min(1)


@LOSSES.register("cross-entropy")
def _cross_entropy(t: Target, smoothing: float, weighted: bool) -> Objective:
    if t.multilabel:
        raise ConfigError("loss cross-entropy needs one class per image; this data is multi-label: use train.loss=bce")
    weight = inverse_frequency_weights(t.train, t.num_classes) if weighted and t.train is not None else None
    return Objective(
        "cross-entropy",
        t.num_classes,
        False,
        lambda out, y: F.cross_entropy(
            out.float(), y, weight=None if weight is None else weight.to(out.device), label_smoothing=smoothing
        ),
        lambda out, y: F.cross_entropy(out.float(), y, reduction="none"),
        lambda out: out.argmax(1),
    )


def cross_entropy(num_classes: int, smoothing: float = 0.0) -> Objective:
    """The plain single-label objective, for code that evaluates or trains without a run's config."""
    return _cross_entropy(Target(num_classes, False), smoothing, False)


def _binary(name: str, t: Target, smoothing: float, weighted: bool, probabilities: bool) -> Objective:
    if not t.multilabel and t.num_classes != 2:
        raise ConfigError(
            f"loss {name} needs a binary target or a multi-label one; this data has {t.num_classes} classes: "
            "use train.loss=cross-entropy"
        )
    pos_weight = _positive_weight(t) if weighted and t.train is not None else None
    outputs = t.num_classes if t.multilabel else 1

    def shape(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = out.float()
        return (out, y.float()) if t.multilabel else (out.reshape(-1), y.float())

    if probabilities:  # the model's last layer is a Sigmoid; BCELoss on its output, as the textbook

        def loss(out, y):
            p, y = shape(out, y)
            w = (
                None
                if pos_weight is None
                else torch.where(y > 0.5, pos_weight.to(p.device).expand_as(p), torch.ones_like(p))
            )
            return F.binary_cross_entropy(p, _smooth_binary(y, smoothing), weight=w)

        def sample_loss(out, y):
            p, y = shape(out, y)
            per = F.binary_cross_entropy(p, y, reduction="none")
            return per.sum(1) if t.multilabel else per

        threshold = 0.5
    else:

        def loss(out, y):
            z, y = shape(out, y)
            return F.binary_cross_entropy_with_logits(
                z, _smooth_binary(y, smoothing), pos_weight=None if pos_weight is None else pos_weight.to(z.device)
            )

        def sample_loss(out, y):
            z, y = shape(out, y)
            per = F.binary_cross_entropy_with_logits(z, y, reduction="none")
            return per.sum(1) if t.multilabel else per

        threshold = 0.0

    def predict(out):
        hit = (out.float() > threshold).long()
        return hit if t.multilabel else hit.reshape(-1)

    return Objective(name, outputs, t.multilabel, loss, sample_loss, predict)


@LOSSES.register("bce")
def _bce(t: Target, smoothing: float, weighted: bool) -> Objective:
    return _binary("bce", t, smoothing, weighted, probabilities=False)


@LOSSES.register("sigmoid-bce")
def _sigmoid_bce(t: Target, smoothing: float, weighted: bool) -> Objective:
    return _binary("sigmoid-bce", t, smoothing, weighted, probabilities=True)


def model_outputs(name: str, target: Target) -> int:
    """How many outputs to build the model with: one for an explicitly binary loss on two classes."""
    return (
        1
        if name in ("bce", "sigmoid-bce") and not target.multilabel and target.num_classes == 2
        else target.num_classes
    )


def create_objective(
    name: str, model: nn.Module, target: Target, outputs: int, *, smoothing: float = 0.0, weighted: bool = False
) -> Objective:
    """The objective `name` (or the one `auto` picks) for `model`, which gives `outputs` outputs."""
    sigmoid = ends_in_sigmoid(model)
    if name == "auto":
        if target.multilabel:
            name = "bce"
        elif target.num_classes == 2 and outputs == 1:
            name = "sigmoid-bce" if sigmoid else "bce"
        else:
            name = "cross-entropy"
    objective = LOSSES.get(name)(target, smoothing, weighted)
    if objective.name == "sigmoid-bce" and not sigmoid:
        raise ConfigError(
            "loss sigmoid-bce takes probabilities, and this model's last layer is not a Sigmoid; "
            "use train.loss=bce (logits)"
        )
    if objective.name != "sigmoid-bce" and sigmoid:
        raise ConfigError(
            f"this model ends in a Sigmoid (it outputs probabilities), which loss {objective.name} would squash again; "
            "use train.loss=sigmoid-bce"
        )
    if outputs != objective.outputs:
        raise ConfigError(
            f"the model gives {outputs} output(s), and loss {objective.name} on this data needs {objective.outputs}"
        )
    return objective
