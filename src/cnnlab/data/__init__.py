"""Datasets: registered loaders (name -> Dataset), and the validation split carved for a run."""

from __future__ import annotations

import torch

from cnnlab.config import DataConfig
from cnnlab.data.base import ArraySplit, Dataset
from cnnlab.errors import DataError
from cnnlab.registry import Registry

# A dataset builder takes the DataConfig and returns a Dataset with train and test (val None).
DATASETS: Registry = Registry("dataset")

from cnnlab.data import mnist_idx  # noqa: E402,F401  (registers mnist and fashion-mnist)


def val_count(val_size: float, n_train: int) -> int:
    """A count (>= 1) as given, or a fraction (< 1) of the training images, rounded."""
    return int(val_size) if val_size >= 1 else int(round(val_size * n_train))


def split_off_validation(train: ArraySplit, val_size: float, seed: int) -> tuple[ArraySplit, ArraySplit | None]:
    """A seeded random validation part of `train`; the rest stays training. (train, None) for 0."""
    n = len(train)
    k = val_count(val_size, n)
    if k == 0:
        return train, None
    if k >= n:
        raise DataError(f"data.val_size {val_size:g} leaves no training images out of {n}; use a smaller count or a fraction below 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # sorted, so each part keeps the file's order (and a fixed val_size keeps its images across runs)
    return train.subset(perm[k:].sort().values), train.subset(perm[:k].sort().values)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Read the dataset `cfg.name`, apply the limits, and carve the seeded validation split."""
    ds = DATASETS.get(cfg.name)(cfg)
    train, test = ds.train, ds.test
    if cfg.train_limit is not None:
        train = train.subset(slice(0, cfg.train_limit))
    if cfg.test_limit is not None:
        test = test.subset(slice(0, cfg.test_limit))
    train, val = split_off_validation(train, cfg.val_size, seed)
    return Dataset(train, test, ds.classes, ds.source, val=val)


__all__ = ["DATASETS", "ArraySplit", "Dataset", "load_dataset", "split_off_validation"]
