"""One training step, one epoch of training and one pass of evaluation, as importable functions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from cnnlab.engine.losses import Objective, cross_entropy
from cnnlab.engine.mix import BatchMix
from cnnlab.metrics import confusion_matrix, multilabel_confusion


@dataclass
class TrainStep:
    """Everything one optimizer step does: forward (under autocast), the loss (mixed targets under
    mixup/cutmix), backward (through the AMP scaler where there is one), clipping, the step, the
    per-batch schedule and the EMA update."""

    model: nn.Module  # what runs forward: the DistributedDataParallel or compiled wrapper, if any
    optimizer: torch.optim.Optimizer
    objective: Objective
    scheduler: Any = None  # stepped once per batch here; None for a per-epoch (plateau) schedule
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    clip_grad_norm: float | None = None
    scaler: Any = None  # torch.amp.GradScaler for fp16
    mix: BatchMix | None = None
    ema: Any = None  # torch.optim.swa_utils.AveragedModel

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Train on one batch; returns (loss, outputs)."""
        mixed = self.mix(x, y) if self.mix is not None else None
        if mixed is not None:
            x, y2, lam = mixed
        with self.autocast():
            out = self.model(x)
        # the loss in fp32, outside autocast (CUDA autocast refuses BCELoss on probabilities)
        loss = self.objective.loss(out, y)
        if mixed is not None:
            loss = lam * loss + (1 - lam) * self.objective.loss(out, y2)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        elif self.scaler is None:
            grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = (
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
            )  # as clip_grad_norm_ computes it (torch >= 2.3)
        if self.scaler is None and not torch.isfinite(norm):
            # A finite loss can still have non-finite gradients (an overflow in the backward): the
            # step is not taken, so no NaN reaches the weights, the EMA or a checkpoint. The loss is
            # reported as NaN, which the divergence guard answers (roll back, lower the lr). fp16's
            # GradScaler skips such steps itself.
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), out.detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach()), out.detach()


@dataclass
class EpochProgress:
    """The running sums of an epoch: saved in mid-epoch checkpoints so a resumed epoch reports the
    same training loss and accuracy as an uninterrupted one."""

    batches: int = 0
    loss_sum: float = 0.0  # sum over samples of the batch-mean loss
    samples: int = 0
    correct: int = 0  # samples (or sample-attribute pairs) predicted right
    counted: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.counted, 1)


def train_one_epoch(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    step: TrainStep,
    *,
    progress: EpochProgress | None = None,
    on_batch_end: Callable[[float], bool] | None = None,
) -> EpochProgress:
    """Train over `loader` once, adding to `progress` (a resumed epoch's sums, or new ones).

    `on_batch_end(loss)` is called after every optimizer step; returning True ends the epoch early.
    The training accuracy is on the (augmented, unmixed) labels of the batches.
    """
    p = progress if progress is not None else EpochProgress()
    step.model.train()
    start = time.perf_counter() - p.seconds
    for x, y in loader:
        loss, out = step(x, y)
        correct, counted = step.objective.hits(out, y)
        n = y.shape[0]
        p.batches += 1
        p.loss_sum += loss * n
        p.samples += n
        p.correct += correct
        p.counted += counted
        p.seconds = time.perf_counter() - start
        if on_batch_end is not None and on_batch_end(loss):
            break
    p.seconds = time.perf_counter() - start
    return p


def eval_outputs(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The model's fp32 outputs for `x`; with `tta`, averaged with those of the mirror images."""
    out = model(x).float()
    return out if not tta else (out + model(torch.flip(x, dims=[3])).float()) / 2


@dataclass
class EvalResult:
    loss: float  # mean plain loss per sample (no label smoothing)
    accuracy: float  # for multi-label: the share of (image, attribute) pairs right
    num_samples: int
    confusion: torch.Tensor  # (K, K) rows true, columns predicted; or (A, 2, 2) per attribute


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    objective: Objective | None = None,
    *,
    tta: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Loss, accuracy and confusion of `model` over `loader`, in eval mode (`objective`: plain
    cross-entropy unless given).

    `tta` averages the outputs for each image and its mirror image. `reduce` sums a tensor across
    processes (torchrun), so every process gets the figures of the whole split.
    """
    objective = objective if objective is not None else cross_entropy(num_classes)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    shape = (num_classes, 2, 2) if objective.multilabel else (num_classes, num_classes)
    cm = torch.zeros(shape, dtype=torch.long)
    for x, y in loader:
        with autocast():
            out = eval_outputs(model, x, tta)
        loss_sum += float(objective.sum_loss(out, y))
        pred = objective.predict(out).cpu()
        cm += (
            multilabel_confusion(pred, y.cpu())
            if objective.multilabel
            else confusion_matrix(pred, y.cpu(), num_classes)
        )
    model.train(was_training)
    if reduce is not None:
        loss_sum, cm = reduce(loss_sum), reduce(cm)
    n = int(cm[0].sum()) if objective.multilabel else int(cm.sum())
    if objective.multilabel:
        correct = float(cm[:, 0, 0].sum() + cm[:, 1, 1].sum()) / max(n * num_classes, 1)
    else:
        correct = float(cm.diagonal().sum()) / max(n, 1)
    return EvalResult(float(loss_sum) / max(n, 1), correct, n, cm)
