"""The checkpoint contract: what checkpoints/*.pt hold, how they are written (atomically), read (with
`weights_only=True`: no pickled code runs), checked (validate_checkpoint, for every reader) and restored
(restore_training, resume_config: an exact continuation of a run folder)."""

from __future__ import annotations

import math
import pickle
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.config import RunConfig, apply_overrides, check_preprocess, config_from_dict, flatten
from cnnlab.engine.state import FitState
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run_folder import atomic_write, read_metrics

FORMAT = "cnnlab-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the random streams rng_state() saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **content: Any) -> None:
    """Save `content` (state dicts, epoch, config, ...) plus format tags and RNG states, atomically."""
    payload = {"format": FORMAT, "version": VERSION, "rng": rng_state(), **content}
    atomic_write(Path(path), lambda f: torch.save(payload, f), mode="wb")


def _first_line(e: BaseException, default: str) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else default


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a cnnlab checkpoint safely; anything else (or pickled code) is refused with a CnnlabError."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist; give a run folder's checkpoints/best.pt")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # torch.save's zip, or a legacy pickle
        raise CnnlabError(f"{path} is not a checkpoint file; give a run folder or its checkpoints/best.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on TorchScript archives: the error below says it in one line
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True stopped at a pickled object that is not a tensor or a plain value: loading
        # it could run code, so it is never loaded
        raise CnnlabError(
            f"refusing {path}: it holds more than weights (pickled objects, which could run code when loaded); "
            "cnnlab reads only the checkpoints cnnlab train writes"
        ) from None
    except MemoryError:  # a storage size that claims more than there is
        raise CnnlabError(
            f"cannot read checkpoint {path}: it claims more memory than this machine has; it is corrupt"
        ) from None
    except Exception as e:  # noqa: BLE001  torch.load's errors on mangled bytes are of many kinds (TypeError from the
        # weights-only unpickler: tests/corpus/checkpoints); none is the program's fault
        kind = "TorchScript" if "TorchScript" in str(e) else _exported_program(path)
        if kind:
            raise CnnlabError(
                f"{path} is an exported {kind} model, not a training checkpoint; give the run folder or its "
                f"checkpoints/best.pt"
            ) from None
        raise CnnlabError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_first_line(e, type(e).__name__)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint; give a run folder's checkpoints/best.pt")
    return payload


def _exported_program(path: Path) -> str:
    """'torch.export (.pt2)' where `path` is the zip torch.export.save writes (it has an archive_format
    entry, and no data.pkl for torch.load to find), else ''."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return "torch.export (.pt2)" if any(n.endswith("/archive_format") for n in z.namelist()) else ""
    except Exception:  # noqa: BLE001  mangled bytes raise many kinds here (UnicodeDecodeError, ...): not an export
        return ""


MAX_INPUT_CHANNELS = 64  # a model's input, as a checkpoint may claim it (cnnlab's data gives 1 or 3)
MAX_INPUT_PIXELS = 40_000_000  # data.max_pixels' default: no image a run was trained on is larger


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """The fields a rebuilt model is fed by (those `ckpt` holds), checked before they are used: a
    checkpoint edited by hand gets a line naming the field, not a torch error later."""

    def bad(field: str, why: str) -> CnnlabError:
        return CnnlabError(f"{path}: its {field} {why}; it was not written by cnnlab train, or was edited")

    if "input_shape" in ckpt:
        _check_shape(ckpt["input_shape"], bad)
    if "classes" in ckpt:
        classes = ckpt["classes"]
        if not (isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes)):
            raise bad("classes", "are not a list of names")
    if "model" in ckpt:
        if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
            raise bad("model", "is not a state_dict of tensors")
    if "normalization" in ckpt and "input_shape" in ckpt:
        _check_normalization(ckpt["normalization"], ckpt["input_shape"], bad)
    try:
        check_preprocess(ckpt.get("preprocess", []))
    except CnnlabError as e:
        raise bad("preprocess", f"is not valid ({e})") from None


def _check_shape(shape: Any, bad: Callable[[str, str], CnnlabError]) -> None:
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise bad("input_shape", f"is {shape!r}, not [C, H, W]")
    if (
        shape[0] > MAX_INPUT_CHANNELS
        or shape[1] * shape[2] > MAX_INPUT_PIXELS
        or shape[0] * shape[1] * shape[2] > 3 * MAX_INPUT_PIXELS
    ):  # the dry run would allocate it
        raise bad(
            "input_shape",
            f"is {shape!r}, over {MAX_INPUT_CHANNELS} channels, {MAX_INPUT_PIXELS:,} pixels "
            f"or {3 * MAX_INPUT_PIXELS:,} values",
        )


def _check_normalization(norm: Any, shape: list[int], bad: Callable[[str, str], CnnlabError]) -> None:
    try:
        mean = torch.as_tensor(norm["mean"], dtype=torch.float32)
        std = torch.as_tensor(norm["std"], dtype=torch.float32)
        value_max = float(norm.get("value_max", 255.0))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        raise bad("normalization", "has no numeric mean, std and value_max") from None
    fits = tuple(mean.shape) in ((shape[0],), tuple(shape)) and mean.shape == std.shape
    finite = bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()) and math.isfinite(value_max)
    if not fits or not finite or value_max <= 0 or not bool((std > 0).all()):
        raise bad(
            "normalization",
            f"does not fit {shape[0]} channel(s) (mean {tuple(mean.shape)}, std {tuple(std.shape)}, "
            "finite, std > 0, value_max > 0)",
        )


REQUIRED = ("config", "classes", "model", "input_shape", "normalization")  # what inference rebuilds a model from
RESUME_REQUIRED = (*REQUIRED, "fit", "optimizer", "rng")  # and the training state a resume puts back


def validate_checkpoint(ckpt: dict[str, Any], path: Path, required: tuple[str, ...] = REQUIRED) -> None:
    """The one check of a loaded checkpoint, for every reader: inference (load_run: REQUIRED),
    resume (RESUME_REQUIRED, after its own check for a checkpoint from before the training state) and
    --init-from (the weights; the classes where it has them). A missing field, or one of the wrong
    kind or size, is a CnnlabError naming it."""
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CnnlabError(f"{path} lacks {', '.join(missing)}; it was not written by cnnlab train")
    _check_fields(ckpt, path)
    if "fit" in required:
        lacking = [k for k in (*FIT_SAVED, "progress") if k not in ckpt["fit"]]
        if lacking or not all(isinstance(ckpt["fit"][k], int) for k in ("epoch", "step", "epochs")):
            what = f"lacks {', '.join(lacking)}" if lacking else "has an epoch, step or epochs that is not a number"
            raise CnnlabError(f"{path}: its fit state {what}; it was not written by cnnlab train, or was edited")


def init_from(model: torch.nn.Module, source: str | Path, classes: list[str]) -> str:
    """Load the weights of one of our runs (a run folder or a checkpoint) into `model`.

    The body must match tensor for tensor (same model, same input channels); anything else is an
    error naming what differs. The head (engine/optim.head_module) is loaded only where that run had
    the same classes in the same order; otherwise it keeps its fresh initialisation. Returns a line
    saying what was loaded.
    """
    from cnnlab.engine.optim import head_module

    path = Path(source)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(path)
    validate_checkpoint(ckpt, path, required=("model",))
    state, mine = ckpt["model"], model.state_dict()
    head = head_module(model)
    prefix = next((f"{n}." for n, m in model.named_modules() if m is head), "\0")

    def in_head(key: str) -> bool:
        return key.startswith(prefix)

    problems = [f"{k}: not in that run" for k in mine if k not in state and not in_head(k)]
    problems += [f"{k}: only in that run" for k in state if k not in mine and not in_head(k)]
    problems += [
        f"{k}: {tuple(state[k].shape)} there, {tuple(mine[k].shape)} here"
        for k in mine
        if k in state and not in_head(k) and state[k].shape != mine[k].shape
    ]
    if problems:
        raise CnnlabError(
            f"--init-from {source}: {len(problems)} tensor(s) of the body differ, e.g. {problems[0]}; use the same "
            f"model, spec and input channels as that run"
        )
    same_classes = list(ckpt.get("classes", [])) == list(classes)
    head_fits = all(k in state and state[k].shape == mine[k].shape for k in mine if in_head(k))
    keep = {k: v for k, v in state.items() if k in mine and (not in_head(k) or (same_classes and head_fits))}
    model.load_state_dict({**mine, **keep})
    if same_classes and head_fits:
        return f"initialised from {path}: all {len(keep)} tensors, the head included (the same {len(classes)} classes)"
    others = len(ckpt.get("classes", []))
    head = f"the head is new (that run had {others} other classes)"
    return f"initialised from {path}: the body's {len(keep)} tensors; {head}"


# --- what a training checkpoint holds, and how a run continues from it ---------------------------

FIT_SAVED = ("epochs", "epoch", "step", "lr", "epoch_lr", "history", "steps", "best_epoch", "best_score", "sessions")


def fit_state_dict(state: FitState) -> dict[str, Any]:
    """What a checkpoint keeps of the fit (tensors and plain values only: weights_only loads it)."""
    out = {k: getattr(state, k) for k in FIT_SAVED}
    out["recoveries"] = list(state.recoveries)
    out["progress"] = state.progress.to_dict() if state.progress is not None else None
    out["train_seconds"] = state.train_seconds
    return out


def fit_state_from(saved: dict[str, Any], steps_per_epoch: int, loader: dict[str, Any] | None) -> FitState:
    """The FitState fit_state_dict() saved, as a resumed session starts it (one session more)."""
    from cnnlab.engine.loop import EpochProgress

    state = FitState(**{k: saved[k] for k in FIT_SAVED}, steps_per_epoch=steps_per_epoch)
    state.history, state.steps = list(state.history), [list(r) for r in state.steps]
    state.recoveries = list(saved.get("recoveries", []))  # absent in checkpoints from before the guard
    state.progress = EpochProgress(**saved["progress"]) if saved.get("progress") else None
    state.loader = loader if state.progress is not None else None
    state.prior_seconds = float(saved.get("train_seconds", 0.0))
    state.sessions += 1
    return state


def resume_position(state: FitState) -> tuple[int, dict[str, Any] | None]:
    """(the first epoch to run, the train loader's position inside it or None): a state saved
    inside an epoch goes on in that epoch from its loader position, else at the next epoch."""
    if state.progress is not None:
        return state.epoch, state.loader
    return state.epoch + 1, None


@dataclass
class CheckpointedParts:
    """The objects of a run whose state a checkpoint saves and a resume puts back."""

    model: nn.Module  # the weights being trained
    eval_model: nn.Module  # the weights that are evaluated: the EMA's where there is one, else `model`
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch lr scheduler, or None
    scaler: Any  # torch.amp.GradScaler (fp16), or None
    ema: Any  # engine/ema.EMA, or None
    guard: Any  # callbacks.DivergenceGuard
    train_loader: Any  # data/loader.BatchLoader: its position inside an epoch


@dataclass
class RunIdentity:
    """What a checkpoint says about the run it belongs to: enough to rebuild and feed its model."""

    config: dict[str, Any]
    classes: list[str]
    input_shape: list[int]
    preprocess: list
    normalization: dict[str, Any]  # mean, std, value_max: x_norm = (x / value_max - mean) / std
    objective: str
    policy: dict[str, Any]  # the precision and layout: a resumed run trains with the same


def training_snapshot(parts: CheckpointedParts, run: RunIdentity, s: FitState) -> dict[str, Any]:
    """Everything checkpoints/*.pt hold (save_checkpoint adds the format tags and random streams)."""
    ema = parts.ema
    return dict(
        model=parts.eval_model.state_dict(),  # the weights that are evaluated (the EMA's, where there is one)
        raw_model=parts.model.state_dict() if ema is not None else None,
        ema_n_averaged=int(ema.n_averaged) if ema is not None else None,
        optimizer=parts.optimizer.state_dict(),
        scheduler=parts.scheduler.state_dict() if parts.scheduler is not None else None,
        scaler=parts.scaler.state_dict() if parts.scaler is not None else None,
        loader=parts.train_loader.state_dict() if s.progress is not None else None,
        fit=fit_state_dict(s),
        epoch=s.epoch,
        step=s.step,
        score=s.best_score if s.best_epoch == s.epoch else None,
        config=run.config,
        classes=list(run.classes),
        input_shape=list(run.input_shape),
        preprocess=list(run.preprocess),
        normalization=run.normalization,
        objective=run.objective,
        policy=run.policy,
        # the divergence guard's last good point and level: a resumed run judges and rolls back alike
        guard=parts.guard.state_dict(),
    )


def restore_training(ckpt: dict[str, Any], parts: CheckpointedParts) -> FitState:
    """Put a run's saved training state back (weights, optimizer, schedule, scaler, EMA, guard, random
    streams) and return the FitState to continue from."""
    parts.model.load_state_dict(ckpt.get("raw_model") or ckpt["model"])
    # the implementation (fused or not) this torch and device take, not the saved run's: set before
    # loading, so the state (Adam's step count) is placed as that implementation wants it
    saved = ckpt["optimizer"]
    built = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in parts.optimizer.param_groups]
    if len(built) == len(saved["param_groups"]):  # else load_state_dict gives its own error
        saved = {**saved, "param_groups": [{**g, **impl} for g, impl in zip(saved["param_groups"], built)]}
    parts.optimizer.load_state_dict(saved)
    if parts.scheduler is not None and ckpt.get("scheduler") is not None:
        parts.scheduler.load_state_dict(ckpt["scheduler"])
    if parts.scaler is not None and ckpt.get("scaler") is not None:
        parts.scaler.load_state_dict(ckpt["scaler"])
    if parts.ema is not None:
        parts.ema.module.load_state_dict(ckpt["model"])
        parts.ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 0)))
    restore_rng(ckpt["rng"])
    if isinstance(ckpt.get("guard"), dict):  # absent in checkpoints from before the guard
        parts.guard.load_state_dict(ckpt["guard"])
    return fit_state_from(ckpt["fit"], len(parts.train_loader), ckpt.get("loader"))


# --- resuming a run folder ------------------------------------------------------------------------

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
    "train.mlflow",  # tracking only: a resume that turns it on logs the whole history (engine/tracking.py)
    "data.root",
    "data.workers",
    "data.download",
)


def _epochs_reported(run_dir: Path) -> int | None:
    """epochs_run of the run's metrics.json (written when its test evaluation finished), or None."""
    try:
        return read_metrics(run_dir).get("epochs_run")
    except CnnlabError:
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
            f"--resume {run_dir}: its last.pt was written by an older cnnlab without the training state; start a new "
            f"run (--init-from {run_dir} keeps the weights)"
        )
    validate_checkpoint(ckpt, last, RESUME_REQUIRED)
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
            f"--resume {run_dir}: {k} is {old.get(k)!r} in that run and {new[k]!r} here, which {why}; resume without "
            f"it, or start a new run (--init-from {run_dir} keeps the weights)"
        )
    done = ckpt["fit"]["epoch"] - (1 if ckpt["fit"].get("progress") else 0)
    finished = not ckpt["fit"].get("progress") and _epochs_reported(run_dir) == ckpt["fit"]["epoch"]
    if cfg.train.epochs < done or (cfg.train.epochs == done and finished):
        raise ConfigError(
            f"--resume {run_dir}: that run has finished {done} epoch(s) of {saved.train.epochs}; give --epochs N with "
            f"N above {done} to train more"
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


def check_resumed_data(ckpt: dict[str, Any], now: RunIdentity, run_dir: Path) -> None:
    """A resumed run's data must be the data it was trained on, wherever it now lies (data.root may
    change): the same class names in the same order, input shape and normalisation. Other names in
    the same count would train on silently, and the checkpoints would then carry the new names."""
    saved_norm = ckpt.get("normalization") or {}
    pairs = [
        ("class names", list(ckpt.get("classes", [])), list(now.classes)),
        ("input shape", list(ckpt.get("input_shape", [])), list(now.input_shape)),
        ("normalisation mean", _rounded(saved_norm.get("mean", [])), _rounded(now.normalization["mean"])),
        ("normalisation std", _rounded(saved_norm.get("std", [])), _rounded(now.normalization["std"])),
    ]
    for what, old, new in pairs:
        if old != new:
            show = (
                (lambda v: f"{len(v)} ({', '.join(map(str, v[:4]))}{', ...' if len(v) > 4 else ''})")
                if what == "class names"
                else str
            )
            raise ConfigError(
                f"--resume {run_dir}: the data differs from the run's: {what} {show(old)} there, {show(new)} here; "
                f"resume on the same data, or start a new run (--init-from {run_dir} keeps the weights)"
            )
