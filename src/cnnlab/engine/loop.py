"""One epoch of training and one pass of evaluation, as importable functions that return values."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.metrics import confusion_matrix


@dataclass
class EpochResult:
    loss: float  # mean training loss over the samples seen (as optimised: with label smoothing)
    accuracy: float  # on the augmented training batches
    num_samples: int
    seconds: float
    stopped_early: bool = False


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    on_batch_end: Callable[[float], bool] | None = None,
    clip_grad_norm: float | None = None,
) -> EpochResult:
    """Train over `loader` once. The scheduler, if given, steps once per batch.

    `on_batch_end(loss)` is called after every optimizer step; returning True ends the epoch early.
    """
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    seen = 0
    stopped = False
    for x, y in loader:
        with autocast():
            logits = model(x)  # (B, num_classes)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch_loss = float(loss.detach())
        loss_sum += batch_loss * y.shape[0]
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += y.shape[0]
        if on_batch_end is not None and on_batch_end(batch_loss):
            stopped = True
            break
    return EpochResult(float(loss_sum) / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - start, stopped)


@dataclass
class EvalResult:
    loss: float  # mean plain cross-entropy (no label smoothing)
    accuracy: float
    num_samples: int
    confusion: torch.Tensor  # (num_classes, num_classes), rows true, columns predicted


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> EvalResult:
    """Loss, accuracy and confusion matrix of `model` over `loader`, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        with autocast():
            logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        cm += confusion_matrix(logits.argmax(1).cpu(), y.cpu(), num_classes)
    model.train(was_training)
    n = int(cm.sum())
    return EvalResult(float(loss_sum) / max(n, 1), float(cm.diagonal().sum()) / max(n, 1), n, cm)
