"""fit(): epochs of train_one_epoch() and evaluate(), with callbacks at named hook points."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
import torch.nn as nn

from cnnlab.data.loader import BatchLoader, stream_seed
from cnnlab.engine.callbacks import BestTracker, Callback, PlateauSchedule
from cnnlab.engine.checkpoint import resume_position
from cnnlab.engine.distributed import Dist
from cnnlab.engine.loop import EpochProgress, TrainStep, evaluate, train_one_epoch
from cnnlab.engine.state import FitState


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


def with_trackers(callbacks: Sequence[Callback], step: TrainStep, monitor: str) -> list[Callback]:
    """`callbacks` with the trackers every fit has, first: a PlateauSchedule where the schedule is a
    plateau one, then the one BestTracker that keeps the best epoch in the FitState. That is the one
    the callbacks hold or read (run.py's early stopping and best checkpoint read theirs), or else a new
    one on `monitor`. Two different BestTrackers would keep two bests: a ValueError."""
    first: list[Callback] = []
    if getattr(step.scheduler, "monitor", None) is not None and not any(
        isinstance(cb, PlateauSchedule) for cb in callbacks
    ):
        first.append(PlateauSchedule(step))
    held = [cb for cb in callbacks if isinstance(cb, BestTracker)]
    held += [cb.tracker for cb in callbacks if isinstance(getattr(cb, "tracker", None), BestTracker)]
    trackers = list({id(t): t for t in held}.values())
    if len(trackers) > 1:
        raise ValueError("the callbacks hold more than one BestTracker; give them the same one")
    tracker = trackers[0] if trackers else BestTracker(monitor)
    rest = [cb for cb in callbacks if cb is not tracker]
    return [*first, tracker, *rest]


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
    eval_autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> FitState:
    """Train for `epochs`, validating after each; returns the final FitState (history, best epoch, ...).

    `state` continues a run restored from a checkpoint: at the next epoch, or inside an epoch where it
    holds `progress` and `loader` (the position). `eval_model` is what validation scores (the EMA of
    the weights, where there is one). The monitored figures are the trackers' (engine/callbacks.py):
    a BestTracker on `monitor` picks the best epoch, a PlateauSchedule steps a plateau schedule; fit
    adds them first where `callbacks` do not hold them. Validation runs under `eval_autocast` (run.py
    passes the training step's bf16 autocast where training is in bf16: about twice as fast as fp32
    for the default model; the figures of metrics.json are then computed again in fp32 from best.pt).
    """
    dist = dist or Dist()
    callbacks = with_trackers(callbacks, step, monitor)
    if state is None:
        state = FitState(epochs=epochs, steps_per_epoch=len(train_loader))
        state.lr = step.optimizer.param_groups[0]["lr"]
    state.epochs, state.steps_per_epoch = epochs, len(train_loader)
    state.restart_clock()
    signals = _StopSignals()
    run = _EpochRun(
        step,
        train_loader,
        val_loader,
        num_classes,
        eval_model if eval_model is not None else step.model,
        tta,
        dist,
        eval_autocast,
    )

    def hook(name: str, *args) -> None:
        for cb in callbacks:
            getattr(cb, name)(state, *args)

    with signals:
        hook("on_fit_start")
        try:
            first, position = resume_position(state)
            for epoch in range(first, epochs + 1):
                _one_epoch(state, epoch, position if epoch == first else None, run, hook, signals)
                if state.stop_reason is not None or state.diverged or state.interrupted:
                    break
        finally:
            hook("on_fit_end")
    return state


def _after_batch(state: FitState, step: TrainStep, dist: Dist, signals: _StopSignals, hook, loss: float) -> bool:
    """Book one optimizer step: the step log, the lr, a stop request; True where the fit stops."""
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


class _EpochRun(NamedTuple):
    """What every epoch of one fit() trains and validates with."""

    step: TrainStep
    train_loader: BatchLoader
    val_loader: BatchLoader | None
    num_classes: int
    eval_model: nn.Module  # what validation scores: the EMA's weights where there is one
    tta: bool
    dist: Dist
    eval_autocast: Callable[[], AbstractContextManager]


def _one_epoch(state: FitState, epoch: int, position, run: _EpochRun, hook, signals: _StopSignals) -> None:
    """Train epoch `epoch` (from the loader `position` of a resumed run inside it), validate, and
    append its history row; the callbacks' on_epoch_end see the row."""
    step, train_loader, val_loader, num_classes, eval_model, tta, dist, eval_autocast = run
    if position is None:
        state.progress, state.epoch_lr = EpochProgress(), state.lr
    state.epoch, state.loader = epoch, None
    if dist.enabled:  # each process's own dropout and mixing stream, a function of (seed, epoch, rank)
        torch.manual_seed(stream_seed(train_loader.seed, epoch, dist.rank))
    train_loader.set_epoch(epoch, position)
    hook("on_epoch_start")
    progress = train_one_epoch(
        train_loader,
        step,
        progress=state.progress,
        on_batch_end=lambda loss: _after_batch(state, step, dist, signals, hook, loss),
    )
    if state.diverged or state.interrupted:
        return  # no validation; the Checkpointer has saved the position (not NaN weights)
    if dist.enabled:
        sums = dist.sum(
            torch.tensor([progress.loss_sum, progress.samples, progress.correct, progress.counted], dtype=torch.float64)
        )
        progress = EpochProgress(
            progress.batches, float(sums[0]), int(sums[1]), int(sums[2]), int(sums[3]), progress.seconds
        )
    val = None
    if val_loader is not None:
        val = evaluate(
            eval_model, val_loader, num_classes, step.objective, tta=tta, autocast=eval_autocast, reduce=dist.sum
        )
    row = {
        "epoch": epoch,
        "train_loss": round(progress.loss, 6),
        "train_accuracy": round(progress.accuracy, 6),
        "val_loss": round(val.loss, 6) if val else "",
        "val_accuracy": round(val.accuracy, 6) if val else "",
        "lr": state.epoch_lr,
        "epoch_seconds": round(progress.seconds, 3),
    }
    state.history.append(row)
    state.progress = None
    hook("on_epoch_end", row)
