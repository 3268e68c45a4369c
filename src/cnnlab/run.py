"""A whole training run: data, model, fit, test evaluation with the best weights, and the run folder."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.config import RunConfig
from cnnlab.data import Dataset, load_dataset, resolve_data
from cnnlab.data.pipeline import build_loaders, normalization_stats
from cnnlab.data.splits import inverse_frequency_weights
from cnnlab.engine.callbacks import Checkpointer, EarlyStopping, FitState, FreezeBody, HistoryWriter, NaNGuard, ProgressBar, TimeLimit
from cnnlab.engine.checkpoint import init_from, load_checkpoint
from cnnlab.engine.device import autocast_dtype, autocast_factory, resolve_device
from cnnlab.engine.fit import fit
from cnnlab.engine.loop import evaluate
from cnnlab.engine.optim import create_optimizer, create_scheduler
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.metrics import classification_metrics
from cnnlab.models import create_model, dry_run, num_parameters
from cnnlab.report.plots import plot_training_curves
from cnnlab.runs import RunLog, log_data_issues, make_run_dir, write_json, write_text


class RunDiverged(CnnlabError):
    """The loss went NaN or infinite; the files of the last good epoch stay."""

    exit_code = 3


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


MAX_AUTO_EPOCHS = 100  # min_steps adds epochs up to this: a 20-image folder gets 100 epochs, not 1,200


def resolve_epochs(cfg: RunConfig, n_train: int) -> tuple[RunConfig, bool]:
    """`cfg` with enough epochs for train.min_steps optimizer steps; True where that added epochs."""
    tc = cfg.train
    if tc.min_steps is None:
        return cfg, False
    steps_per_epoch = max(1, n_train // tc.batch_size)  # the train loader drops the last partial batch
    epochs = max(tc.epochs, min(MAX_AUTO_EPOCHS, math.ceil(tc.min_steps / steps_per_epoch)))
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, epochs=epochs)), epochs > tc.epochs


def check_outputs(model: nn.Module, name: str, input_shape, num_classes: int) -> None:
    """The model takes the images and gives one logit per class (a sigmoid-unit preset needs the BCE
    loss, not here yet)."""
    outputs = dry_run(model, tuple(input_shape), "give larger images (data.preprocess resizes image files) or choose another model", f"model {name}").shape[-1]
    if outputs != num_classes:
        raise ConfigError(f"model {name} gives {outputs} output(s) for {num_classes} classes; a sigmoid-unit model needs a BCE loss, which the engine does not have yet: use --set model.kwargs.output=linear")


def check_names(cfg: RunConfig) -> None:
    """Every named component exists: fail in a second, before any data is read."""
    from cnnlab.data import DATASETS
    from cnnlab.data.augment import parse_augment
    from cnnlab.data.normalize import NORMALIZATIONS
    from cnnlab.engine.optim import OPTIMIZERS, SCHEDULES
    from cnnlab.models import MODELS

    for registry, name in ((DATASETS, cfg.data.name), (MODELS, cfg.model.name), (OPTIMIZERS, cfg.optim.name), (SCHEDULES, cfg.schedule.name), (NORMALIZATIONS, cfg.data.normalize)):
        registry.get(name)
    parse_augment(cfg.data.augment)


@dataclass
class Prepared:
    """What a run needs before its folder exists: everything that can fail on data or model has run."""

    cfg: RunConfig  # fully resolved: what config.yaml records
    device: torch.device
    ds: Dataset
    model: nn.Module
    mean: list
    std: list
    notes: list[str]  # lines for the run's log


def prepare(cfg: RunConfig) -> Prepared:
    """Validate and resolve `cfg`, read the data and its statistics, and build the model."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data))  # --data PATH's layout; augment=auto
    check_names(cfg)
    if cfg.schedule.name == "plateau" and cfg.data.val_size == 0:
        raise ConfigError("schedule plateau steps on a validation figure, and data.val_size is 0; give a validation part or another schedule")
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    ds = load_dataset(cfg.data, cfg.train.seed)
    mean_t, std_t = normalization_stats(ds, cfg.data)  # statistics of the training part only
    num_classes = len(ds.classes)
    model: nn.Module = create_model(cfg.model.name, num_classes=num_classes, in_channels=ds.input_shape[0], input_size=tuple(ds.input_shape[1:]), **cfg.model.kwargs)
    check_outputs(model, cfg.model.name, ds.input_shape, num_classes)
    notes = [init_from(model, cfg.model.init_from, ds.classes)] if cfg.model.init_from else []
    # config.yaml records what was inferred (image size, channels), so a rerun reads the same way
    inferred = list(ds.preprocess) if ds.preprocess or cfg.data.preprocess is not None else None
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, preprocess=inferred, channels=ds.input_shape[0]))
    cfg, more_epochs = resolve_epochs(cfg, len(ds.train))
    tc = cfg.train
    if more_epochs:
        notes.append(f"{len(ds.train):,} training images: {tc.epochs} epochs, for train.min_steps={tc.min_steps} optimizer steps (at most {MAX_AUTO_EPOCHS} epochs; --epochs N trains exactly N)")
    if cfg.data.root and cfg.data.name in ("mnist", "fashion-mnist"):
        other = "mnist" if cfg.data.name == "fashion-mnist" else "fashion-mnist"
        notes.append(f"reading the IDX files in {cfg.data.root} as {cfg.data.name} ({', '.join(ds.classes[:3])}, ...); if they are {other}, add --set data.name={other}")
    return Prepared(cfg, device, ds, model, mean_t.tolist(), std_t.tolist(), notes)


def train_run(cfg: RunConfig, *, out: str | None = None, progress: bool | None = None) -> RunResult:
    """Train `cfg` and write its run folder (config.yaml, history.csv, metrics.json, checkpoints, plots).

    `out` is the run folder (default runs/<cfg.name>-<n>); `progress` shows tqdm bars (None: on a TTY).
    """
    t_start = time.perf_counter()
    p = prepare(cfg)
    cfg, device, ds, model, mean, std, tc = p.cfg, p.device, p.ds, p.model, p.mean, p.std, p.cfg.train
    num_classes = len(ds.classes)
    run_dir = make_run_dir(out, cfg.name)
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    log = RunLog(run_dir / "log.txt")
    log_data_issues(log, ds.skipped, ds.warnings)
    for note in p.notes:
        log.write(note)

    loaders = build_loaders(ds, cfg.data, tc, device, mean, std)
    model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.contiguous_format)
    optimizer = create_optimizer(model, cfg.optim)
    scheduler = create_scheduler(optimizer, cfg.schedule, len(loaders["train"]), tc.epochs)
    weight = inverse_frequency_weights(ds.train, num_classes).to(device) if tc.class_weights == "auto" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing)
    autocast = autocast_factory(device, autocast_dtype(device, tc.precision))

    def extra() -> dict[str, Any]:
        return dict(
            config=cfg.to_dict(),
            classes=list(ds.classes),
            input_shape=list(ds.input_shape),
            preprocess=list(ds.preprocess),
            normalization={"mean": mean, "std": std},
        )

    callbacks = [Checkpointer(run_dir / "checkpoints", model, optimizer, scheduler, extra), HistoryWriter(run_dir), ProgressBar(progress, log)]
    if tc.time_limit is not None:
        callbacks.insert(0, TimeLimit(tc.time_limit))
    if tc.freeze_epochs:
        callbacks.insert(0, FreezeBody(model, tc.freeze_epochs))
    callbacks.insert(0, NaNGuard())
    if tc.early_stopping:
        callbacks.append(EarlyStopping(tc.early_stopping))  # after the Checkpointer: it reads the best epoch
    try:
        state = fit(model, loaders["train"], loaders.get("val"), optimizer, scheduler, loss_fn, epochs=tc.epochs, num_classes=len(ds.classes), callbacks=callbacks, autocast=autocast, clip_grad_norm=tc.clip_grad_norm)
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; the files written so far are kept in {run_dir} (checkpoints/last.pt is the last finished epoch)") from None
    train_seconds = state.elapsed
    if state.diverged:
        last = run_dir / "checkpoints" / "last.pt"
        done = state.epoch - 1
        kept = f"the last good weights ({f'epoch {done}' if done else 'the weights before training'}) are in {last}" if last.is_file() else "no checkpoint was written"
        log.write(f"stopped: {state.stop_reason}")
        raise RunDiverged(f"{state.stop_reason}; {kept}. Lower the learning rate (--lr) or set train.clip_grad_norm")

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
    late = {p: r for ld in loaders.values() for p, r in ld.skipped.items()}  # found by decoding workers
    log_data_issues(log, sorted(late.items()), [])
    skipped = sorted(set(ds.skipped) | set(late.items()))
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
        skipped_files=[{"path": p, "reason": r} for p, r in skipped],
    )
    plot_training_curves(run_dir)
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 3)
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics, state, metrics["total_seconds"])
