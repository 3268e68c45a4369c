"""Checkpoints: written atomically, read back with `weights_only=True` (no pickled code runs)."""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.run_folder import atomic_write

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
        if "TorchScript" in str(e):
            raise CnnlabError(
                f"{path} is an exported TorchScript model, not a training checkpoint; give the run folder or its checkpoints/best.pt"
            ) from None
        raise CnnlabError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {_first_line(e, type(e).__name__)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint; give a run folder's checkpoints/best.pt")
    return payload


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
            f"--init-from {source}: {len(problems)} tensor(s) of the body differ, e.g. {problems[0]}; use the same model, spec and input channels as that run"
        )
    same_classes = list(ckpt.get("classes", [])) == list(classes)
    head_fits = all(k in state and state[k].shape == mine[k].shape for k in mine if in_head(k))
    keep = {k: v for k, v in state.items() if k in mine and (not in_head(k) or (same_classes and head_fits))}
    model.load_state_dict({**mine, **keep})
    if same_classes and head_fits:
        return f"initialised from {path}: all {len(keep)} tensors, the head included (the same {len(classes)} classes)"
    return f"initialised from {path}: the body's {len(keep)} tensors; the head is new (that run had {len(ckpt.get('classes', []))} other classes)"
