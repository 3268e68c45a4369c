"""Cross-cutting behaviour of a fit, as small callbacks with named hook points.

Hooks, in the order fit() calls them: on_fit_start, then per epoch on_epoch_start,
on_batch_end (after each optimizer step), on_epoch_end (after validation), and on_fit_end.
A callback stops the fit by setting `state.stop_reason`.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn
from tqdm.auto import tqdm

from cnnlab.engine.checkpoint import save_checkpoint
from cnnlab.engine.state import HISTORY_COLUMNS, STEP_COLUMNS, FitState
from cnnlab.run_folder import write_text


class Callback:
    def on_fit_start(self, state: FitState) -> None: ...
    def on_epoch_start(self, state: FitState) -> None: ...
    def on_batch_end(self, state: FitState, loss: float) -> None: ...
    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, state: FitState) -> None: ...


class TimeLimit(Callback):
    """Stop once `seconds` of fitting have passed; fit() then validates the partial epoch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_batch_end(self, state: FitState, loss: float) -> None:
        if state.elapsed >= self.seconds:
            state.stop_reason = f"time limit of {self.seconds:g} s reached"


class DivergenceGuard(Callback):
    """Catches a training loss that explodes, not only one that turns NaN: rolls back to the last good
    weights and optimizer state (kept in memory), lowers the learning rate, and goes on.

    A step's loss is a spike when it is not finite, or (after WARM steps) more than SPIKE times the
    running level (an exponential average of the healthy steps' losses) and at least one unit above
    it; an epoch's validation loss is one when it is more than SPIKE times the best so far and one unit
    above it. Each recovery restores the snapshot, multiplies every learning rate (and the schedule's
    base rates, so it lasts) by `factor`, writes one line through `log` and one entry in
    state.recoveries. After `max_recoveries` the fit stops as diverged, naming the last loss.

    The snapshot is refreshed every `every` healthy steps and after every healthy epoch; it is a copy
    of the weights and the optimizer state (twice the model's size in memory). `state_dict()` (the
    snapshot and the running level) goes into checkpoints, so a resumed run judges and rolls back
    as an uninterrupted one would.
    """

    SPIKE = 3.0
    WARM = 5
    ALPHA = 0.1

    def __init__(
        self,
        model: nn.Module,
        optimizer,
        scheduler=None,
        *,
        log: Callable[[str], None] | None = None,
        factor: float = 0.5,
        max_recoveries: int = 3,
        every: int = 20,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.log = log or (lambda line: None)
        self.factor, self.max_recoveries, self.every = factor, max_recoveries, every
        self.level: float | None = None
        self.healthy = 0
        self.best_val: float | None = None
        self.kept: dict[str, Any] | None = None

    def _keep(self, state: FitState) -> None:
        self.kept = {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "where": f"epoch {state.epoch}, step {state.step}" if state.step else "the start",
            "step": state.step,
            "level": self.level,
        }

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the snapshot and the running level."""
        return {"kept": self.kept, "level": self.level, "healthy": self.healthy, "best_val": self.best_val}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """A resumed run's guard, from its checkpoint: it rolls back where the uninterrupted run would."""
        kept = saved.get("kept")
        whole = isinstance(kept, dict) and {"model", "optimizer", "where", "step", "level"} <= kept.keys()
        self.kept = kept if whole else None  # an edited or damaged entry: a new snapshot at the resumed weights
        self.level, self.healthy, self.best_val = (
            saved.get("level"),
            int(saved.get("healthy") or 0),
            saved.get("best_val"),
        )

    def on_fit_start(self, state: FitState) -> None:
        if self.kept is None:  # a resumed run keeps its loaded snapshot
            self._keep(state)

    def on_batch_end(self, state: FitState, loss: float) -> None:
        if state.diverged or state.stop_reason is not None:
            return
        level = self.level
        if not math.isfinite(loss):
            self._recover(state, f"the training loss became {loss} at epoch {state.epoch}, step {state.step}", loss)
        elif level is not None and self.healthy >= self.WARM and loss > self.SPIKE * level and loss > level + 1.0:
            self._recover(
                state,
                f"the training loss rose to {loss:.4g} at epoch {state.epoch}, step {state.step}, {loss / level:.1f}x "
                f"its running level {level:.3g}",
                loss,
            )
        else:
            self.level = loss if level is None else (1 - self.ALPHA) * level + self.ALPHA * loss
            self.healthy += 1
            if state.step - self.kept["step"] >= self.every and loss <= 1.5 * self.level:  # type: ignore[index]
                self._keep(state)

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        val = row.get("val_loss")
        if state.diverged or val in ("", None):
            return
        best = self.best_val
        if not math.isfinite(val) or (best is not None and val > self.SPIKE * best and val > best + 1.0):
            self._recover(
                state,
                f"the validation loss rose to {val:.4g} at epoch {state.epoch}"
                + (f", {val / best:.1f}x its best {best:.3g}" if best and math.isfinite(val) else ""),
                val,
            )
            return
        self.best_val = val if best is None else min(best, val)
        self._keep(state)

    def _recover(self, state: FitState, what: str, loss: float) -> None:
        if len(state.recoveries) >= self.max_recoveries or self.kept is None:
            state.diverged = True
            tried = (
                f", after {len(state.recoveries)} recoveries (each lowering the learning rate x{self.factor:g})"
                if state.recoveries
                else ""
            )
            state.stop_reason = what + tried
            return
        self.model.load_state_dict(self.kept["model"])
        self.optimizer.load_state_dict(self.kept["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor
            if "initial_lr" in group:
                group["initial_lr"] *= self.factor
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * self.factor for lr in self.scheduler.base_lrs]
        state.lr = self.optimizer.param_groups[0]["lr"]
        self.level = self.kept["level"]
        entry = {
            "epoch": state.epoch,
            "step": state.step,
            "loss": loss if math.isfinite(loss) else str(loss),
            "restored": self.kept["where"],
            "lr_factor": self.factor,
        }
        state.recoveries.append(entry)
        self.log(
            f"recovery {len(state.recoveries)} of at most {self.max_recoveries}: {what}; back to the weights of "
            f"{self.kept['where']}, learning rate x{self.factor:g}"
        )


class Tracker(Callback):
    """One monitored figure of the history rows (fastai's TrackerCallback is the model): `monitor`
    (val_accuracy or val_loss) read from each epoch's row, falling back to the train_ figure where
    there is no validation part (`fallback`). A loss is negated, so a higher score is always better."""

    def __init__(self, monitor: str = "val_accuracy", fallback: bool = True) -> None:
        self.monitor, self.fallback = monitor, fallback

    def figure(self, row: dict[str, Any]) -> float | None:
        """The monitored figure of `row`, as written there; None where the row has none."""
        key = self.monitor
        if row.get(key, "") == "" and self.fallback:
            key = key.replace("val_", "train_")
        value = row.get(key, "")
        return None if value == "" else value

    def score(self, row: dict[str, Any]) -> float | None:
        value = self.figure(row)
        return None if value is None else -value if self.monitor.endswith("loss") else value


class BestTracker(Tracker):
    """The best epoch by the monitored figure (train.monitor): what picks best.pt, the test weights
    and early stopping. It keeps the best in the FitState (state.best_epoch, state.best_score), so a
    checkpoint carries it and a resumed run goes on judging against it; `improved` says whether the
    epoch that just ended is the new best. Put it before the callbacks that read it."""

    def __init__(self, monitor: str = "val_accuracy") -> None:
        super().__init__(monitor)
        self.improved = False

    def on_epoch_start(self, state: FitState) -> None:
        self.improved = False

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        score = self.score(row)
        self.improved = score is not None and score > state.best_score
        if self.improved:
            state.best_score, state.best_epoch = score, state.epoch

    def epochs_since_best(self, state: FitState) -> int | None:
        return None if state.best_epoch is None else state.epoch - state.best_epoch


class PlateauSchedule(Tracker):
    """Steps a ReduceLROnPlateau schedule once per epoch on its own figure (schedule.monitor, from
    the validation part: no fallback); the training step leaves it alone meanwhile. First in the
    callbacks: the epoch's other callbacks see the lowered learning rate in state.lr."""

    def __init__(self, step: Any) -> None:
        self.step, self.scheduler = step, step.scheduler
        super().__init__(self.scheduler.monitor, fallback=False)

    def on_fit_start(self, state: FitState) -> None:
        self.step.scheduler = None  # not per batch

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        value = self.figure(row)
        if value is not None:
            self.scheduler.step(value)
            state.lr = self.step.optimizer.param_groups[0]["lr"]

    def on_fit_end(self, state: FitState) -> None:
        self.step.scheduler = self.scheduler


class EarlyStopping(Callback):
    """Stop after `patience` epochs without a better figure of `tracker` (the best is kept in best.pt)."""

    def __init__(self, patience: int, tracker: BestTracker) -> None:
        self.patience, self.tracker = patience, tracker

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        since = self.tracker.epochs_since_best(state)
        if since is not None and since >= self.patience:
            what = self.tracker.monitor.replace("_", " ")
            state.stop_reason = f"early stopping: no better {what} for {self.patience} epochs"


class FreezeBody(Callback):
    """Train only the head (see engine/optim.head_parameters) for the first `epochs` epochs.

    Frozen parameters have requires_grad off, so they get no gradient and the optimizer skips them.
    """

    def __init__(self, model: nn.Module, epochs: int) -> None:
        from cnnlab.engine.optim import head_parameters
        from cnnlab.errors import ConfigError

        self.epochs = epochs
        head = head_parameters(model)
        if not head:
            raise ConfigError("train.freeze_epochs needs a model with a head to train; this one has none")
        # BatchNorm layers of the body keep updating their running statistics while frozen (as
        # fastai's default does); only the parameters stop.
        self.body = [p for p in model.parameters() if id(p) not in head and p.requires_grad]

    def on_epoch_start(self, state: FitState) -> None:
        frozen = state.epoch <= self.epochs
        for p in self.body:
            p.requires_grad_(not frozen)


class Checkpointer(Callback):
    """checkpoints/last.pt: at the start, after every epoch, and inside epochs every `every_steps`
    steps or `every_seconds` seconds and on Ctrl-C (with the data position, for an exact resume);
    checkpoints/best.pt when the epoch is the best so far (`tracker`, a BestTracker, says so).

    `snapshot(state)` gives what a checkpoint holds (weights, optimizer, scheduler, ... and config).
    Both files are written atomically, best.pt before last.pt: a kill between the two resumes from
    the older last.pt and writes the same best.pt again.
    """

    def __init__(
        self,
        folder: Path,
        snapshot: Callable[[FitState], dict[str, Any]],
        every_steps: int | None = None,
        every_seconds: float | None = None,
        inside_epochs: bool = True,
        *,
        tracker: BestTracker,
    ) -> None:
        self.folder = Path(folder)
        self.tracker = tracker
        self.snapshot = snapshot
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.inside_epochs = inside_epochs  # False under torchrun: only rank 0's streams would be saved
        self.last_save = time.perf_counter()

    def _save(self, name: str, state: FitState) -> None:
        save_checkpoint(self.folder / name, **self.snapshot(state))
        self.last_save = time.perf_counter()
        if name == "last.pt":
            state.last_saved = (
                f"epoch {state.epoch}, step {state.step}"
                if state.progress is not None
                else f"epoch {state.epoch}"
                if state.epoch
                else "the weights before training"
            )

    def on_fit_start(self, state: FitState) -> None:
        # last.pt from the start (epoch 0, the weights before training): a run that diverges or is
        # stopped in its first epoch still leaves good weights to look at or start from
        self.folder.mkdir(parents=True, exist_ok=True)
        if state.step == 0 and state.progress is None:
            self._save("last.pt", state)
        self.last_save = time.perf_counter()

    def on_batch_end(self, state: FitState, loss: float) -> None:
        if state.diverged or not self.inside_epochs:
            return
        due = state.interrupted
        due = due or (self.every_steps is not None and state.step % self.every_steps == 0)
        due = due or (self.every_seconds is not None and time.perf_counter() - self.last_save >= self.every_seconds)
        if due:
            self._save("last.pt", state)

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        if self.tracker.improved:
            self._save("best.pt", state)
        self._save("last.pt", state)


def _csv_text(columns: list[str], rows: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns] if isinstance(row, dict) else row)
    return buf.getvalue()


class HistoryWriter(Callback):
    """Rewrite history.csv (per epoch) and steps.csv (per optimizer step) atomically after each epoch."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        write_text(self.folder / "history.csv", _csv_text(HISTORY_COLUMNS, state.history))
        write_text(self.folder / "steps.csv", _csv_text(STEP_COLUMNS, state.steps))


class TensorBoardLogger(Callback):
    """TensorBoard event files in `folder` (train.tensorboard): the loss and lr per step, and the
    epoch figures. history.csv and steps.csv are written either way."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def on_batch_end(self, state: FitState, loss: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, state.step)
        self.writer.add_scalar(
            "step/lr", state.steps[-1][3] if state.steps else state.lr, state.step
        )  # the step's own lr, as steps.csv

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if row[key] != "":
                self.writer.add_scalar(f"epoch/{key}", row[key], state.epoch)
        self.writer.flush()

    def on_fit_end(self, state: FitState) -> None:
        self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar per epoch (on a terminal), and one summary line per epoch (always; in log.txt too)."""

    def __init__(self, enabled: bool | None = None, log: Any = None) -> None:
        self.enabled = enabled  # None: only on a terminal (tqdm's rule)
        self.log = log  # a RunLog that also keeps the epoch lines in log.txt, or None
        self.bar: tqdm | None = None

    def on_epoch_start(self, state: FitState) -> None:
        disable = None if self.enabled is None else not self.enabled
        self.bar = tqdm(
            total=state.steps_per_epoch,
            initial=state.progress.batches if state.progress is not None else 0,
            desc=f"epoch {state.epoch}/{state.epochs}",
            unit="batch",
            leave=False,
            disable=disable,
            dynamic_ncols=True,
        )

    def on_batch_end(self, state: FitState, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if state.step % 10 == 0:
                self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{state.lr:.3g}", refresh=False)

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        val = f"  val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.4f}" if row["val_loss"] != "" else ""
        best = "  *" if state.best_epoch == state.epoch else ""
        line = (
            f"epoch {state.epoch:>3}/{state.epochs}  train loss {row['train_loss']:.4f}  "
            f"train acc {row['train_accuracy']:.4f}{val}  {row['epoch_seconds']:.1f}s{best}"
        )
        (self.log.write if self.log is not None else tqdm.write)(line)

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
