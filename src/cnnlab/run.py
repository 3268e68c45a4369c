"""A whole training run: data, model, fit, test evaluation with the best weights, and the run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.config import RunConfig, TrainConfig
from cnnlab.data import Dataset, load_dataset, resolve_data
from cnnlab.data.augment import parse_augment
from cnnlab.data.loader import BatchLoader, make_loader
from cnnlab.data.pipeline import build_loaders, dataset_value_max, normalization_stats
from cnnlab.engine.callbacks import (
    BestTracker,
    Callback,
    Checkpointer,
    DivergenceGuard,
    EarlyStopping,
    FreezeBody,
    HistoryWriter,
    ProgressBar,
    TensorBoardLogger,
    TimeLimit,
)
from cnnlab.engine.checkpoint import (
    CheckpointedParts,
    RunIdentity,
    check_resumed_data,
    init_from,
    load_checkpoint,
    restore_training,
    resume_config,
    training_snapshot,
)
from cnnlab.engine.device import autocast_factory, resolve_device, set_threads
from cnnlab.engine.distributed import Dist, env_world, init_distributed, shutdown
from cnnlab.engine.ema import EMA
from cnnlab.engine.fit import fit
from cnnlab.engine.loop import TrainStep
from cnnlab.engine.losses import LOSSES, Objective, Target, create_objective, model_outputs
from cnnlab.engine.mix import BatchMix
from cnnlab.engine.optim import create_optimizer, create_scheduler
from cnnlab.engine.precision import Choice, choose, model_signature
from cnnlab.engine.state import FitState
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
            "schedule plateau steps on a validation figure, and data.val_size is 0; give a validation part or another "
            "schedule"
        )
    if world > 1 and tc.freeze_epochs:
        raise ConfigError(
            "train.freeze_epochs changes which parameters train while DistributedDataParallel expects a fixed set; "
            "under torchrun leave it at 0"
        )
    if world > 1 and tc.batch_size % world:
        raise ConfigError(
            f"train.batch_size {tc.batch_size} is the global batch and must divide among the {world} processes; use a "
            f"multiple of {world}"
        )
    if tc.precision == "fp16" and device.type == "mps":
        raise ConfigError(
            "train.precision fp16 needs a loss scaler, which torch has for cuda and cpu only; use bf16 or fp32 on mps"
        )
    if tc.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard")
    if tc.mlflow:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "train.mlflow needs the MLflow client: pip install mlflow-skinny (or mlflow, which also has mlflow ui)"
            )
    if tc.deterministic and tc.compile:
        raise ConfigError("train.deterministic and train.compile together are not supported; choose one")


DIGITS = ("mnist", "mnist-5k")  # no mirror-image test-time augmentation: a mirrored digit is another digit or none


# Small images are fed to pretrained weights at SMALL_UPSCALE times their side (at least SMALL_MIN_SIDE,
# a multiple of 16), not blown up to the weights' 224: on 100 Fashion-MNIST images per class (28 px, seed 0),
# efficientnet_lite0 fine-tuned for 15 epochs scored 81.6% at 64 px, 87.0% at 96, 88.6% at 112 and 87.8% at
# 128, each step up in side costing its square in time (README: Models, the transfer table).
SMALL_UPSCALE = 4
SMALL_MIN_SIDE = 64


def weights_input_side(w: dict[str, Any], side: int) -> int | None:
    """The side images whose median shorter side is `side` are fed to pretrained weights `w` at: None
    for the weights' own resize and crop (images as large as their input / SMALL_UPSCALE, or larger)."""
    if side * SMALL_UPSCALE >= w["size"]:
        return None
    return max(SMALL_MIN_SIDE, round(side * SMALL_UPSCALE / 16) * 16)


def weights_data_defaults(cfg: RunConfig, w: dict[str, Any] | None) -> tuple[RunConfig, list[str]]:
    """Image files fed to pretrained timm weights (`w`, timm_zoo.data_defaults) where data.preprocess
    is left to cnnlab: at the weights' own input size and resize, or small images at a few times their
    own side (weights_input_side); and the log line that says so."""
    from cnnlab.data import DATASETS
    from cnnlab.data.folder import median_side

    source = DATASETS.get(cfg.data.name)
    if w is None or cfg.data.preprocess is not None or not source.reads_files:
        return cfg, []
    side = median_side(source.scan(cfg.data), cfg.data.max_pixels)
    fed = weights_input_side(w, side)
    if fed is None:
        steps = [{"resize": w["resize"]}, {"center_crop": w["size"]}]
        note = f"input from the pretrained weights' config: resize {w['resize']}, center crop {w['size']}"
    else:
        steps = [{"resize": fed}, {"center_crop": fed}]
        note = (
            f"input {fed}x{fed}: the images are small (median side {side} px), so they are resized to "
            f"{SMALL_UPSCALE}x their side, not to the pretrained weights' {w['size']} (data.preprocess sets another)"
        )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, preprocess=steps)), [note]


def weights_normalization(cfg: RunConfig, ds, w: dict[str, Any] | None) -> tuple[RunConfig, list[str]]:
    """ImageNet's mean/std for pretrained timm weights (`w`) that were trained with it, where
    data.normalize is auto and the images are RGB (the weights' statistics, not the data's)."""
    from cnnlab.data.normalize import IMAGENET_STATS

    if w is None or cfg.data.normalize != "auto" or ds.input_shape[0] != 3:
        return cfg, []
    if (tuple(round(v, 3) for v in w["mean"]), tuple(round(v, 3) for v in w["std"])) != IMAGENET_STATS:
        return cfg, [
            f"normalize: the data's own statistics (the weights' mean {w['mean']} and std {w['std']} are not a cnnlab "
            f"normalisation; data.normalize sets one)"
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
        steps = " then ".join(f"{k} {v}" for step in ds.preprocess for k, v in step.items())
        notes.insert(
            0, f"input {'x'.join(map(str, ds.input_shape))}: the images' sizes vary or are large, so each is {steps}"
        )
    if cfg.train.tta == "auto":  # mirror images at test time where training showed the model mirror images
        flips = "flip" in parse_augment(cfg.data.augment) and cfg.data.name not in DIGITS  # never digits
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tta=flips))
    model, objective = build_model(cfg, ds)
    source = next((m.pretrained_source for m in model.modules() if hasattr(m, "pretrained_source")), None)
    if source is not None:  # where the pretrained weights came from (timm_zoo, backbones)
        given = cfg.model.kwargs.get("pretrained")
        notes.append(f"weights: {given}" + (f", from {source}" if source != str(given) else ""))
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
    return Prepared(
        cfg, device, ds, model, objective, mean_t.tolist(), std_t.tolist(), notes + data_notes(cfg, ds, more_epochs)
    )


def build_model(cfg: RunConfig, ds: Dataset) -> tuple[nn.Module, Objective]:
    """The model for `ds` (its input, its classes through the objective's outputs), dry-run once on
    an image of the data's shape, and its objective."""
    target = Target(len(ds.classes), ds.train.labels.ndim == 2, ds.train)
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
    return model, objective


def data_notes(cfg: RunConfig, ds: Dataset, more_epochs: bool) -> list[str]:
    """The log's lines on epochs added for train.min_steps, and on IDX files read as which dataset."""
    tc, notes = cfg.train, []
    if more_epochs:
        notes.append(
            f"{len(ds.train):,} training images: {tc.epochs} epochs, for train.min_steps={tc.min_steps} optimizer "
            f"steps (at most {MAX_AUTO_EPOCHS} epochs; --epochs N trains exactly N)"
        )
    if cfg.data.root and cfg.data.name in ("mnist", "fashion-mnist"):
        other = "mnist" if cfg.data.name == "fashion-mnist" else "fashion-mnist"
        notes.append(
            f"reading the IDX files in {cfg.data.root} as {cfg.data.name} ({', '.join(ds.classes[:3])}, ...); "
            f"if they are {other}, add --set data.name={other}"
        )
    return notes


# --- a run --------------------------------------------------------------------------------------


def training_policy(prep: Prepared, dist: Dist, ckpt: dict[str, Any] | None) -> Choice:
    """The dtype and layout this run trains with (engine/precision.py): a resumed run keeps its own
    (an exact continuation); else rank 0 decides, probing the run's model where `auto` asks for it,
    and every process under torchrun takes its answer."""
    tc = prep.cfg.train
    if ckpt is not None:
        saved = ckpt.get("policy")
        if isinstance(saved, dict) and "dtype" in saved:
            return Choice.from_dict(saved)
        # a checkpoint from before the measured policy: the rule it was trained under (bf16 wherever oneDNN
        # said it could), so the continuation is exact
        old_auto = (
            prep.device.type == "cpu"
            and bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        ) or (prep.device.type == "cuda" and torch.cuda.is_bf16_supported())
        old_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and old_auto)
        dtype = "float16" if tc.precision == "fp16" else "bfloat16" if old_bf16 else "float32"
        return Choice(
            dtype, tc.channels_last is not False, "resumed a run from before the measured policy: its own precision"
        )
    answer: tuple[dict | None, str] = (None, "")
    if dist.main:
        try:  # rank 0's error reaches every process: none is left waiting in the broadcast
            shape = tuple(prep.ds.input_shape)
            signature = model_signature(prep.cfg.model.name, prep.cfg.model.kwargs, prep.objective.outputs)
            answer = (
                choose(
                    prep.device,
                    tc.precision,
                    tc.channels_last,
                    model=prep.model,
                    input_shape=shape,
                    batch=max(1, tc.batch_size // dist.world),
                    num_outputs=prep.objective.outputs,
                    signature=signature,
                ).to_dict(),
                "",
            )
        except Exception as e:  # the probe runs the user's model: any failure is reported, on every rank
            answer = (
                None,
                f"the precision probe failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                f"set train.precision and train.channels_last explicitly",
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
    prep = prepare(cfg, world)
    dist = init_distributed(prep.device)
    clean = False
    try:
        result = _train(
            prep,
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


@dataclass
class Session:
    """Where a run writes and how it reports: its folder, its log, the processes, its start."""

    run_dir: Path
    log: Any  # run_folder.RunLog on rank 0, _Quiet elsewhere
    dist: Dist
    t_start: float


@dataclass
class TrainingSetup:
    """The objects one fit trains with (build_training)."""

    tc: TrainConfig  # the run's train config, with the layout the precision policy chose
    policy: Choice
    loaders: dict[str, BatchLoader]
    step: TrainStep
    parts: CheckpointedParts  # what the checkpoints save and a resume puts back
    identity: RunIdentity  # what the checkpoints say about the run


def _train(
    prep: Prepared,
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
    """The stages of a run, in order: its folder and log, the precision policy, the training
    objects (restored from `ckpt` on a resume), the fit, the stop states, then on rank 0 the test of
    the chosen weights, metrics.json and the report."""
    set_determinism(prep.cfg.train.deterministic)
    identity = run_identity(prep)
    run_dir, notes = open_run_dir(dist, prep.cfg.name, out, resume, ckpt, identity, notes)
    session = Session(run_dir, start_log(run_dir, prep, dist, notes, resumed=resume is not None), dist, t_start)
    policy = training_policy(prep, dist, ckpt)
    if dist.main:
        session.log.write(f"precision: {policy.summary()}" + (" [cached]" if policy.cached else ""))
    setup = build_training(prep, session, policy, identity)
    state = restore_training(ckpt, setup.parts) if ckpt is not None else None
    state = run_fit(prep, setup, fit_callbacks(setup, session, progress, callbacks), state, session)
    raise_if_stopped(state, session)
    if not dist.main:
        return RunResult(run_dir, {}, state, time.perf_counter() - t_start, main=False)
    metrics, predictions = finish_run(prep, setup, state, session)
    write_run_report(prep, setup, session, predictions)
    track_results(prep, setup, session, metrics)
    return RunResult(run_dir, metrics, state, metrics["total_seconds"])


def set_determinism(deterministic: bool) -> None:
    """train.deterministic: torch's deterministic algorithms only (slower, the same on every run)."""
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def run_identity(prep: Prepared) -> RunIdentity:
    """What the run's checkpoints say about it (engine/checkpoint.RunIdentity); the precision policy
    is added once it is chosen (build_training)."""
    ds = prep.ds
    return RunIdentity(
        config=prep.cfg.to_dict(),
        classes=list(ds.classes),
        input_shape=list(ds.input_shape),
        preprocess=list(ds.preprocess),
        normalization={"mean": prep.mean, "std": prep.std, "value_max": dataset_value_max(ds)},
        objective=prep.objective.name,
        policy={},
    )


def open_run_dir(
    dist: Dist, name: str, out, resume: Path | None, ckpt, identity: RunIdentity, notes: list[str]
) -> tuple[Path, list[str]]:
    """(the run folder, the log's first lines): a new folder made by rank 0 and broadcast to every
    process; or, on a resume, the run's own folder, once its data is checked against the checkpoint
    and the half-written files of the stopped run are gone."""
    if resume is not None:
        check_resumed_data(ckpt, identity, resume)  # before anything in the folder is rewritten
        if dist.main:  # a kill mid-write left a full-size temporary file: the resumed run is the only writer here
            for folder in (resume, resume / "checkpoints"):
                for stale in remove_stale_temps(folder):
                    notes = [*notes, f"removed {stale.name}, a half-written file left by the stopped run"]
        return resume, notes
    made: tuple[str, str] = ("", "")
    if dist.main:
        try:
            made = (str(make_run_dir(out, name)), "")
        except CnnlabError as e:
            made = ("", str(e))
    made = dist.broadcast(made)  # the others wait for rank 0's folder, or its error
    if made[1]:
        raise ConfigError(made[1])
    return Path(made[0]), notes


def start_log(run_dir: Path, prep: Prepared, dist: Dist, notes: list[str], resumed: bool) -> Any:
    """The run's log.txt (rank 0; the others write nothing), with config.yaml and the first lines."""
    if not dist.main:
        return _Quiet()
    log = RunLog(run_dir / "log.txt")
    write_text(run_dir / "config.yaml", prep.cfg.to_yaml())
    for line in notes:
        log.write(line)
    if not resumed:
        log_data_issues(log, prep.ds.skipped, prep.ds.warnings)
    for note in prep.notes:
        log.write(note)
    if dist.enabled:
        tc = prep.cfg.train
        log.write(
            f"{dist.world} processes (torchrun): {tc.batch_size // dist.world} images per process per step, "
            f"global batch {tc.batch_size}; checkpoints at epoch ends only"
        )
    return log


def build_training(prep: Prepared, session: Session, policy: Choice, identity: RunIdentity) -> TrainingSetup:
    """The loaders, the model in its layout (wrapped for DDP and compile where asked), the optimizer,
    schedule, scaler, EMA, batch mixing, the training step and the divergence guard."""
    cfg, device, dist = prep.cfg, prep.device, session.dist
    tc = dataclasses.replace(cfg.train, channels_last=policy.channels_last)  # what the loaders and the model use
    loaders = build_loaders(prep.ds, cfg.data, tc, device, prep.mean, prep.std, shard=(dist.rank, dist.world))
    model = prep.model.to(device, memory_format=torch.channels_last if tc.channels_last else torch.contiguous_format)
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
    autocast = autocast_factory(device, amp_dtype)
    step = TrainStep(forward, optimizer, prep.objective, scheduler, autocast, tc.clip_grad_norm, scaler, mix, ema)
    every = max(20, len(loaders["train"]) // 4)
    guard = DivergenceGuard(model, optimizer, scheduler, log=session.log.write, every=every)
    eval_model = ema.module if ema is not None else model
    parts = CheckpointedParts(model, eval_model, optimizer, scheduler, scaler, ema, guard, loaders["train"])
    identity = dataclasses.replace(identity, policy=policy.to_dict())
    return TrainingSetup(tc, policy, loaders, step, parts, identity)


def fit_callbacks(setup: TrainingSetup, session: Session, progress, extra: Sequence[Callback]) -> list[Callback]:
    """The fit's callbacks, in the order they run (fit() puts a plateau schedule's tracker in front):
    the best-epoch tracker (early stopping and
    best.pt read it), the guard, freezing, the time limit, the caller's, then on rank 0 TensorBoard,
    the checkpoints, history.csv, the progress bar and MLflow, and early stopping last."""
    tc, dist = setup.tc, session.dist
    tracker = BestTracker(tc.monitor)
    callbacks: list[Callback] = [tracker, setup.parts.guard]
    if tc.freeze_epochs:
        callbacks.append(FreezeBody(setup.parts.model, tc.freeze_epochs))
    if tc.time_limit is not None:
        callbacks.append(TimeLimit(tc.time_limit))
    callbacks += list(extra)
    if dist.main:
        run_dir = session.run_dir
        if tc.tensorboard:
            callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))

        def snapshot(s: FitState) -> dict[str, Any]:
            return training_snapshot(setup.parts, setup.identity, s)

        every_steps, every_seconds = tc.checkpoint_steps, tc.checkpoint_seconds
        folder = run_dir / "checkpoints"
        callbacks += [
            Checkpointer(folder, snapshot, every_steps, every_seconds, inside_epochs=not dist.enabled, tracker=tracker),
            HistoryWriter(run_dir),
            ProgressBar(progress, session.log),
        ]
        if tc.mlflow:  # after the checkpoints: a resume logs the epochs last.pt has that MLflow lacks
            from cnnlab.engine.tracking import MlflowTracker  # only when asked: mlflow's import takes about 2 s

            callbacks.append(MlflowTracker(run_dir, setup.identity.config, session.log.write))
    if tc.early_stopping:
        callbacks.append(EarlyStopping(tc.early_stopping, tracker))
    return callbacks


def run_fit(prep: Prepared, setup: TrainingSetup, callbacks: list[Callback], state, session: Session) -> FitState:
    """fit() with the run's loaders and callbacks; Ctrl-C becomes RunInterrupted."""
    tc = setup.tc
    # validation in bf16 where training is (twice as fast); metrics.json's figures below are fp32
    val_autocast = setup.step.autocast if setup.policy.autocast_dtype == torch.bfloat16 else contextlib.nullcontext
    try:
        return fit(
            setup.step,
            setup.loaders["train"],
            setup.loaders.get("val"),
            epochs=tc.epochs,
            num_classes=len(prep.ds.classes),
            callbacks=callbacks,
            state=state,
            eval_model=setup.parts.eval_model,
            tta=tc.tta,
            monitor=tc.monitor,
            dist=session.dist,
            eval_autocast=val_autocast,
        )
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted; the files written so far are kept in {session.run_dir} "
            "(checkpoints/last.pt is the last saved point)"
        ) from None


def raise_if_stopped(state: FitState, session: Session) -> None:
    """A fit stopped by Ctrl-C or SIGTERM (RunInterrupted) or by divergence (RunDiverged), as an
    exception that says where the saved point is; a fit that ended otherwise passes."""
    run_dir, log = session.run_dir, session.log
    if state.interrupted:
        log.write(f"stopped: {state.stop_reason} at epoch {state.epoch}, step {state.step}")
        where = (
            "the position is saved"
            if not session.dist.enabled
            else f"under torchrun it restarts from the end of epoch {state.epoch - 1}"
        )
        raise RunInterrupted(
            f"interrupted at epoch {state.epoch}, step {state.step}; {where}: "
            f"continue with cnnlab train --resume {run_dir}"
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


def test_weights_choice(setup: TrainingSetup, log: Any) -> str:
    """train.test_weights, or last where there is no validation part (best.pt would then be chosen
    by training accuracy)."""
    if setup.tc.test_weights == "best" and "val" not in setup.loaders:
        log.write(
            "test weights: the last epoch's (there is no validation part, and best.pt would be chosen by "
            "training accuracy)"
        )
        return "last"
    return setup.tc.test_weights


def finish_run(prep: Prepared, setup: TrainingSetup, state: FitState, session: Session) -> tuple[dict[str, Any], dict]:
    """Test with the weights of train.test_weights, read back from best.pt or last.pt: what
    metrics.json reports is exactly what that file restores. In fp32 (whatever the training
    precision), so re-evaluating the checkpoint anywhere gives the same figures. Only rank 0 comes
    here: it scores the whole test and val parts (unsharded) and writes metrics.json."""
    ds, tc, log = prep.ds, setup.tc, session.log
    test_weights = test_weights_choice(setup, log)
    tested = load_checkpoint(session.run_dir / "checkpoints" / f"{test_weights}.pt")
    eval_model = setup.parts.eval_model
    eval_model.load_state_dict(tested["model"])
    final = setup.loaders
    if session.dist.enabled:  # the whole parts, not this process's shard
        final = build_loaders(ds, prep.cfg.data, tc, prep.device, prep.mean, prep.std)
    metrics: dict[str, Any] = {}
    predictions: dict[str, Predictions] = {}
    for split in ("test", "val"):
        if split in final:
            predictions[split] = predict(eval_model, final[split], prep.objective, tc.tta)
            metrics[split] = metrics_of(predictions[split], ds.classes, prep.objective)
    late = {path: r for ld in [*setup.loaders.values(), *final.values()] for path, r in ld.skipped.items()}
    log_data_issues(log, sorted(late.items()), [])  # found by decoding workers
    skipped = sorted(set(ds.skipped) | set(late.items()))
    metrics.update(run_facts(prep, setup, state, session, test_weights, int(tested["epoch"])))
    metrics["skipped_files"] = [{"path": printable(path), "reason": r} for path, r in skipped]  # strict UTF-8 JSON
    metrics["total_seconds"] = round(time.perf_counter() - session.t_start, 3)
    write_json(session.run_dir / "metrics.json", metrics)
    return metrics, predictions


def run_facts(
    prep: Prepared, setup: TrainingSetup, state: FitState, session: Session, test_weights: str, tested_epoch: int
) -> dict[str, Any]:
    """metrics.json's keys about the run itself, beside the figures (the metrics contract of the
    design notes, ../shared/DESIGN.md)."""
    cfg, policy = prep.cfg, setup.policy
    return dict(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        test_weights=test_weights,
        tested_epoch=tested_epoch,
        stop_reason=state.stop_reason,
        train_seconds=round(state.train_seconds, 3),  # this session's fitting plus the sessions before a resume
        sessions=state.sessions,
        recoveries=state.recoveries,
        num_parameters=num_parameters(setup.parts.model),
        model=cfg.model.name,
        data=cfg.data.name,
        data_source=prep.ds.source,
        seed=setup.tc.seed,
        device=str(prep.device),
        threads=torch.get_num_threads(),
        precision=policy.dtype,
        channels_last=policy.channels_last,
        precision_policy=policy.to_dict(),
        loss=prep.objective.name,
        processes=session.dist.world,
    )


def write_run_report(prep: Prepared, setup: TrainingSetup, session: Session, predictions: dict) -> None:
    """plots/ and report.html, after metrics.json: a figure that fails warns and does not fail the run."""
    # imported here, after metrics.json: matplotlib's import (about 0.6 s) is not on the way to the results
    from cnnlab.report.build import ReportInputs, write_report
    from cnnlab.report.plots import plot_training_curves

    run_dir, ds, cfg = session.run_dir, prep.ds, prep.cfg
    if not setup.tc.report:
        plot_training_curves(run_dir)
        return
    if not predictions:
        return
    shown = "test" if "test" in predictions else "val"

    def fig_loader(split):
        return make_loader(
            split,
            64,
            input_shape=ds.input_shape,
            preprocess=ds.preprocess,
            max_pixels=cfg.data.max_pixels,
            workers=0,
            mean=prep.mean,
            std=prep.std,
            device=prep.device,
        )

    inputs = ReportInputs(
        setup.parts.eval_model,
        prep.objective,
        list(ds.classes),
        getattr(ds, shown),
        shown,
        fig_loader,
        predictions[shown],
        list(ds.preprocess),
        ds.input_shape[0],
        prep.mean,
        prep.std,
    )
    try:  # the run's results are written already: a figure that fails must not fail the run
        session.log.write(f"report: {write_report(run_dir, inputs)}", echo=False)
    except (CnnlabError, ValueError, RuntimeError) as e:
        session.log.write(
            f"warning: report.html was not written ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"cnnlab report {run_dir} tries again"
        )


def track_results(prep: Prepared, setup: TrainingSetup, session: Session, metrics: dict[str, Any]) -> None:
    """train.mlflow: metrics.json's figures and the run folder's files to the run's MLflow run, last of
    all (report.html and plots/ are among them); a failure warns and loses no result."""
    if setup.tc.mlflow:
        from cnnlab.engine.tracking import finish_mlflow_run

        finish_mlflow_run(session.run_dir, prep.cfg.name, metrics, session.log.write)
