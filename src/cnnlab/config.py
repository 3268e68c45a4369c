"""Typed configs for every component, read from a recipe (YAML) and written beside the results.

A recipe is data: nested mappings whose keys are the fields below. `--set train.epochs=3` and the
CLI flags override single keys. The fully resolved `RunConfig` is saved as `config.yaml` in the run
folder, so rerunning that file gives the same run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from cnnlab.errors import ConfigError

DEFAULT_RECIPE = "fashion-mnist-fast"
# what train.adapt fits to the dataset (plan.py), and the keys that fix each part where they are set
# (--lr, --epochs, --set ...): a value the user gives is used as given
ADAPT_PARTS: dict[str, tuple[str, ...]] = {
    "batch": ("train.batch_size",),
    "lr": ("optim.lr",),
    "warmup": ("schedule.warmup_epochs", "schedule.name"),
    "epochs": ("train.epochs", "train.min_steps", "train.reference_images"),
    "augment": ("data.augment", "data.translate"),
}


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # a registered dataset (`cnnlab data list`)
    root: str | None = None  # a folder holding the files; None searches the usual places
    # Splits. A count (>= 1) or a fraction (< 1) of the images the dataset gives for training (for
    # a single folder: all of them). val is carved with the run's seed, test with split_seed.
    val_size: float = 0.1
    test_size: float = 0.2  # only where the dataset has no test part of its own
    split: str = "random"  # random | stratified (same class shares in every part) | first (val = the first N)
    split_seed: int = 0  # the test part of a single folder stays the same whatever the run's seed
    # how a fraction becomes a count: round (the nearest) | floor (int(), as the Hanoi report's code: on a
    # single folder, train int((1 - test - val) n), val int(val n), and the test part the rest)
    rounding: str = "round"
    given_limit: int | None = (
        None  # use N of the images the dataset gives for training, before val (and test) are carved from them
    )
    train_limit: int | None = None  # keep only the first N images of each part (subsets, quick runs)
    val_limit: int | None = None
    test_limit: int | None = None
    # What the model sees
    preprocess: list[dict[str, Any]] | None = (
        None  # e.g. [{resize: 256}, {center_crop: 224}]; [{center_crop: 32}] pads 28x28 arrays; None: auto
    )
    channels: int | None = None  # 1 or 3: convert images (grayscale <-> RGB); None keeps the dataset's
    attributes: str | int | list[Any] | None = None  # CelebA target: a name or index, or a list (multi-label)
    normalize: str = "auto"  # auto (train-split mean/std) | none | half | cifar10 | imagenet | standard-scaler
    # Training-time augmentation, applied to whole batches: a preset or ops joined by '+'
    augment: str = (
        "auto"  # auto (the dataset's own: no flips for digits) | a preset | ops joined by '+' (data/augment.py)
    )
    translate: int = 2  # max random shift in pixels (translate; for 32x32 CIFAR, 4 is the crop-with-padding 4)
    rotate: float = 15.0  # max rotation in degrees (rotate)
    jitter: float = 0.2  # brightness/contrast/saturation jitter strength (jitter)
    crop_scale: float = 0.35  # smallest area fraction kept by resized-crop
    cutout: int = 8  # side in pixels of the black square cutout blanks (cutout)
    # the policies trivialaugment, randaugment, autoaugment, random-erasing are torchvision's, one draw per image
    randaugment_n: int = 2  # ops applied one after the other to each image (randaugment's N)
    randaugment_m: int = 9  # the magnitude of every op, 0..30 (randaugment's M on torchvision's 31 steps)
    autoaugment_policy: str = "imagenet"  # the learned policy autoaugment draws from: imagenet | cifar10 | svhn
    erasing_p: float = (
        0.5  # the share of images random-erasing blanks a rectangle of (torchvision's and the paper's 0.5)
    )
    shuffle: bool = True  # a new order every epoch (the KTH default trains in file order: false)
    sampler: str = "shuffle"  # shuffle | balanced (classes drawn equally often)
    in_memory: bool | None = None  # image folders: decode all into memory; None: when it fits in 2 GiB
    workers: int | None = None  # DataLoader workers for data on disk; None: the number of CPUs, at most 8
    max_pixels: int = 40_000_000  # a larger image is refused as a decompression bomb
    download: bool = True  # try torchvision's download when no copy is found on disk


@dataclass
class ModelConfig:
    name: str = "fastnet"  # a registered model (`cnnlab models list`)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model's builder
    init_from: str | None = (
        None  # a run folder or checkpoint of ours: start from its weights (a new head if the classes differ)
    )


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | rmsprop
    lr: float = 0.2  # peak learning rate
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4  # L2, applied to conv/linear weights only (not BN or biases)
    body_lr_scale: float = 1.0  # the body's lr as a fraction of the head's (fine-tuning: e.g. 0.1)


@dataclass
class ScheduleConfig:
    name: str = "warmup-linear"  # warmup-linear | constant | step | cosine-restarts | one-cycle | plateau
    warmup_epochs: float = 0.5  # linear warm-up from 0 to the peak lr, in epochs (warmup-linear)
    final_lr_fraction: float = 0.0  # lr at the last step, as a fraction of the peak (warmup-linear, one-cycle)
    step_epochs: int = 10  # step: multiply the lr by gamma every step_epochs epochs
    gamma: float = 0.1
    restart_epochs: float = 10.0  # cosine-restarts: the first cycle's length in epochs (T_0)
    restart_mult: float = 1.0  # each cycle this many times longer than the last (T_mult)
    pct_start: float = 0.3  # one-cycle: the share of steps spent rising to the peak
    factor: float = 0.5  # plateau: multiply the lr by this when the monitored figure stalls
    patience: int = 3  # plateau: epochs without improvement before that
    min_lr: float = 1e-6  # plateau: never below this
    monitor: str = "val_loss"  # plateau: val_loss | val_accuracy


@dataclass
class TrainConfig:
    epochs: int = 4
    min_steps: int | None = None  # train at least this many optimizer steps: a small dataset gets more epochs
    reference_images: int | None = (
        None  # with adapt: the training-set size the epochs are for; n images train epochs * sqrt(reference / n)
        # (at most 100)
    )
    adapt: bool | list[str] = (
        False  # fit batch, lr, warmup, epochs, augment (all: true, or a list) to the dataset (plan.py); config.yaml
        # holds the results
    )
    batch_size: int = 256
    eval_batch_size: int = 256  # 256 evaluates faster than 1024 on the 2-core CPU (the activations stay in cache)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = (
        "auto"  # auto (on a CPU: bf16 where it is native and measured faster, else fp32; engine/precision.py)
        # | fp32 | bf16 | fp16 (with a loss scaler)
    )
    channels_last: bool | str = "auto"  # auto: where measured faster (engine/precision.py) | true | false
    threads: int | None = (
        None  # torch's CPU threads; None: the physical cores (hyperthreads not counted), shared among torchrun's
        # local processes
    )
    compile: bool = False  # torch.compile the model (slower on the 2-core CPU; may pay off on a GPU)
    deterministic: bool = False  # torch's deterministic algorithms only (CPU runs are repeatable without it)
    loss: str = (
        "auto"  # auto | cross-entropy | bce (binary or multi-label, on logits) | sigmoid-bce
        # (a Sigmoid model + BCELoss)
    )
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup's Beta(alpha, alpha); 0 is off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0 is off (with both, each batch picks one)
    ema: float | None = (
        None  # keep an exponential moving average of the weights with this decay (e.g. 0.999); it is what gets
        # evaluated and saved
    )
    tta: bool | str = (
        False  # evaluate on each image and its mirror image, averaged (not for digits or text); auto: when
        # training flips images
    )
    report: bool = (
        True  # draw plots/ and report.html at the end (false: plots/curves.png only; cnnlab report draws the
        # rest later)
    )
    tensorboard: bool = (
        False  # also write TensorBoard event files to RUN_DIR/tensorboard/ (needs the tensorboard package)
    )
    mlflow: bool = (
        False  # also log the run to MLflow (engine/tracking.py): MLFLOW_TRACKING_URI, else MLflow's default store in
        # the working folder (needs the mlflow-skinny or mlflow package)
    )
    checkpoint_steps: int | None = None  # also save last.pt inside epochs every N steps (exact resume from there)
    checkpoint_seconds: float | None = 120.0  # ... and every this many seconds of training
    class_weights: str | None = None  # auto: weigh each class's loss by its inverse frequency in train
    freeze_epochs: int = 0  # train only the (new) head for this many epochs, then everything
    clip_grad_norm: float | None = None  # clip the gradients' global L2 norm to this (the comprehensive report: 1.0)
    monitor: str = (
        "val_accuracy"  # what picks best.pt and drives early stopping: val_accuracy | val_loss
        # (train_* without a val split)
    )
    test_weights: str = (
        "best"  # the weights the test part scores: best (best.pt, by `monitor` on the validation part) | last
    )
    # (the end of training, as the reports tested); with no validation part, best means last, said in log.txt
    early_stopping: int | None = (
        None  # stop after this many epochs without a better `monitor` figure (the best is kept)
    )
    time_limit: float | None = None  # seconds of training; then stop, evaluate and write everything


def _one_component(name: Any) -> bool:
    """A run name is one path component inside runs/: never a way to another folder."""
    return (
        isinstance(name, str)
        and bool(name)
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
        and len(name) <= 200
    )


@dataclass
class RunConfig:
    name: str = DEFAULT_RECIPE  # names the run folder: runs/<name>-<n>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> RunConfig:
        """Check values that types alone do not catch; raise ConfigError naming the key."""
        # one list in a fixed order, so that of several wrong keys the same one is always reported
        checks = self._loop_checks() + self._data_checks() + self._extra_checks()
        for ok, key, value, want in checks:
            if not ok:
                raise ConfigError(f"{key} is {value!r}; it must be {want}")
        if self.data.preprocess is not None:
            check_preprocess(self.data.preprocess)
        return self

    def _loop_checks(self) -> list[tuple[bool, str, Any, str]]:
        """validate()'s checks of the run name, the training loop, the optimizer and the schedule."""
        t, o = self.train, self.optim
        return [
            (
                _one_component(self.name),
                "name",
                self.name,
                "one folder name (no /, \\, .. or leading dot): the run folder is runs/<name>-<n>",
            ),
            (t.epochs >= 1, "train.epochs", t.epochs, "at least 1"),
            (t.min_steps is None or t.min_steps >= 1, "train.min_steps", t.min_steps, "at least 1 or null"),
            (t.batch_size >= 1, "train.batch_size", t.batch_size, "at least 1"),
            (t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "at least 1"),
            (o.lr > 0, "optim.lr", o.lr, "positive"),
            (o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "zero or positive"),
            (o.body_lr_scale >= 0, "optim.body_lr_scale", o.body_lr_scale, "zero or positive"),
            (t.freeze_epochs >= 0, "train.freeze_epochs", t.freeze_epochs, "zero or positive"),
            (
                t.clip_grad_norm is None or t.clip_grad_norm > 0,
                "train.clip_grad_norm",
                t.clip_grad_norm,
                "positive or null",
            ),
            (t.monitor in ("val_accuracy", "val_loss"), "train.monitor", t.monitor, "val_accuracy or val_loss"),
            (t.test_weights in ("best", "last"), "train.test_weights", t.test_weights, "best or last"),
            (
                t.early_stopping is None or t.early_stopping >= 1,
                "train.early_stopping",
                t.early_stopping,
                "at least 1 or null",
            ),
            (
                self.schedule.monitor in ("val_loss", "val_accuracy"),
                "schedule.monitor",
                self.schedule.monitor,
                "val_loss or val_accuracy",
            ),
            (0 < self.schedule.factor < 1, "schedule.factor", self.schedule.factor, "in (0, 1)"),
            (0 < self.schedule.gamma <= 1, "schedule.gamma", self.schedule.gamma, "in (0, 1]"),
            (self.schedule.step_epochs >= 1, "schedule.step_epochs", self.schedule.step_epochs, "at least 1"),
            (
                self.schedule.restart_epochs > 0 and self.schedule.restart_mult >= 1,
                "schedule.restart_epochs/restart_mult",
                (self.schedule.restart_epochs, self.schedule.restart_mult),
                "positive and >= 1",
            ),
            (0 < self.schedule.pct_start < 1, "schedule.pct_start", self.schedule.pct_start, "in (0, 1)"),
        ]

    def _data_checks(self) -> list[tuple[bool, str, Any, str]]:
        """validate()'s checks of smoothing, the time limit, the data splits and loading, and train.adapt."""
        t, d = self.train, self.data
        return [
            (0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "in [0, 1)"),
            (t.time_limit is None or t.time_limit > 0, "train.time_limit", t.time_limit, "positive"),
            (d.val_size >= 0, "data.val_size", d.val_size, "a count >= 1 or a fraction in [0, 1)"),
            (d.test_size >= 0, "data.test_size", d.test_size, "a count >= 1 or a fraction in [0, 1)"),
            (d.rounding in ("round", "floor"), "data.rounding", d.rounding, "round or floor"),
            (d.split in ("random", "stratified", "first"), "data.split", d.split, "random, stratified or first"),
            (d.sampler in ("shuffle", "balanced"), "data.sampler", d.sampler, "shuffle or balanced"),
            (d.channels in (None, 1, 3), "data.channels", d.channels, "1, 3 or null"),
            (d.val_limit is None or d.val_limit >= 1, "data.val_limit", d.val_limit, "at least 1"),
            (d.max_pixels >= 1, "data.max_pixels", d.max_pixels, "at least 1"),
            (0 < d.crop_scale <= 1, "data.crop_scale", d.crop_scale, "in (0, 1]"),
            (d.rotate >= 0, "data.rotate", d.rotate, "zero or positive (degrees)"),
            (0 <= d.jitter < 1, "data.jitter", d.jitter, "in [0, 1)"),
            (d.workers is None or d.workers >= 0, "data.workers", d.workers, "zero or positive, or null"),
            (t.class_weights in (None, "auto"), "train.class_weights", t.class_weights, "auto or null"),
            (t.tta in (True, False, "auto"), "train.tta", t.tta, "true, false or auto (on when training flips images)"),
            (
                isinstance(t.adapt, bool) or (isinstance(t.adapt, list) and set(t.adapt) <= set(ADAPT_PARTS)),
                "train.adapt",
                t.adapt,
                f"true, false or a list of {', '.join(ADAPT_PARTS)}",
            ),
            (
                t.reference_images is None or t.reference_images >= 1,
                "train.reference_images",
                t.reference_images,
                "at least 1 or null",
            ),
            (
                t.channels_last in (True, False, "auto"),
                "train.channels_last",
                t.channels_last,
                "true, false or auto (where measured faster)",
            ),
        ]

    def _extra_checks(self) -> list[tuple[bool, str, Any, str]]:
        """validate()'s checks of augmentation, the data limits, precision, threads, mixing, EMA and checkpoints."""
        t, d = self.train, self.data
        return [
            (d.translate >= 0, "data.translate", d.translate, "zero or positive"),
            (d.cutout >= 0, "data.cutout", d.cutout, "zero or positive"),
            (d.randaugment_n >= 1, "data.randaugment_n", d.randaugment_n, "at least 1 (ops per image)"),
            (0 <= d.randaugment_m <= 30, "data.randaugment_m", d.randaugment_m, "a magnitude from 0 to 30"),
            (0 <= d.erasing_p <= 1, "data.erasing_p", d.erasing_p, "a probability from 0 to 1"),
            (
                d.autoaugment_policy in ("imagenet", "cifar10", "svhn"),
                "data.autoaugment_policy",
                d.autoaugment_policy,
                "imagenet, cifar10 or svhn",
            ),
            (d.train_limit is None or d.train_limit >= 1, "data.train_limit", d.train_limit, "at least 1"),
            (d.given_limit is None or d.given_limit >= 1, "data.given_limit", d.given_limit, "at least 1"),
            (d.test_limit is None or d.test_limit >= 1, "data.test_limit", d.test_limit, "at least 1"),
            (
                t.precision in ("auto", "fp32", "bf16", "fp16"),
                "train.precision",
                t.precision,
                "auto, fp32, bf16 or fp16",
            ),
            (
                t.threads is None or t.threads >= 1,
                "train.threads",
                t.threads,
                "at least 1 or null (the physical cores)",
            ),
            (
                t.mixup >= 0 and t.cutmix >= 0,
                "train.mixup/cutmix",
                (t.mixup, t.cutmix),
                "zero (off) or a positive Beta alpha",
            ),
            (t.ema is None or 0 < t.ema < 1, "train.ema", t.ema, "a decay in (0, 1) or null"),
            (
                t.checkpoint_steps is None or t.checkpoint_steps >= 1,
                "train.checkpoint_steps",
                t.checkpoint_steps,
                "at least 1 or null",
            ),
            (
                t.checkpoint_seconds is None or t.checkpoint_seconds > 0,
                "train.checkpoint_seconds",
                t.checkpoint_seconds,
                "positive or null",
            ),
        ]


PREPROCESS_STEPS = ("resize", "center_crop")


def check_preprocess(steps: Any) -> list[dict[str, Any]]:
    """The recipe's preprocess steps, checked: a list of {resize: SIZE} / {center_crop: SIZE}, SIZE a
    positive int (resize: the shorter side) or [h, w]. A ConfigError names the bad step."""
    if not isinstance(steps, list):
        raise ConfigError(
            f"data.preprocess must be a list of steps like [{{resize: 256}}, {{center_crop: 224}}], got {steps!r}"
        )
    for step in steps:
        ok = isinstance(step, dict) and len(step) == 1 and next(iter(step)) in PREPROCESS_STEPS
        size = next(iter(step.values())) if ok else None
        sizes = size if isinstance(size, list) else [size]
        if (
            not ok
            or not 1 <= len(sizes) <= 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
        ):
            raise ConfigError(
                f"data.preprocess step {step!r} is not {{resize: N}} or {{center_crop: N}} "
                "with N a positive whole number or [height, width]"
            )
    return steps


# --- reading and overriding ------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the field's type hint, converting int -> float where a float is wanted."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, key)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return list(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; people write learning rates that way.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")
    return value


def _from_dict(cls: type, values: Any, prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'the recipe'} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"in {prefix}" if prefix else "at the top of the recipe"
        raise ConfigError(f"unknown key {unknown[0]!r} {where}; known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested mappings; missing keys keep their defaults."""
    return _from_dict(RunConfig, values)


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy of `cfg` with dotted keys replaced, e.g. {"train.epochs": 3}.

    Where train.adapt fits parts of the recipe to the dataset, a part whose keys are overridden is no
    longer fitted (config.ADAPT_PARTS): `--lr 0.05` is 0.05 whatever the batch.
    A different model.name drops the recipe's model.kwargs (they were its own model's arguments);
    model.kwargs.* overrides then apply to the new model."""
    values = cfg.to_dict()
    if overrides.get("model.name", cfg.model.name) != cfg.model.name:
        values["model"]["kwargs"] = {}
    for dotted, value in overrides.items():
        node = values
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown key {dotted!r}; keys look like train.epochs or optim.lr")
            node = node[part]
        if parts[-1] not in node and not _is_open_mapping(parts[:-1]):
            raise ConfigError(f"unknown key {dotted!r}; keys look like train.epochs or optim.lr")
        node[parts[-1]] = value
    adapt = values["train"].get("adapt")
    if adapt and "train.adapt" not in overrides:  # what the user sets is not adapted
        kept = [p for p in ADAPT_PARTS if (adapt is True or p in adapt) and not set(overrides) & set(ADAPT_PARTS[p])]
        values["train"]["adapt"] = True if kept == list(ADAPT_PARTS) else kept
    return config_from_dict(values)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys ({"train": {"epochs": 3}} -> {"train.epochs": 3}); a model's
    kwargs stay one value."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_open_mapping(path: list[str]) -> bool:
    """Mappings whose keys are free (a model builder's keyword arguments)."""
    return path == ["model", "kwargs"]


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values are read as YAML scalars (3 -> int, 1e-3 -> float, true -> bool)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set train.epochs=3)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def recipe_dir() -> Path:
    return Path(str(resources.files("cnnlab") / "recipes"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def load_recipe(name_or_path: str | None = None) -> RunConfig:
    """Read a recipe by path or by name (a file in cnnlab's recipes folder). None reads the default."""
    name_or_path = name_or_path or DEFAULT_RECIPE
    path = Path(name_or_path)
    if not path.is_file():
        packaged = recipe_dir() / f"{name_or_path}.yaml"
        if not packaged.is_file():
            if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
                raise ConfigError(f"recipe file {name_or_path} does not exist; give a path to a .yaml file")
            raise ConfigError(f"unknown recipe {name_or_path!r}; known: {', '.join(recipe_names())}")
        path = packaged
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"recipe {path} is not valid YAML ({first})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {path} must be a mapping of keys (data:, model:, train:, ...)")
    values.setdefault("name", path.stem)
    values.pop("reproduce", None)  # the study around the recipe: cnnlab reproduce reads it (reproduce.py)
    return config_from_dict(values)
