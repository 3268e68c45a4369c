"""A whole training run: data, model, fit, test evaluation with the best weights, and the run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.config import RunConfig, apply_overrides, config_from_dict, flatten
from cnnlab.data import Dataset, load_dataset, resolve_data
from cnnlab.data.augment import parse_augment
from cnnlab.data.loader import make_loader
from cnnlab.data.pipeline import build_loaders, dataset_value_max, normalization_stats
from cnnlab.engine.callbacks import (
    Callback,
    Checkpointer,
    DivergenceGuard,
    EarlyStopping,
    FitState,
    FreezeBody,
    HistoryWriter,
    ProgressBar,
    TensorBoardLogger,
    TimeLimit,
)
from cnnlab.engine.checkpoint import init_from, load_checkpoint, restore_rng
from cnnlab.engine.device import autocast_factory, resolve_device, set_threads
from cnnlab.engine.distributed import Dist, env_world, init_distributed, shutdown
from cnnlab.engine.ema import EMA
from cnnlab.engine.fit import fit
from cnnlab.engine.loop import TrainStep
from cnnlab.engine.losses import LOSSES, Objective, Target, create_objective, model_outputs
from cnnlab.engine.mix import BatchMix
from cnnlab.engine.optim import create_optimizer, create_scheduler
from cnnlab.engine.precision import Choice, choose, model_signature
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.evaluation import Predictions, metrics_of, predict
from cnnlab.models import create_model, dry_run, num_parameters
from cnnlab.plan import MAX_AUTO_EPOCHS, adapt, epochs_for
from cnnlab.run_folder import RunLog, log_data_issues, make_run_dir, remove_stale_temps, write_json, write_text
from cnnlab.text import printable


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
    main: bool = True  # False on the torchrun processes other than rank 0 (they write nothing)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_epochs(cfg: RunConfig, n_train: int) -> tuple[RunConfig, bool]:
    """`cfg` with enough epochs for train.min_steps optimizer steps; True where that added epochs."""
    tc = cfg.train
    epochs = epochs_for(n_train, tc.batch_size, tc.epochs, tc.min_steps)
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, epochs=epochs)), epochs > tc.epochs


def check_names(cfg: RunConfig) -> None:
    """Every named component exists: fail in a second, before any data is read."""
    from cnnlab.data import DATASETS
    from cnnlab.data.augment import parse_augment
    from cnnlab.data.normalize import NORMALIZATIONS
    from cnnlab.engine.optim import OPTIMIZERS, SCHEDULES
    from cnnlab.models import MODELS

    checks = [
        (DATASETS, cfg.data.name),
        (MODELS, cfg.model.name),
        (OPTIMIZERS, cfg.optim.name),
        (SCHEDULES, cfg.schedule.name),
        (NORMALIZATIONS, cfg.data.normalize),
    ]
    if cfg.train.loss != "auto":
        checks.append((LOSSES, cfg.train.loss))
    for registry, name in checks:
        registry.get(name)
    parse_augment(cfg.data.augment)


@dataclass
class Prepared:
    """What a run needs before its folder exists: everything that can fail on data or model has run."""

    cfg: RunConfig  # fully resolved: what config.yaml records
    device: torch.device
    ds: Dataset
    model: nn.Module
    objective: Objective
    mean: list
    std: list
    notes: list[str]  # lines for the run's log


def check_combination(cfg: RunConfig, device: torch.device, world: int) -> None:
    """Options that each make sense but not together: refused before any data is read."""
    tc = cfg.train
    if cfg.schedule.name == "plateau" and cfg.data.val_size == 0:
        raise ConfigError(
            "schedule plateau steps on a validation figure, and data.val_size is 0; give a validation part or another schedule"
        )
    if world > 1 and tc.freeze_epochs:
        raise ConfigError(
            "train.freeze_epochs changes which parameters train while DistributedDataParallel expects a fixed set; under torchrun leave it at 0"
        )
    if world > 1 and tc.batch_size % world:
        raise ConfigError(
            f"train.batch_size {tc.batch_size} is the global batch and must divide among the {world} processes; use a multiple of {world}"
        )
    if tc.precision == "fp16" and device.type == "mps":
        raise ConfigError(
            "train.precision fp16 needs a loss scaler, which torch has for cuda and cpu only; use bf16 or fp32 on mps"
        )
    if tc.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard")
    if tc.deterministic and tc.compile:
        raise ConfigError("train.deterministic and train.compile together are not supported; choose one")


DIGITS = ("mnist", "mnist-5k")  # no mirror-image test-time augmentation: a mirrored digit is another digit or none


def weights_data_defaults(cfg: RunConfig, w: dict[str, Any] | None) -> tuple[RunConfig, list[str]]:
    """Image files fed to pretrained timm weights at the weights' own input size and resize (`w`,
    timm_zoo.data_defaults), where data.preprocess is left to cnnlab; and the log line that says so."""
    from cnnlab.data import DATASETS

    if w is None or cfg.data.preprocess is not None or not DATASETS.get(cfg.data.name).reads_files:
        return cfg, []
    steps = [{"resize": w["resize"]}, {"center_crop": w["size"]}]
    note = f"input from the pretrained weights' config: resize {w['resize']}, center crop {w['size']}"
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, preprocess=steps)), [note]


def weights_normalization(cfg: RunConfig, ds, w: dict[str, Any] | None) -> tuple[RunConfig, list[str]]:
    """ImageNet's mean/std for pretrained timm weights (`w`) that were trained with it, where
    data.normalize is auto and the images are RGB (the weights' statistics, not the data's)."""
    from cnnlab.data.normalize import IMAGENET_STATS

    if w is None or cfg.data.normalize != "auto" or ds.input_shape[0] != 3:
        return cfg, []
    if (tuple(round(v, 3) for v in w["mean"]), tuple(round(v, 3) for v in w["std"])) != IMAGENET_STATS:
        return cfg, [
            f"normalize: the data's own statistics (the weights' mean {w['mean']} and std {w['std']} are not a cnnlab normalisation; data.normalize sets one)"
        ]
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize="imagenet")), [
        "normalize: imagenet, the pretrained weights' statistics"
    ]


def prepare(cfg: RunConfig, world: int = 1) -> Prepared:
    """Validate and resolve `cfg`, read the data and its statistics, and build the model and objective."""
    from cnnlab.models.timm_zoo import data_defaults

    cfg.validate()
    augment_auto = cfg.data.augment == "auto"
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data))  # --data PATH's layout; augment=auto
    check_names(cfg)
    device = resolve_device(cfg.train.device)
    set_threads(cfg.train.threads)
    check_combination(cfg, device, world)
    seed_everything(cfg.train.seed)
    weights = data_defaults(cfg.model.name, cfg.model.kwargs)  # pretrained timm weights: their input and statistics
    cfg, weight_notes = weights_data_defaults(cfg, weights)
    ds = load_dataset(cfg.data, cfg.train.seed)
    cfg, more_notes = weights_normalization(cfg, ds, weights)
    mean_t, std_t = normalization_stats(ds, cfg.data)  # statistics of the training part only
    cfg, notes = adapt(cfg, ds, augment_auto)  # train.adapt: batch, lr, warm-up, epochs, augmentation for this data
    notes = weight_notes + more_notes + notes
    if cfg.data.preprocess is None and ds.preprocess:  # chosen from the files' sizes (data/folder.py auto_side)
        notes.insert(
            0,
            f"input {'x'.join(map(str, ds.input_shape))}: the images' sizes vary or are large, so each is {' then '.join(f'{k} {v}' for step in ds.preprocess for k, v in step.items())}",
        )
    if (
        cfg.train.tta == "auto"
    ):  # mirror images at test time where training showed the model mirror images (never digits)
        flips = "flip" in parse_augment(cfg.data.augment) and cfg.data.name not in DIGITS
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tta=flips))
    num_classes = len(ds.classes)
    target = Target(num_classes, ds.train.labels.ndim == 2, ds.train)
    model: nn.Module = create_model(
        cfg.model.name,
        num_classes=model_outputs(cfg.train.loss, target),
        in_channels=ds.input_shape[0],
        input_size=tuple(ds.input_shape[1:]),
        **cfg.model.kwargs,
    )
    outputs = dry_run(
        model,
        tuple(ds.input_shape),
        "give larger images (data.preprocess resizes image files) or choose another model",
        f"model {cfg.model.name}",
    ).shape[-1]
    objective = create_objective(
        cfg.train.loss,
        model,
        target,
        outputs,
        smoothing=cfg.train.label_smoothing,
        weighted=cfg.train.class_weights == "auto",
    )
    if cfg.train.tta and cfg.data.name in DIGITS:
        raise ConfigError(
            "train.tta averages each image with its mirror image, which changes digits; leave it off for MNIST"
        )
    if cfg.model.init_from:
        notes.append(init_from(model, cfg.model.init_from, ds.classes))
    # config.yaml records what was inferred (image size, channels, the loss), so a rerun reads the same way
    inferred = list(ds.preprocess) if ds.preprocess or cfg.data.preprocess is not None else None
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, preprocess=inferred, channels=ds.input_shape[0]),
        train=dataclasses.replace(cfg.train, loss=objective.name),
    )
    cfg, more_epochs = resolve_epochs(cfg, len(ds.train))
    tc = cfg.train
    if more_epochs:
        notes.append(
            f"{len(ds.train):,} training images: {tc.epochs} epochs, for train.min_steps={tc.min_steps} optimizer steps (at most {MAX_AUTO_EPOCHS} epochs; --epochs N trains exactly N)"
        )
    if cfg.data.root and cfg.data.name in ("mnist", "fashion-mnist"):
        other = "mnist" if cfg.data.name == "fashion-mnist" else "fashion-mnist"
        notes.append(
            f"reading the IDX files in {cfg.data.root} as {cfg.data.name} ({', '.join(ds.classes[:3])}, ...); if they are {other}, add --set data.name={other}"
        )
    return Prepared(cfg, device, ds, model, objective, mean_t.tolist(), std_t.tolist(), notes)


# --- resuming ---------------------------------------------------------------------------------

# keys a resumed run may change; anything else that differs from the run's config is refused
RESUME_FREE = (
    "name",
    "train.epochs",
    "train.min_steps",
    "train.reference_images",
    "train.time_limit",
    "train.early_stopping",
    "train.checkpoint_steps",
    "train.checkpoint_seconds",
    "train.device",
    "train.threads",
    "train.eval_batch_size",
    "train.tta",
    "train.test_weights",
    "train.clip_grad_norm",
    "data.root",
    "data.workers",
    "data.download",
)


def _epochs_reported(run_dir: Path) -> int | None:
    """epochs_run of the run's metrics.json (written when its test evaluation finished), or None."""
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("epochs_run")
    except (OSError, ValueError, AttributeError):
        return None


def resume_config(run_dir: str | Path, overrides: dict[str, Any]) -> tuple[RunConfig, dict[str, Any], list[str]]:
    """The config to continue `run_dir` with (its own, plus the allowed `overrides`), its last.pt, and
    lines for the log. A change to the model, the data or anything that breaks the saved state is a
    ConfigError saying what differs."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "config.yaml").is_file() or not last.is_file():
        raise CnnlabError(
            f"--resume {run_dir}: not a run folder with checkpoints/last.pt; give a folder that cnnlab train wrote"
        )
    ckpt = load_checkpoint(last)
    if not isinstance(ckpt.get("fit"), dict) or not isinstance(ckpt.get("config"), dict):
        raise CnnlabError(
            f"--resume {run_dir}: its last.pt was written by an older cnnlab without the training state; start a new run (--init-from {run_dir} keeps the weights)"
        )
    saved = config_from_dict(ckpt["config"])
    cfg = apply_overrides(saved, overrides)
    old, new = flatten(saved.to_dict()), flatten(cfg.to_dict())
    changed = [k for k in new if new[k] != old.get(k)]
    fixed = [k for k in changed if k not in RESUME_FREE]
    if fixed:
        k = fixed[0]
        why = (
            "changes the model"
            if k.startswith("model.")
            else "changes the data"
            if k.startswith("data.")
            else "does not fit the saved training state"
        )
        raise ConfigError(
            f"--resume {run_dir}: {k} is {old.get(k)!r} in that run and {new[k]!r} here, which {why}; resume without it, or start a new run (--init-from {run_dir} keeps the weights)"
        )
    done = ckpt["fit"]["epoch"] - (1 if ckpt["fit"].get("progress") else 0)
    finished = not ckpt["fit"].get("progress") and _epochs_reported(run_dir) == ckpt["fit"]["epoch"]
    if cfg.train.epochs < done or (cfg.train.epochs == done and finished):
        raise ConfigError(
            f"--resume {run_dir}: that run has finished {done} epoch(s) of {saved.train.epochs}; give --epochs N with N above {done} to train more"
        )
    notes = [
        f"resumed {run_dir} at epoch {ckpt['fit']['epoch']}, step {ckpt['fit']['step']}"
        + (" (inside the epoch)" if ckpt["fit"].get("progress") else "")
    ]
    notes += [f"  {k}: {old.get(k)!r} -> {new[k]!r}" for k in changed]
    return cfg, ckpt, notes


def _rounded(values: Any) -> list[float]:
    """Statistics (per channel, or per pixel: nested lists) as one flat list, to 6 places."""
    return [round(v, 6) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist()]


def check_resumed_data(ckpt: dict[str, Any], p: Prepared, run_dir: Path) -> None:
    """A resumed run's data must be the data it was trained on, wherever it now lies (data.root may
    change): the same class names in the same order, input shape and normalisation. Other names in
    the same count would train on silently, and the checkpoints would then carry the new names."""
    saved_norm = ckpt.get("normalization") or {}
    pairs = [
        ("class names", list(ckpt.get("classes", [])), list(p.ds.classes)),
        ("input shape", list(ckpt.get("input_shape", [])), list(p.ds.input_shape)),
        ("normalisation mean", _rounded(saved_norm.get("mean", [])), _rounded(p.mean)),
        ("normalisation std", _rounded(saved_norm.get("std", [])), _rounded(p.std)),
    ]
    for what, old, new in pairs:
        if old != new:
            show = (
                (lambda v: f"{len(v)} ({', '.join(map(str, v[:4]))}{', ...' if len(v) > 4 else ''})")
                if what == "class names"
                else str
            )
            raise ConfigError(
                f"--resume {run_dir}: the data differs from the run's: {what} {show(old)} there, {show(new)} here; resume on the same data, or start a new run (--init-from {run_dir} keeps the weights)"
            )


def _restore(ckpt: dict[str, Any], model: nn.Module, optimizer, scheduler, scaler, ema) -> None:
    """Put a run's saved training state back: weights, optimizer, schedule, scaler, EMA, random streams."""
    model.load_state_dict(ckpt.get("raw_model") or ckpt["model"])
    # the implementation (fused or not) this torch and device take, not the saved run's: set before
    # loading, so the state (Adam's step count) is placed as that implementation wants it
    saved = ckpt["optimizer"]
    built = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    if len(built) == len(saved["param_groups"]):  # else load_state_dict gives its own error
        saved = {**saved, "param_groups": [{**g, **impl} for g, impl in zip(saved["param_groups"], built)]}
    optimizer.load_state_dict(saved)
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        ema.module.load_state_dict(ckpt["model"])
        ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 0)))
    restore_rng(ckpt["rng"])


# --- a run --------------------------------------------------------------------------------------


def training_policy(p: Prepared, dist: Dist, ckpt: dict[str, Any] | None) -> Choice:
    """The dtype and layout this run trains with (engine/precision.py): a resumed run keeps its own
    (an exact continuation); else rank 0 decides, probing the run's model where `auto` asks for it,
    and every process under torchrun takes its answer."""
    tc = p.cfg.train
    if ckpt is not None:
        saved = ckpt.get("policy")
        if isinstance(saved, dict) and "dtype" in saved:
            return Choice.from_dict(saved)
        # a checkpoint from before the measured policy: the rule it was trained under (bf16 wherever oneDNN
        # said it could), so the continuation is exact
        old_auto = (
            p.device.type == "cpu"
            and bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        ) or (p.device.type == "cuda" and torch.cuda.is_bf16_supported())
        old_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and old_auto)
        dtype = "float16" if tc.precision == "fp16" else "bfloat16" if old_bf16 else "float32"
        return Choice(
            dtype, tc.channels_last is not False, "resumed a run from before the measured policy: its own precision"
        )
    answer: tuple[dict | None, str] = (None, "")
    if dist.main:
        try:  # rank 0's error reaches every process: none is left waiting in the broadcast
            shape = tuple(p.ds.input_shape)
            signature = model_signature(p.cfg.model.name, p.cfg.model.kwargs, p.objective.outputs)
            answer = (
                choose(
                    p.device,
                    tc.precision,
                    tc.channels_last,
                    model=p.model,
                    input_shape=shape,
                    batch=max(1, tc.batch_size // dist.world),
                    num_outputs=p.objective.outputs,
                    signature=signature,
                ).to_dict(),
                "",
            )
        except Exception as e:  # the probe runs the user's model: any failure is reported, on every rank
            answer = (
                None,
                f"the precision probe failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); set train.precision and train.channels_last explicitly",
            )
    answer = dist.broadcast(answer)
    if answer[1]:
        raise ConfigError(answer[1])
    return Choice.from_dict(answer[0])


class _Quiet:
    """The log of a process that is not rank 0: it writes nothing."""

    def write(self, line: str, echo: bool = True) -> None: ...


def _import_dynamo_meanwhile() -> None:
    """Import torch._dynamo in a thread while the data loads. The first torch.optim optimizer imports
    it (torch._disable_dynamo on add_param_group), about 1 s of the default run's 40 on the 2-core
    CPU; reading and decompressing the data releases the GIL for most of that second."""
    import sys
    import threading

    if "torch._dynamo" not in sys.modules:
        # not a daemon: an interpreter that exits (an early error) waits for the import rather than
        # tearing it down halfway, which aborts the process
        threading.Thread(target=_import_quietly, args=("torch._dynamo",), name="import-dynamo").start()


def _import_quietly(name: str) -> None:
    """Import `name`, keeping any failure to itself: two threads importing torch's modules at once can
    meet Python's import-deadlock check (seen under load: the main thread building a torchvision model),
    and an import that fails here is tried again, and reported, where the main thread needs it."""
    import importlib

    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001  not this thread's to report (see the docstring)
        pass


def train_run(
    cfg: RunConfig,
    *,
    out: str | None = None,
    progress: bool | None = None,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train `cfg` and write its run folder (config.yaml, history.csv, metrics.json, checkpoints, plots).

    `out` is the run folder (default runs/<cfg.name>-<n>); `progress` shows tqdm bars (None: on a TTY).
    `resume` continues that run folder from its last.pt instead (`cfg` is then ignored; `overrides`
    are the keys to change, e.g. {"train.epochs": 30}). `callbacks` are added to the fit's own.
    Under torchrun every process calls this; only rank 0 writes.
    """
    t_start = time.perf_counter()
    _import_dynamo_meanwhile()
    ckpt, resume_notes = None, []
    if resume is not None:
        cfg, ckpt, resume_notes = resume_config(resume, overrides or {})
    _, world, _ = env_world()
    p = prepare(cfg, world)
    dist = init_distributed(p.device)
    clean = False
    try:
        result = _train(
            p,
            dist,
            t_start,
            out=out,
            progress=progress,
            resume=Path(resume) if resume is not None else None,
            ckpt=ckpt,
            notes=resume_notes,
            callbacks=callbacks,
        )
        clean = True
        return result
    finally:
        shutdown(dist, clean)


def _train(
    p: Prepared,
    dist: Dist,
    t_start: float,
    *,
    out,
    progress,
    resume: Path | None,
    ckpt,
    notes: list[str],
    callbacks: Sequence[Callback],
) -> RunResult:
    cfg, device, ds, model, objective, mean, std, tc = (
        p.cfg,
        p.device,
        p.ds,
        p.model,
        p.objective,
        p.mean,
        p.std,
        p.cfg.train,
    )
    num_classes = len(ds.classes)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if resume is not None:
        run_dir = resume
        check_resumed_data(ckpt, p, run_dir)  # before anything in the folder is rewritten
        if dist.main:  # a kill mid-write left a full-size temporary file: the resumed run is the only writer here
            for folder in (run_dir, run_dir / "checkpoints"):
                for stale in remove_stale_temps(folder):
                    notes = [*notes, f"removed {stale.name}, a half-written file left by the stopped run"]
    else:
        made: tuple[str, str] = ("", "")
        if dist.main:
            try:
                made = (str(make_run_dir(out, cfg.name)), "")
            except CnnlabError as e:
                made = ("", str(e))
        made = dist.broadcast(made)  # the others wait for rank 0's folder, or its error
        if made[1]:
            raise ConfigError(made[1])
        run_dir = Path(made[0])
    log: Any = RunLog(run_dir / "log.txt") if dist.main else _Quiet()
    if dist.main:
        write_text(run_dir / "config.yaml", cfg.to_yaml())
        for line in notes:
            log.write(line)
        if resume is None:
            log_data_issues(log, ds.skipped, ds.warnings)
        for note in p.notes:
            log.write(note)
        if dist.enabled:
            log.write(
                f"{dist.world} processes (torchrun): {tc.batch_size // dist.world} images per process per step, global batch {tc.batch_size}; checkpoints at epoch ends only"
            )

    policy = training_policy(p, dist, ckpt)
    if dist.main:
        log.write(f"precision: {policy.summary()}" + (" [cached]" if policy.cached else ""))
    tc = dataclasses.replace(tc, channels_last=policy.channels_last)  # what the loaders and the model use
    loaders = build_loaders(ds, cfg.data, tc, device, mean, std, shard=(dist.rank, dist.world))
    model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.contiguous_format)
    forward: nn.Module = model
    if dist.enabled:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if device.type == "cuda" else None
        )
    if tc.compile:
        forward = torch.compile(forward)
    optimizer = create_optimizer(model, cfg.optim)
    scheduler = create_scheduler(optimizer, cfg.schedule, len(loaders["train"]), tc.epochs)
    amp_dtype = policy.autocast_dtype
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ema = EMA(model, tc.ema) if tc.ema else None
    mix = BatchMix(tc.mixup, tc.cutmix) if tc.mixup or tc.cutmix else None
    step = TrainStep(
        forward,
        optimizer,
        objective,
        scheduler,
        autocast_factory(device, amp_dtype),
        tc.clip_grad_norm,
        scaler,
        mix,
        ema,
    )
    eval_model = ema.module if ema is not None else model

    guard = DivergenceGuard(model, optimizer, scheduler, log=log.write, every=max(20, len(loaders["train"]) // 4))
    state = None
    if ckpt is not None:
        _restore(ckpt, model, optimizer, scheduler, scaler, ema)
        if isinstance(ckpt.get("guard"), dict):  # absent in checkpoints from before the guard
            guard.load_state_dict(ckpt["guard"])
        state = FitState.from_dict(ckpt["fit"], len(loaders["train"]), ckpt.get("loader"))

    def snapshot(s: FitState) -> dict[str, Any]:
        return dict(
            model=eval_model.state_dict(),  # the weights that are evaluated (the EMA's, where there is one)
            raw_model=model.state_dict() if ema is not None else None,
            ema_n_averaged=int(ema.n_averaged) if ema is not None else None,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            scaler=scaler.state_dict() if scaler is not None else None,
            loader=loaders["train"].state_dict() if s.progress is not None else None,
            fit=s.to_dict(),
            epoch=s.epoch,
            step=s.step,
            score=s.best_score if s.best_epoch == s.epoch else None,
            config=cfg.to_dict(),
            classes=list(ds.classes),
            input_shape=list(ds.input_shape),
            preprocess=list(ds.preprocess),
            normalization={
                "mean": mean,
                "std": std,
                "value_max": dataset_value_max(ds),
            },  # x_norm = (x / value_max - mean) / std
            objective=objective.name,
            policy=policy.to_dict(),  # a resumed run trains with the same precision and layout
            guard=guard.state_dict(),  # the divergence guard's last good point and level: a resumed run judges and rolls back alike
        )

    every_steps, every_seconds = tc.checkpoint_steps, tc.checkpoint_seconds
    fit_callbacks: list[Callback] = [guard]
    if tc.freeze_epochs:
        fit_callbacks.append(FreezeBody(model, tc.freeze_epochs))
    if tc.time_limit is not None:
        fit_callbacks.append(TimeLimit(tc.time_limit))
    fit_callbacks += list(callbacks)
    if dist.main:
        if tc.tensorboard:
            fit_callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
        fit_callbacks += [
            Checkpointer(run_dir / "checkpoints", snapshot, every_steps, every_seconds, inside_epochs=not dist.enabled),
            HistoryWriter(run_dir),
            ProgressBar(progress, log),
        ]
    if tc.early_stopping:
        fit_callbacks.append(EarlyStopping(tc.early_stopping, tc.monitor))
    try:
        # validation in bf16 where training is (twice as fast); metrics.json's figures below are fp32
        val_autocast = step.autocast if amp_dtype == torch.bfloat16 else contextlib.nullcontext
        state = fit(
            step,
            loaders["train"],
            loaders.get("val"),
            epochs=tc.epochs,
            num_classes=num_classes,
            callbacks=fit_callbacks,
            state=state,
            eval_model=eval_model,
            tta=tc.tta,
            monitor=tc.monitor,
            dist=dist,
            eval_autocast=val_autocast,
        )
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted; the files written so far are kept in {run_dir} (checkpoints/last.pt is the last saved point)"
        ) from None
    train_seconds = state.train_seconds  # this session's fitting plus the sessions before a resume
    if state.interrupted:
        log.write(f"stopped: {state.stop_reason} at epoch {state.epoch}, step {state.step}")
        where = (
            "the position is saved"
            if not dist.enabled
            else f"under torchrun it restarts from the end of epoch {state.epoch - 1}"
        )
        raise RunInterrupted(
            f"interrupted at epoch {state.epoch}, step {state.step}; {where}: continue with cnnlab train --resume {run_dir}"
        )
    if state.diverged:
        last = run_dir / "checkpoints" / "last.pt"
        kept = (
            f"the last good weights ({state.last_saved}) are in {last}"
            if state.last_saved
            else f"the last good weights are in {last}"
            if last.is_file()
            else "no checkpoint was written"
        )
        log.write(f"stopped: {state.stop_reason}")
        raise RunDiverged(f"{state.stop_reason}; {kept}. Lower the learning rate (--lr) or set train.clip_grad_norm")

    # Test with the weights of train.test_weights, read back from best.pt or last.pt: what
    # metrics.json reports is exactly what that file restores. In fp32 (whatever the training
    # precision), so re-evaluating the checkpoint anywhere gives the same figures.
    # Only rank 0 goes on: it scores the whole test and val parts (unsharded) and writes the report.
    if not dist.main:
        return RunResult(run_dir, {}, state, time.perf_counter() - t_start, main=False)
    test_weights = tc.test_weights
    if test_weights == "best" and "val" not in loaders:
        log.write(
            "test weights: the last epoch's (there is no validation part, and best.pt would be chosen by training accuracy)"
        )
        test_weights = "last"
    tested = load_checkpoint(run_dir / "checkpoints" / f"{test_weights}.pt")
    eval_model.load_state_dict(tested["model"])
    final = loaders if not dist.enabled else build_loaders(ds, cfg.data, tc, device, mean, std)
    metrics: dict[str, Any] = {}
    predictions: dict[str, Predictions] = {}
    for split in ("test", "val"):
        if split in final:
            predictions[split] = predict(eval_model, final[split], objective, tc.tta)
            metrics[split] = metrics_of(predictions[split], ds.classes, objective)
    late = {
        p: r for ld in [*loaders.values(), *final.values()] for p, r in ld.skipped.items()
    }  # found by decoding workers
    log_data_issues(log, sorted(late.items()), [])
    skipped = sorted(set(ds.skipped) | set(late.items()))
    metrics.update(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        test_weights=test_weights,
        tested_epoch=int(tested["epoch"]),
        stop_reason=state.stop_reason,
        train_seconds=round(train_seconds, 3),
        sessions=state.sessions,
        recoveries=state.recoveries,
        num_parameters=num_parameters(model),
        model=cfg.model.name,
        data=cfg.data.name,
        data_source=ds.source,
        seed=tc.seed,
        device=str(device),
        threads=torch.get_num_threads(),
        precision=policy.dtype,
        channels_last=policy.channels_last,
        precision_policy=policy.to_dict(),
        loss=objective.name,
        processes=dist.world,
        skipped_files=[
            {"path": printable(p), "reason": r} for p, r in skipped
        ],  # strict UTF-8 JSON, whatever the file names
    )
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 3)
    write_json(run_dir / "metrics.json", metrics)
    # imported here, after metrics.json: matplotlib's import (about 0.6 s) is not on the way to the results
    from cnnlab.report.build import ReportInputs, write_report
    from cnnlab.report.plots import plot_training_curves

    if not tc.report:
        plot_training_curves(run_dir)
    elif predictions:
        shown = "test" if "test" in predictions else "val"
        fig_loader = lambda s: make_loader(
            s,
            64,
            input_shape=ds.input_shape,
            preprocess=ds.preprocess,
            max_pixels=cfg.data.max_pixels,
            workers=0,
            mean=mean,
            std=std,
            device=device,
        )  # noqa: E731
        inputs = ReportInputs(
            eval_model,
            objective,
            list(ds.classes),
            getattr(ds, shown),
            shown,
            fig_loader,
            predictions[shown],
            list(ds.preprocess),
            ds.input_shape[0],
        )
        try:  # the run's results are written already: a figure that fails must not fail the run
            log.write(f"report: {write_report(run_dir, inputs)}", echo=False)
        except (CnnlabError, ValueError, RuntimeError) as e:
            log.write(
                f"warning: report.html was not written ({type(e).__name__}: {str(e).splitlines()[0][:160]}); cnnlab report {run_dir} tries again"
            )
    return RunResult(run_dir, metrics, state, metrics["total_seconds"])
