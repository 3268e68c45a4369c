"""NumPy pairs, as in the UW lab: <prefix>_features.npy with <prefix>_targets.npy.

The prefix names the part: one containing "train", "val"/"valid" or "test" (mnist_train_features.npy,
mnist_test_features.npy, ...). Features are (N, D) with D a square (D = H*W, one channel), (N, H, W),
(N, C, H, W) or (N, H, W, C) with C 1 or 3. Whole numbers in 0..255 become uint8 images; other
values are kept as float32, on their own scale. Class names come from classes.txt (one per line)
when present, else "0", "1", ... Read with allow_pickle=False: a .npy file cannot run code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import DataConfig
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import ArraySplit, Dataset, DataSource
from cnnlab.errors import DataError

MAX_UNNAMED_CLASSES = 10_000  # more classes than this without classes.txt: the labels are not class indices
PART_WORDS = (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test"))


def find_pairs(root: Path) -> dict[str, tuple[Path, Path]]:
    """{part: (features, targets)} for the *_features.npy files that have a *_targets.npy partner."""
    pairs: dict[str, tuple[Path, Path]] = {}
    for feat in sorted(root.glob("*_features.npy")):
        targ = feat.with_name(feat.name[: -len("_features.npy")] + "_targets.npy")
        if not targ.is_file():
            continue
        stem = feat.name.lower()
        part = next((p for word, p in PART_WORDS if word in stem), "train")
        if part in pairs:
            raise DataError(f"{root} has two {part} pairs ({pairs[part][0].name}, {feat.name}); keep one per part")
        pairs[part] = (feat, targ)
    return pairs


def _images(a: np.ndarray, path: Path) -> torch.Tensor:
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise DataError(
                f"{path}: {a.shape[1]} features per row is not a square image; save (N, H, W) or (N, C, H, W) arrays"
            )
        a = a.reshape(-1, 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise DataError(
            f"{path}: features of shape {a.shape} are not images; "
            "expected (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C)"
        )
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{path}: features of dtype {a.dtype} are not numbers")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise DataError(f"{path}: features hold NaN or infinite values; clean them before training")
    if np.issubdtype(a.dtype, np.integer) or np.array_equal(a, np.round(a)):
        if a.size and (a.min() < 0 or a.max() > 255):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _load(path: Path) -> np.ndarray:
    """The array of a .npy file, its header checked before any data is read or allocated: real
    numbers only (no complex, object or text), and a shape whose bytes the file actually holds (a
    128-byte file cannot make numpy allocate the terabyte its header claims)."""
    try:
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(
                    f
                )  # the parser np.load itself uses (3.0 differs only in the text's encoding)
            except (OSError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001  numpy parses the header text with Python's tokenizer: a mangled one
                # raises tokenize.TokenError or SyntaxError, not only ValueError (tests/corpus/npy)
                raise DataError(
                    f"refusing {path}: not a .npy header numpy can read ({type(e).__name__}: {str(e)[:100]})"
                ) from None
            offset, size = f.tell(), path.stat().st_size
        if dtype.kind not in "biuf":
            raise DataError(f"refusing {path}: dtype {dtype} is not real numbers; save integer or float arrays")
        claimed = math.prod(shape) * dtype.itemsize
        if claimed != size - offset:
            raise DataError(
                f"refusing {path}: its header claims a {'x'.join(map(str, shape)) or 'scalar'} {dtype} array "
                f"({claimed:,} bytes) but the file holds {size - offset:,}; it is truncated or corrupt"
            )
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"refusing {path}: {e}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _class_names(path: Path) -> list[str]:
    """classes.txt: one name per line, UTF-8 (whatever the locale says)."""
    try:
        return [c.strip() for c in path.read_text(encoding="utf-8").splitlines() if c.strip()]
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start}); save the class names as UTF-8, one per line"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None


class NumpyPairsSource(DataSource):
    name = "npy"
    needs_root = True
    layout = "<prefix>_features.npy with <prefix>_targets.npy, one pair per part (train, val, test)"

    def matches(self, root: Path) -> Path | None:
        return root if root.is_dir() and find_pairs(root) else None

    def load(self, cfg: DataConfig) -> Dataset:
        if cfg.root is None:
            raise DataError(f"the npy dataset needs --data PATH: a folder holding {self.layout}")
        folder = self.root_folder(cfg)
        pairs = find_pairs(folder)
        if "train" not in pairs:
            raise DataError(f"{folder} has no training pair (a *train*_features.npy with its *_targets.npy)")
        splits = {}
        for part, (feat, targ) in pairs.items():
            labels = _load(targ)
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if (
                labels.ndim != 1
                or not np.issubdtype(labels.dtype, np.number)
                or not np.array_equal(labels, np.round(labels))
            ):
                raise DataError(
                    f"{targ}: targets must be one whole-number class index per row, "
                    f"got shape {labels.shape} {labels.dtype}"
                )
            splits[part] = ArraySplit(_images(_load(feat), feat), torch.from_numpy(labels.astype(np.int64)))
        if len(splits["train"]) == 0:
            raise DataError(f"{pairs['train'][0]} holds no rows")
        names_file = folder / "classes.txt"
        k = 1 + max(int(s.labels.max()) for s in splits.values() if len(s))
        if k > MAX_UNNAMED_CLASSES and not names_file.is_file():
            raise DataError(
                f"{folder}: labels run up to {k - 1}; number the classes 0..K-1, "
                "or name them in classes.txt (one per line)"
            )
        classes = _class_names(names_file) if names_file.is_file() else [str(i) for i in range(k)]
        return Dataset(splits["train"], splits.get("test"), classes, source=str(folder), val=splits.get("val"))


DATASETS.register("npy")(NumpyPairsSource())
