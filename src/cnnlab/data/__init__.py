"""Datasets: registered sources (name -> Dataset), layout detection, and the parts carved for a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cnnlab.config import DataConfig
from cnnlab.data.base import ArraySplit, DataSource, Dataset, FileSplit
from cnnlab.errors import DataError
from cnnlab.registry import Registry

# A source is called with the DataConfig and returns a Dataset (see data/base.py, DataSource).
DATASETS: Registry = Registry("dataset")

from cnnlab.data import mnist_idx  # noqa: E402,F401  (mnist, fashion-mnist)
from cnnlab.data import cifar, celeba, numpy_pairs, mnist5k  # noqa: E402,F401
from cnnlab.data import folder  # noqa: E402,F401

from cnnlab.data.splits import carve, class_counts  # noqa: E402


def detection_order() -> list[str]:
    """Registered sources, the specific layouts first and the generic ones (any image folder) last."""
    return sorted(DATASETS.registration_order(), key=lambda n: DATASETS.get(n).generic)


def detect(root: str | Path) -> str | None:
    """The name of the first source whose layout `root` holds, or None."""
    path = Path(root).expanduser()
    return next((n for n in detection_order() if DATASETS.get(n).matches(path) is not None), None)


def resolve_data(cfg: DataConfig) -> DataConfig:
    """`cfg` with the name of the layout --data PATH holds (where the named source does not read it)
    and augment=auto replaced by the dataset's own default.

    The resolved values go into config.yaml, so rerunning it reads the same way.
    """
    cfg = dataclasses.replace(cfg, name=_resolve_name(cfg))
    if cfg.augment == "auto":
        cfg = dataclasses.replace(cfg, augment=DATASETS.get(cfg.name).default_augment)
    return cfg


def _resolve_name(cfg: DataConfig) -> str:
    if cfg.root is None:
        return cfg.name
    path = Path(cfg.root).expanduser()
    if not path.is_dir() or DATASETS.get(cfg.name).matches(path) is not None:
        return cfg.name  # the source itself says what is wrong with a missing path
    found = detect(path)
    if found is None:
        raise DataError(f"no dataset found in {path}: it holds none of the layouts cnnlab reads ({', '.join(detection_order())}); 'cnnlab data list' shows what each expects")
    return found


def _limit(split, n: int | None):
    return split.subset(slice(0, n)) if split is not None and n is not None else split


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Read the dataset, carve test (where it has none) and validation parts, and apply the limits.

    The test part of a single folder is carved with cfg.split_seed, so it stays the same across the
    runs of a sweep; the validation part with the run's `seed`.
    """
    cfg = resolve_data(cfg)
    ds = DATASETS.get(cfg.name)(cfg)
    train, val, test = ds.train, ds.val, ds.test
    n_given = len(train)  # fractions are of the images the dataset gives for training
    if test is None:
        train, test = carve(train, cfg.test_size, n_given, cfg.split_seed, cfg.split)
        if test is None:
            raise DataError(f"{ds.source} has no test part and data.test_size is 0; give a test fraction or count")
    if val is None:
        train, val = carve(train, cfg.val_size, n_given, seed, cfg.split)
    train, val, test = _limit(train, cfg.train_limit), _limit(val, cfg.val_limit), _limit(test, cfg.test_limit)
    out = dataclasses.replace(ds, train=train, val=val, test=test, warnings=list(ds.warnings))
    k = len(ds.classes)
    for name, split in out.splits().items():
        empty = [ds.classes[i] for i, c in enumerate(class_counts(split, k).tolist()) if c == 0]
        if empty and name == "train" and len(empty) == k:
            raise DataError(f"the training part of {ds.source} has no images")
        if empty:
            out.warnings.append(f"the {name} part has no images of {len(empty)} class(es): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
    return out


__all__ = ["DATASETS", "ArraySplit", "DataSource", "Dataset", "FileSplit", "detect", "load_dataset", "resolve_data"]
