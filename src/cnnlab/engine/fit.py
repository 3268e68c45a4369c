"""fit(): epochs of train_one_epoch() and evaluate(), with callbacks at named hook points."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn as nn

from cnnlab.data.loader import TensorLoader
from cnnlab.engine.callbacks import Callback, FitState
from cnnlab.engine.loop import evaluate, train_one_epoch


def fit(
    model: nn.Module,
    train_loader: TensorLoader,
    val_loader: TensorLoader | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    num_classes: int,
    callbacks: Sequence[Callback] = (),
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    clip_grad_norm: float | None = None,
) -> FitState:
    """Train for `epochs`, validating after each; returns the final FitState (history, best epoch, ...).

    `autocast` applies to the training steps only. Validation runs in fp32, so the figures that pick
    the best epoch are the ones anyone re-evaluating the checkpoint gets, on any hardware.
    """
    state = FitState(epochs=epochs, steps_per_epoch=len(train_loader))
    state.lr = optimizer.param_groups[0]["lr"]
    monitor = getattr(scheduler, "monitor", None)  # a plateau schedule steps per epoch on this figure
    per_epoch = monitor is not None

    def hook(name: str, *args) -> None:
        for cb in callbacks:
            getattr(cb, name)(state, *args)

    def after_batch(loss: float) -> bool:
        state.step += 1
        state.steps.append([state.step, state.epoch, round(loss, 6), state.lr])
        state.lr = optimizer.param_groups[0]["lr"]
        hook("on_batch_end", loss)
        return state.stop_reason is not None

    hook("on_fit_start")
    try:
        for epoch in range(1, epochs + 1):
            state.epoch = epoch
            train_loader.set_epoch(epoch)
            hook("on_epoch_start")
            lr = state.lr
            result = train_one_epoch(model, train_loader, optimizer, loss_fn, scheduler=None if per_epoch else scheduler, autocast=autocast, on_batch_end=after_batch, clip_grad_norm=clip_grad_norm)
            if state.diverged:
                break  # no validation, no checkpoint of weights that went NaN
            val = evaluate(model, val_loader, num_classes) if val_loader is not None else None
            row = {
                "epoch": epoch,
                "train_loss": round(result.loss, 6),
                "train_accuracy": round(result.accuracy, 6),
                "val_loss": round(val.loss, 6) if val else "",
                "val_accuracy": round(val.accuracy, 6) if val else "",
                "lr": lr,
                "epoch_seconds": round(result.seconds, 3),
            }
            state.history.append(row)
            if per_epoch and row[monitor] != "":
                scheduler.step(row[monitor])  # type: ignore[union-attr]
            hook("on_epoch_end", row)
            if state.stop_reason is not None:
                break
    finally:
        hook("on_fit_end")
    return state
