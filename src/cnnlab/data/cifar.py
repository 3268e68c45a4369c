"""CIFAR-10 in its Python layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}.

Read with a restricted unpickler rather than torchvision.datasets.CIFAR10: torchvision calls plain
pickle.load, which runs whatever code a crafted batch file holds, and it refuses any copy whose MD5
differs from the official archive's (so no fixture or re-packed copy loads).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import DataConfig
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import ArraySplit, Dataset, DataSource
from cnnlab.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
LOCAL_ROOT = Path("data")

# What a CIFAR batch pickle may refer to: numpy arrays and their dtypes, nothing that runs code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


PLAIN_KINDS = "biuf"  # bool, signed, unsigned, float: the only dtypes a CIFAR batch needs


def _plain_scalar(dtype: Any, *args: Any) -> Any:
    """numpy's scalar(), for number dtypes only: scalar(dtype('O'), 8 bytes) takes the bytes for a
    pointer to a Python object and crashes the process (found by tests/test_fuzz.py)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_KINDS or dtype.hasobject:
        raise pickle.UnpicklingError("refusing a scalar that is not a plain number")
    from numpy._core.multiarray import scalar

    return scalar(dtype, *args)


class _ArraysOnly(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler, restricted to numpy arrays of plain numbers, lists, dicts, bytes and
    text. Written over pickle's own because the restriction has to reach the BUILD opcode, which
    sets an object's state: a dtype whose state claims object references, or an array of objects,
    makes numpy read pickled bytes as pointers (a crash at best). C's Unpickler cannot check BUILD."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "scalar":
            return _plain_scalar
        return super().find_class(module, name)

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        # by kind, not by flags: a state can clear an object dtype's flags, and its bytes would still be read as
        # pointers
        if isinstance(inst, np.dtype):  # a plain number type: (3, byte order, None, None, None, -1, -1, 0)
            ok = (
                inst.kind in PLAIN_KINDS
                and isinstance(state, tuple)
                and len(state) >= 8
                and state[2:5] == (None, None, None)
                and state[7] == 0
            )
        elif isinstance(
            inst, np.ndarray
        ):  # (version, shape, dtype, fortran, the raw bytes; str: a Python 2 file read as latin1)
            dt = state[2] if isinstance(state, tuple) and len(state) == 5 else None
            ok = (
                isinstance(dt, np.dtype)
                and dt.kind in PLAIN_KINDS
                and not dt.hasobject
                and isinstance(state[4], (bytes, bytearray, str))
            )
        else:
            ok = False
        if not ok:
            raise pickle.UnpicklingError(
                f"refusing the state given to a {type(inst).__name__}: a CIFAR batch holds plain number arrays"
            )
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = load_build


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (the originals, from Python 2, have bytes keys)."""
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"refusing {path}: {e}; a CIFAR batch holds only arrays and lists") from None
    except MemoryError:  # a length field that claims more than there is (found by tests/test_fuzz.py)
        raise DataError(
            f"cannot read CIFAR batch {path}: it claims more memory than this machine has; "
            "replace it with an intact copy"
        ) from None
    except Exception as e:  # noqa: BLE001  the unpickler's errors on mangled bytes are of many kinds (KeyError, struct.error, ...)
        raise DataError(
            f"cannot read CIFAR batch {path}: {type(e).__name__}: {str(e)[:120]}; replace it with an intact copy"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (a pickled dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _numbers(value: Any, path: Path, key: str) -> np.ndarray:
    """`value` (an array or list from the batch) as whole numbers, or one line saying what it holds."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged lists
        raise DataError(f"{path}: '{key}' is not an array ({e})") from None
    if a.dtype.kind not in "iub":
        raise DataError(f"{path}: '{key}' holds {a.dtype} values, not whole numbers; is it a CIFAR-10 batch?")
    return a


def _split(paths: list[Path]) -> ArraySplit:
    images, labels = [], []
    for path in paths:
        batch = read_batch(path)
        if "data" not in batch or "labels" not in batch:
            raise DataError(f"{path} has no 'data' and 'labels'; is it a CIFAR-10 batch?")
        data, label = _numbers(batch["data"], path, "data"), _numbers(batch["labels"], path, "labels")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(
                f"{path}: data holds {data.min() if data.min() < 0 else data.max()}, outside the pixel range 0..255; "
                "replace it with an intact copy"
            )
        if label.ndim != 1 or len(label) != len(data) or (label.size and label.min() < 0):
            raise DataError(
                f"{path}: {len(label) if label.ndim == 1 else label.shape} labels for {len(data)} images, "
                "or a negative one; replace it with an intact copy"
            )
        images.append(
            data.astype(np.uint8).reshape(-1, 3, 32, 32)
        )  # each row: 1024 red, 1024 green, 1024 blue, row-major
        labels.append(label.astype(np.int64))
    return ArraySplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


class Cifar10Source(DataSource):
    name = "cifar10"
    layout = f"{FOLDER}/ with data_batch_1..5, test_batch and batches.meta"

    def matches(self, root: Path) -> Path | None:
        for folder in (root, root / FOLDER):
            if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
                return folder
        return None

    def find(self, cfg: DataConfig) -> Path | None:
        if cfg.root:
            return super().find(cfg)
        roots = [Path(p) for p in [os.environ.get("CNNLAB_DATA")] if p] + [LOCAL_ROOT]
        return next((f for f in map(self.matches, roots) if f is not None), None)

    def load(self, cfg: DataConfig) -> Dataset:
        folder = self.root_folder(cfg) if cfg.root else self.find(cfg)
        if folder is None and cfg.download:
            try:
                import torchvision.datasets as tvd

                tvd.CIFAR10(str(LOCAL_ROOT), download=True)
                folder = self.matches(LOCAL_ROOT)
            except Exception:  # no network here: say what to do below
                folder = None
        if folder is None:
            raise DataError(
                f"CIFAR-10 not found (looked in $CNNLAB_DATA and ./data for {FOLDER}/; no download here); "
                f"pass --data PATH to the folder holding {FOLDER}/"
            )
        missing = [n for n in TRAIN_BATCHES + ["test_batch", "batches.meta"] if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder} has no {missing[0]}; CIFAR-10 needs {self.layout}")
        meta = read_batch(folder / "batches.meta")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
        if not classes:
            raise DataError(f"{folder / 'batches.meta'} has no label_names")
        train, test = _split([folder / n for n in TRAIN_BATCHES]), _split([folder / "test_batch"])
        for name, part in (("training", train), ("test", test)):
            if len(part) and int(part.labels.max()) >= len(classes):
                raise DataError(
                    f"{folder}: a {name} label is {int(part.labels.max())}, but batches.meta names {len(classes)} "
                    "classes; replace the batches with intact copies"
                )
        return Dataset(train, test, classes, source=str(folder))


DATASETS.register("cifar10")(Cifar10Source())
