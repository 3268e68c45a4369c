"""A whole training run: data, model, fit, test evaluation with the best weights, and the run folder."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.config import RunConfig
from cnnlab.data import Dataset, load_dataset
from cnnlab.data.loader import TensorLoader, channel_stats
from cnnlab.engine.callbacks import Checkpointer, FitState, HistoryWriter, ProgressBar, TimeLimit
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.device import autocast_dtype, autocast_factory, resolve_device
from cnnlab.engine.fit import fit
from cnnlab.engine.loop import evaluate
from cnnlab.engine.optim import create_optimizer, create_scheduler
from cnnlab.errors import CnnlabError
from cnnlab.metrics import classification_metrics
from cnnlab.models import create_model, num_parameters
from cnnlab.report.plots import plot_training_curves
from cnnlab.runs import make_run_dir, write_json, write_text


class RunInterrupted(CnnlabError):
    """Ctrl-C during a run; the files written so far stay readable."""

    exit_code = 130


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    state: FitState
    total_seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_loaders(ds: Dataset, cfg: RunConfig, device: torch.device, mean: list[float], std: list[float]) -> dict[str, TensorLoader]:
    t, d = cfg.train, cfg.data
    common = dict(mean=mean, std=std, device=device, channels_last=t.channels_last)
    loaders = {
        "train": TensorLoader(ds.train, t.batch_size, shuffle=True, augment=d.augment, translate=d.translate, drop_last=len(ds.train) > t.batch_size, seed=t.seed, **common),
        "test": TensorLoader(ds.test, t.eval_batch_size, **common),
    }
    if ds.val is not None:
        loaders["val"] = TensorLoader(ds.val, t.eval_batch_size, **common)
    return loaders


def check_names(cfg: RunConfig) -> None:
    """Every named component exists: fail in a second, before any data is read."""
    from cnnlab.data import DATASETS
    from cnnlab.data.augment import AUGMENTATIONS
    from cnnlab.engine.optim import OPTIMIZERS, SCHEDULES
    from cnnlab.models import MODELS

    for registry, name in ((DATASETS, cfg.data.name), (MODELS, cfg.model.name), (OPTIMIZERS, cfg.optim.name), (SCHEDULES, cfg.schedule.name), (AUGMENTATIONS, cfg.data.augment)):
        registry.get(name)


def train_run(cfg: RunConfig, *, out: str | None = None, progress: bool | None = None) -> RunResult:
    """Train `cfg` and write its run folder (config.yaml, history.csv, metrics.json, checkpoints, plots).

    `out` is the run folder (default runs/<cfg.name>-<n>); `progress` shows tqdm bars (None: on a TTY).
    """
    t_start = time.perf_counter()
    cfg.validate()
    check_names(cfg)
    tc = cfg.train
    device = resolve_device(tc.device)
    seed_everything(tc.seed)
    ds = load_dataset(cfg.data, tc.seed)  # before the run folder exists: missing data leaves no empty run
    run_dir = make_run_dir(out, cfg.name)
    write_text(run_dir / "config.yaml", cfg.to_yaml())

    mean, std = channel_stats(ds.train.images)  # statistics of the training split only
    loaders = build_loaders(ds, cfg, device, mean, std)
    in_channels = ds.input_shape[0]
    model: nn.Module = create_model(cfg.model.name, num_classes=len(ds.classes), in_channels=in_channels, **cfg.model.kwargs)
    model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.contiguous_format)
    optimizer = create_optimizer(model, cfg.optim)
    scheduler = create_scheduler(optimizer, cfg.schedule, len(loaders["train"]), tc.epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    autocast = autocast_factory(device, autocast_dtype(device, tc.precision))

    def extra() -> dict[str, Any]:
        return dict(
            config=cfg.to_dict(),
            classes=list(ds.classes),
            input_shape=list(ds.input_shape),
            normalization={"mean": mean, "std": std},
        )

    callbacks = [Checkpointer(run_dir / "checkpoints", model, optimizer, scheduler, extra), HistoryWriter(run_dir), ProgressBar(progress)]
    if tc.time_limit is not None:
        callbacks.insert(0, TimeLimit(tc.time_limit))
    try:
        state = fit(model, loaders["train"], loaders.get("val"), optimizer, scheduler, loss_fn, epochs=tc.epochs, num_classes=len(ds.classes), callbacks=callbacks, autocast=autocast)
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; the files written so far are kept in {run_dir} (checkpoints/last.pt is the last finished epoch)") from None
    train_seconds = state.elapsed

    # Test with the best epoch's weights, read back from best.pt: what metrics.json reports is
    # exactly what that file restores. In fp32 (whatever the training precision), so re-evaluating
    # the checkpoint anywhere gives the same figures.
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    metrics: dict[str, Any] = {}
    for split in ("test", "val"):
        if split in loaders:
            r = evaluate(model, loaders[split], len(ds.classes))
            metrics[split] = classification_metrics(r.confusion, ds.classes, loss=r.loss)
    metrics.update(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        stop_reason=state.stop_reason,
        train_seconds=round(train_seconds, 3),
        num_parameters=num_parameters(model),
        model=cfg.model.name,
        data=cfg.data.name,
        data_source=ds.source,
        seed=tc.seed,
        device=str(device),
        precision=str(autocast_dtype(device, tc.precision) or torch.float32).replace("torch.", ""),
    )
    plot_training_curves(run_dir)
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 3)
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics, state, metrics["total_seconds"])
