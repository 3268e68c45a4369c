"""From a loaded Dataset to the loaders a run iterates: normalisation statistics and batching."""

from __future__ import annotations

from typing import Any

import torch

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.augment import AugmentParams
from cnnlab.data.base import ArraySplit, Dataset
from cnnlab.data.loader import BatchLoader, make_loader
from cnnlab.data.normalize import compute_stats, value_scale


def dataset_value_max(ds: Dataset) -> float:
    """What one pixel unit is worth: 255 for uint8 images (memory or files), 1 for float arrays."""
    return value_scale(ds.train.images) if isinstance(ds.train, ArraySplit) else 255.0


def normalization_stats(ds: Dataset, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of `cfg.normalize` for the training part of `ds`."""
    channels = ds.input_shape[0]  # type: ignore[index]

    def file_batches():
        plain = make_loader(
            ds.train,
            256,
            input_shape=ds.input_shape,
            preprocess=ds.preprocess,
            max_pixels=cfg.max_pixels,
            workers=cfg.workers,
            mean=[0.0] * channels,
            std=[1.0] * channels,
        )
        return (x for x, _ in plain)

    return compute_stats(cfg.normalize, ds.train, channels, file_batches, cache_key=repr((ds.preprocess, channels)))


def build_loaders(
    ds: Dataset,
    data: DataConfig,
    train: TrainConfig,
    device: torch.device,
    mean: Any,
    std: Any,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, BatchLoader]:
    """train (shuffled, augmented), and val and test loaders for the splits that exist.

    `shard` is (rank, world) under torchrun: train.batch_size stays the global batch, each process
    takes batch_size / world images of it; evaluation splits each part into world chunks."""
    world = shard[1]
    value_max = dataset_value_max(ds)
    common: dict[str, Any] = dict(
        input_shape=ds.input_shape,
        preprocess=ds.preprocess,
        max_pixels=data.max_pixels,
        workers=data.workers,
        mean=mean,
        std=std,
        device=device,
        channels_last=train.channels_last is True,
        value_max=value_max,
        shard=shard,  # auto: the run resolves it first
    )
    # float arrays keep their own scale: no range to clamp the colour jitter to
    clamp = value_max if value_max == 255.0 else None
    params = AugmentParams(
        translate=data.translate,
        rotate=data.rotate,
        jitter=data.jitter,
        crop_scale=data.crop_scale,
        cutout=data.cutout,
        value_max=clamp,
        randaugment_n=data.randaugment_n,
        randaugment_m=data.randaugment_m,
        autoaugment_policy=data.autoaugment_policy,
        erasing_p=data.erasing_p,
    )
    loaders = {
        "train": make_loader(
            ds.train,
            train.batch_size // world,
            shuffle=data.shuffle,
            augment=data.augment,
            augment_params=params,
            sampler=data.sampler,
            drop_last=len(ds.train) > train.batch_size or world > 1,
            seed=train.seed,
            **common,
        )
    }
    for name in ("val", "test"):
        split = getattr(ds, name)
        if split is not None:
            loaders[name] = make_loader(split, train.eval_batch_size, **common)
    return loaders
