"""Checkpoints: written atomically, read back with `weights_only=True` (no pickled code runs)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.runs import atomic_write

FORMAT = "cnnlab-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CnnlabError(f"refusing {path}: it holds more than weights ({_first_line(e, 'unsafe content')})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CnnlabError(f"cannot read checkpoint {path}: {_first_line(e, type(e).__name__)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint; give a run folder's checkpoints/best.pt")
    return payload
