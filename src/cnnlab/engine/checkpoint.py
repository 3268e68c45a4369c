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


def init_from(model: torch.nn.Module, source: str | Path) -> str:
    """Load the weights of one of our runs (a run folder or a checkpoint) into `model`.

    Tensors whose name and shape match are copied; the head's may differ (another class count) and
    keep their fresh initialisation. Anything else that differs is an error naming it. Returns a
    line saying what was loaded.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    state = load_checkpoint(path)["model"]
    mine = model.state_dict()
    from cnnlab.engine.optim import head_parameters

    head_names = {n for n, p in model.named_parameters() if id(p) in head_parameters(model)}
    head_prefixes = {n.rsplit(".", 1)[0] for n in head_names}
    differ = [k for k in mine if k not in state or state[k].shape != mine[k].shape]
    body_differ = [k for k in differ if k.rsplit(".", 1)[0] not in head_prefixes]
    if body_differ:
        k = body_differ[0]
        got = tuple(state[k].shape) if k in state else "missing"
        raise CnnlabError(f"--init-from {source}: {len(body_differ)} tensor(s) of the body differ, e.g. {k}: {got} vs {tuple(mine[k].shape)}; use the same model and input channels as that run")
    model.load_state_dict({**mine, **{k: v for k, v in state.items() if k in mine and k not in differ}})
    fresh = f"; the head is new ({', '.join(differ)}: another class count)" if differ else ""
    return f"initialised from {path}: {len(mine) - len(differ)} of {len(mine)} tensors{fresh}"
