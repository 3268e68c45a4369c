"""fit(): epochs of train_one_epoch() and evaluate(), with callbacks at named hook points."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Sequence
from typing import ContextManager

import torch
import torch.nn as nn

from cnnlab.data.loader import BatchLoader, stream_seed
from cnnlab.engine.callbacks import Callback, FitState
from cnnlab.engine.distributed import Dist
from cnnlab.engine.loop import EpochProgress, TrainStep, evaluate, train_one_epoch


class _StopSignals:
    """While fitting: the first Ctrl-C (or SIGTERM) asks for a clean stop after the running step
    (the Checkpointer saves the position first); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def fit(
    step: TrainStep,
    train_loader: BatchLoader,
    val_loader: BatchLoader | None,
    *,
    epochs: int,
    num_classes: int,
    callbacks: Sequence[Callback] = (),
    state: FitState | None = None,
    eval_model: nn.Module | None = None,
    tta: bool = False,
    monitor: str = "val_accuracy",
    dist: Dist | None = None,
    eval_autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> FitState:
    """Train for `epochs`, validating after each; returns the final FitState (history, best epoch, ...).

    `state` continues a run restored from a checkpoint: at the next epoch, or inside an epoch where it
    holds `progress` and `loader` (the position). `eval_model` is what validation scores (the EMA of
    the weights, where there is one). `monitor` (val_accuracy or val_loss; the train_ figure where
    there is no validation) picks the best epoch. Validation runs under `eval_autocast` (run.py
    passes the training step's bf16 autocast where training is in bf16: about twice as fast as fp32
    for the default model; the figures of metrics.json are then computed again in fp32 from best.pt).
    """
    dist = dist or Dist()
    scheduler = step.scheduler
    plateau_on = getattr(scheduler, "monitor", None)  # a plateau schedule steps per epoch on this figure
    per_epoch = plateau_on is not None
    if per_epoch:
        step.scheduler = None
    eval_model = eval_model if eval_model is not None else step.model
    if state is None:
        state = FitState(epochs=epochs, steps_per_epoch=len(train_loader))
        state.lr = step.optimizer.param_groups[0]["lr"]
    state.epochs, state.steps_per_epoch = epochs, len(train_loader)
    state.restart_clock()
    signals = _StopSignals()

    def hook(name: str, *args) -> None:
        for cb in callbacks:
            getattr(cb, name)(state, *args)

    def after_batch(loss: float) -> bool:
        state.step += 1
        requested = signals.requested
        if dist.enabled:  # the mean loss, and a Ctrl-C seen by any process, before any callback acts
            both = dist.sum(torch.tensor([loss, float(requested)], dtype=torch.float64))
            loss, requested = float(both[0]) / dist.world, bool(both[1] > 0)
        state.steps.append([state.step, state.epoch, round(loss, 6), state.lr])
        state.lr = step.optimizer.param_groups[0]["lr"]
        if requested and state.stop_reason is None:
            state.interrupted = True
            state.stop_reason = "interrupted"
        hook("on_batch_end", loss)
        if dist.enabled:  # every process stops at the same step
            stop = dist.sum(torch.tensor([float(state.stop_reason is not None), float(state.diverged)]))
            if stop[1] > 0:
                state.diverged = True
            if stop[0] > 0 and state.stop_reason is None:
                state.stop_reason = "stopped by another process"
        return state.stop_reason is not None

    with signals:
        hook("on_fit_start")
        try:
            first = state.epoch if state.progress is not None else state.epoch + 1
            for epoch in range(first, epochs + 1):
                resume = state.loader if epoch == state.epoch and state.progress is not None else None
                if resume is None:
                    state.progress, state.epoch_lr = EpochProgress(), state.lr
                state.epoch, state.loader = epoch, None
                if dist.enabled:  # each process's own dropout and mixing stream, a function of (seed, epoch, rank)
                    torch.manual_seed(stream_seed(train_loader.seed, epoch, dist.rank))
                train_loader.set_epoch(epoch, resume)
                hook("on_epoch_start")
                p = train_one_epoch(train_loader, step, progress=state.progress, on_batch_end=after_batch)
                if state.diverged or state.interrupted:
                    break  # no validation; the Checkpointer has saved the position (not NaN weights)
                if dist.enabled:
                    sums = dist.sum(torch.tensor([p.loss_sum, p.samples, p.correct, p.counted], dtype=torch.float64))
                    p = EpochProgress(p.batches, float(sums[0]), int(sums[1]), int(sums[2]), int(sums[3]), p.seconds)
                val = (
                    evaluate(
                        eval_model,
                        val_loader,
                        num_classes,
                        step.objective,
                        tta=tta,
                        autocast=eval_autocast,
                        reduce=dist.sum,
                    )
                    if val_loader is not None
                    else None
                )
                row = {
                    "epoch": epoch,
                    "train_loss": round(p.loss, 6),
                    "train_accuracy": round(p.accuracy, 6),
                    "val_loss": round(val.loss, 6) if val else "",
                    "val_accuracy": round(val.accuracy, 6) if val else "",
                    "lr": state.epoch_lr,
                    "epoch_seconds": round(p.seconds, 3),
                }
                state.history.append(row)
                state.progress = None
                if per_epoch and row[plateau_on] != "":
                    scheduler.step(row[plateau_on])  # type: ignore[union-attr]
                    state.lr = step.optimizer.param_groups[0]["lr"]
                # the score that picks best.pt (higher is better)
                key = monitor if row["val_loss"] != "" else monitor.replace("val_", "train_")
                score = -row[key] if key.endswith("loss") else row[key]
                if score > state.best_score:
                    state.best_score, state.best_epoch = score, epoch
                hook("on_epoch_end", row)
                if state.stop_reason is not None:
                    break
        finally:
            step.scheduler = scheduler
            hook("on_fit_end")
    return state
