"""Datasets: registered sources (name -> Dataset), layout detection, and the parts carved for a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cnnlab.config import DataConfig

# imported to register their sources (mnist_idx: mnist and fashion-mnist); each takes DATASETS from
# data/_registry.py
from cnnlab.data import celeba, cifar, folder, mnist5k, mnist_idx, numpy_pairs  # noqa: F401
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import ArraySplit, Dataset, DataSource, FileSplit
from cnnlab.data.splits import carve, class_counts
from cnnlab.errors import ConfigError, DataError


def data_key(data: str) -> str:
    """The recipe key --data NAME|PATH sets: data.name for a registered dataset, else data.root (a folder)."""
    return "data.name" if data in DATASETS else "data.root"


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
        raise DataError(
            f"no dataset found in {path}: it holds none of the layouts cnnlab reads ({', '.join(detection_order())}); "
            "'cnnlab data list' shows what each expects"
        )
    return found


def part_sizes(cfg: DataConfig, n: int, carve_test: bool) -> tuple[float, float]:
    """(test_size, val_size) to carve from `n` given images: as configured, or with data.rounding
    floor, counts by int(): train int((1 - test - val) n) and val int(val n), the test part the rest
    (on 60,907 images at 0.2 / 0.1: 42,634 / 6,090 / 12,183, the Hanoi report's split)."""
    if cfg.rounding != "floor":
        return cfg.test_size, cfg.val_size
    val = cfg.val_size if cfg.val_size >= 1 else float(int(cfg.val_size * n))
    if not carve_test or cfg.test_size >= 1:  # the dataset's own test part, or a count
        return cfg.test_size, val
    train_share = round(1.0 - cfg.test_size - (cfg.val_size if cfg.val_size < 1 else 0.0), 12)
    train = int(train_share * n) if cfg.val_size < 1 else int(train_share * n) - int(val)
    return float(n - train - int(val)), val


def _limit(split, n: int | None, seed: int, method: str):
    """A subset of n images: the first n for split=first (the textbook's Subset(range(n))), else a
    seeded random (or stratified) draw, so a folder sorted by class keeps all its classes."""
    if split is None or n is None or n >= len(split):
        return split
    return carve(split, n, len(split), seed, method)[1]


def to_channels(split, channels: int | None):
    """An in-memory split with `channels` channels: gray repeated to RGB, RGB to luminance (ITU-R 601)."""
    if channels is None or not isinstance(split, ArraySplit) or split.images.shape[1] == channels:
        return split
    x = split.images
    if channels == 3:
        return ArraySplit(x.expand(-1, 3, -1, -1).contiguous(), split.labels)
    gray = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return ArraySplit(gray.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else gray, split.labels)


ARRAY_BYTES = 2 * 1024**3  # the most data.preprocess may make of in-memory arrays


def resize_arrays(split, steps: list):
    """An in-memory split through the preprocess steps, once, in chunks (torchvision's v2 transforms
    take (N, C, H, W)): e.g. [{center_crop: 32}] pads 28x28 digits to 32x32 with zeros."""
    if not steps or not isinstance(split, ArraySplit) or len(split) == 0:
        return split
    from cnnlab.data.images import preprocess_transform

    transform = preprocess_transform(steps)
    first = transform(split.images[:1])
    size = first.element_size() * first[0].numel() * len(split)
    if size > ARRAY_BYTES:
        raise ConfigError(
            f"data.preprocess {steps} makes {len(split)} images of {tuple(first.shape[1:])}: "
            f"{size / 1024**3:.1f} GiB in memory; choose a smaller size"
        )
    out = torch.empty((len(split), *first.shape[1:]), dtype=first.dtype)
    for i in range(0, len(split), 4096):
        out[i : i + 4096] = transform(split.images[i : i + 4096])
    return ArraySplit(out, split.labels)


def check_keys(cfg: DataConfig) -> None:
    """Refuse data keys the chosen source would silently ignore."""
    if cfg.attributes is not None and cfg.name != "celeba":
        raise ConfigError(
            f"data.attributes picks CelebA's target attribute; {cfg.name} has class labels, so leave it unset"
        )


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Read the dataset, carve test (where it has none) and validation parts, and apply the limits.

    The test part of a single folder is carved with cfg.split_seed, so it stays the same across the
    runs of a sweep; the validation part with the run's `seed`.
    """
    cfg = resolve_data(cfg)
    check_keys(cfg)
    ds = DATASETS.get(cfg.name)(cfg)
    train, val, test = ds.train, ds.val, ds.test
    train = _limit(train, cfg.given_limit, cfg.split_seed, cfg.split)  # before the carving: the parts share the N
    n_given = len(train)  # fractions are of the images the dataset gives for training
    if n_given == 0:
        raise DataError(
            f"{ds.source} has no training images that decode (cnnlab data check {ds.source} lists what is wrong)"
        )
    test_size, val_size = part_sizes(cfg, n_given, carve_test=test is None)
    if test is None:
        train, test = carve(train, test_size, n_given, cfg.split_seed, cfg.split)
        if test is None:
            raise DataError(
                f"data.test_size {cfg.test_size:g} of {n_given} images leaves an empty test part "
                f"({ds.source} has none of its own); give a larger fraction or a count"
            )
    if val is None:
        train, val = carve(train, val_size, n_given, seed, cfg.split)
    train = _limit(train, cfg.train_limit, cfg.split_seed, cfg.split)
    val = _limit(val, cfg.val_limit, cfg.split_seed, cfg.split)
    test = _limit(test, cfg.test_limit, cfg.split_seed, cfg.split)
    train, val, test = (to_channels(s, cfg.channels) for s in (train, val, test))
    shape = ds.input_shape if cfg.channels is None else (cfg.channels, *ds.input_shape[1:])  # type: ignore[index]
    preprocess = ds.preprocess
    if cfg.preprocess and not DATASETS.get(cfg.name).reads_files:  # files are resized as they are decoded; arrays here
        train, val, test = (resize_arrays(s, cfg.preprocess) for s in (train, val, test))
        shape, preprocess = (shape[0], *train.images.shape[2:]), list(cfg.preprocess)
    out = dataclasses.replace(
        ds, train=train, val=val, test=test, input_shape=shape, preprocess=preprocess, warnings=list(ds.warnings)
    )
    k = len(ds.classes)
    for name, split in out.splits().items():
        empty = [ds.classes[i] for i, c in enumerate(class_counts(split, k).tolist()) if c == 0]
        if empty and name == "train" and not ds.multilabel:
            out.warnings.append(
                f"no training images of class {', '.join(repr(c) for c in empty[:5])}"
                f"{' ...' if len(empty) > 5 else ''}: "
                "the model keeps an output it never learns; add images or remove the class"
            )
        elif empty:
            out.warnings.append(
                f"the {name} part has no images of {len(empty)} class(es): "
                f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}"
            )
    return out


__all__ = [
    "DATASETS",
    "data_key",
    "ArraySplit",
    "DataSource",
    "Dataset",
    "FileSplit",
    "detect",
    "load_dataset",
    "resolve_data",
]
