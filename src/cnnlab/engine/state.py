"""FitState: where a fit is (epoch, step, history, the best epoch so far) and why it stopped.

The callbacks read and write it; engine/checkpoint.py saves and restores it; fit() drives it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"]
STEP_COLUMNS = ["step", "epoch", "loss", "lr"]


@dataclass
class FitState:
    epochs: int  # epochs planned
    steps_per_epoch: int
    epoch: int = 0  # the epoch running or just finished, 1-based
    step: int = 0  # optimizer steps so far
    lr: float = 0.0
    epoch_lr: float = 0.0  # the lr the running epoch started with (history's lr column)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (HISTORY_COLUMNS)
    steps: list[list[Any]] = field(default_factory=list)  # one row per step (STEP_COLUMNS)
    best_epoch: int | None = None  # kept by the BestTracker callback (the monitored figure's best)
    best_score: float = float("-inf")  # higher is better: a loss is negated
    progress: Any = None  # the running epoch's EpochProgress; None between epochs
    loader: dict[str, Any] | None = None  # on resume: the train loader's position inside `epoch`
    stop_reason: str | None = None
    diverged: bool = False  # the loss went NaN or infinite: the epoch's weights are not kept
    interrupted: bool = False  # Ctrl-C or SIGTERM: stopped at a step boundary, position saved
    prior_seconds: float = 0.0  # training time of the sessions before a resume
    sessions: int = 1  # 1 + the number of resumes
    recoveries: list[dict[str, Any]] = field(default_factory=list)  # the DivergenceGuard's rollbacks (metrics.json)
    last_saved: str | None = None  # what checkpoints/last.pt holds, e.g. "epoch 2, step 30" (set by the Checkpointer)
    start_time: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        """Seconds of fitting in this session (what train.time_limit counts)."""
        return time.perf_counter() - self.start_time

    @property
    def train_seconds(self) -> float:
        return self.prior_seconds + self.elapsed

    def restart_clock(self) -> None:
        self.start_time = time.perf_counter()
