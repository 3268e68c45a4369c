"""Normalisation statistics, registered by name: x_normalised = (x / value_scale - mean) / std.

value_scale is 255 for uint8 images (so the statistics are on the [0, 1] scale, as torchvision's
ToTensor gives) and 1 for float images. mean and std are per channel, shape (C,), or per pixel,
shape (C, H, W) for the standard scaler.

Every statistic comes from the training part only. The UW lab fits its StandardScaler on the test
set separately; we do not, because then the test images would shape their own preprocessing (a
leak), and one image at prediction time could not be normalised at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.base import ArraySplit, Split
from cnnlab.errors import ConfigError
from cnnlab.registry import Registry
from cnnlab.text import fs_bytes

Stats = tuple[torch.Tensor, torch.Tensor]  # (mean, std), each (C,) or (C, H, W)
NORMALIZATIONS: Registry = Registry("normalization")

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # the comprehensive report's figures
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def value_scale(images: torch.Tensor) -> float:
    return 255.0 if images.dtype == torch.uint8 else 1.0


def affine(mean: Any, std: Any, value_max: float = 255.0) -> Stats:
    """(scale, shift) with x_norm = (x / value_max - mean) / std = x * scale + shift, one fused
    multiply-add (torch.addcmul) per batch. mean/std are (C,) per channel or (C, H, W) per pixel;
    both results broadcast over (B, C, H, W)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    shape = (1, -1, 1, 1) if mean_t.ndim == 1 else (1, *mean_t.shape)
    return (1.0 / (value_max * std_t)).reshape(shape), (-mean_t / std_t).reshape(shape)


def channel_stats_of(batches: Callable[[], list[torch.Tensor] | object], channels: int) -> Stats:
    """Per-channel mean and std over an iterable of (B, C, H, W) float batches (already scaled)."""
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for x in batches():  # type: ignore[attr-defined]
        x = x.to(torch.float64)
        total += x.sum((0, 2, 3))
        total_sq += x.square().sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


def uint8_channel_stats(images: torch.Tensor) -> Stats:
    """channel_stats_of for (N, C, H, W) uint8 images, from each channel's 256-bin histogram: exact
    integer sums, and about 10x faster than summing float64 copies (0.03 s against 0.4 s for
    Fashion-MNIST's 55,000 training images on the 2-core CPU)."""
    levels = torch.arange(256, dtype=torch.float64)
    n = images.shape[0] * images.shape[2] * images.shape[3]
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = (counts * levels).sum() / max(n, 1)
        var = (counts * (levels - mean).square()).sum() / max(n, 1)  # about the mean: no cancellation
        means.append(mean / 255.0)
        stds.append(var.sqrt().clamp_min(255e-6) / 255.0)
    return torch.stack(means).float(), torch.stack(stds).float()


def _array_batches(split: ArraySplit, chunk: int = 8192):
    scale = value_scale(split.images)
    return lambda: (split.images[i : i + chunk].to(torch.float64) / scale for i in range(0, len(split), chunk))


def cache_dir() -> Path:
    return Path(
        os.environ.get("CNNLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"
    )


def _file_split_stats(split: Split, channels: int, file_batches: Callable[[], object], cache_key: str) -> Stats:
    """Per-channel statistics of a split on disk: decoding it all takes a while, so they are cached,
    keyed by the file list (paths, sizes, times) and the preprocessing."""
    h = hashlib.sha256()
    for p in split.paths:  # type: ignore[union-attr]
        st = os.stat(p)
        h.update(fs_bytes(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n"))
    h.update(fs_bytes(cache_key))
    path = cache_dir() / "stats" / f"{h.hexdigest()[:32]}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            return torch.tensor(cached["mean"]), torch.tensor(cached["std"])
        except (OSError, ValueError, KeyError):
            pass  # recompute below
    mean, std = channel_stats_of(file_batches, channels)
    try:
        from cnnlab.run_folder import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"mean": mean.tolist(), "std": std.tolist()})
    except OSError:
        pass  # a read-only home: no cache, same figures
    return mean, std


@NORMALIZATIONS.register("auto")
def _auto(split: Split, channels: int, file_batches: Callable[[], object] | None = None, cache_key: str = "") -> Stats:
    """Per-channel mean and std of the training part."""
    if isinstance(split, ArraySplit):
        if split.images.dtype == torch.uint8 and len(split):
            return uint8_channel_stats(split.images)
        return channel_stats_of(_array_batches(split), channels)
    assert file_batches is not None
    return _file_split_stats(split, channels, file_batches, cache_key)


def _fixed(mean: tuple[float, ...], std: tuple[float, ...], name: str):
    def stats(split: Split, channels: int, file_batches=None, cache_key: str = "") -> Stats:
        if len(mean) != channels:
            raise ConfigError(
                f"data.normalize={name} has statistics for {len(mean)} channels but the images have {channels}; "
                f"set data.channels={len(mean)} or use data.normalize=auto"
            )
        return torch.tensor(mean), torch.tensor(std)

    return stats


NORMALIZATIONS.register("cifar10")(_fixed(*CIFAR10_STATS, "cifar10"))
NORMALIZATIONS.register("imagenet")(_fixed(*IMAGENET_STATS, "imagenet"))


@NORMALIZATIONS.register("none")
def _none(split: Split, channels: int, file_batches=None, cache_key: str = "") -> Stats:
    """Pixels on [0, 1], as ToTensor() alone gives (the textbook)."""
    return torch.zeros(channels), torch.ones(channels)


@NORMALIZATIONS.register("half")
def _half(split: Split, channels: int, file_batches=None, cache_key: str = "") -> Stats:
    """Pixels on [-0.5, 0.5] (the KTH report: mean 0.5, std 1)."""
    return torch.full((channels,), 0.5), torch.ones(channels)


@NORMALIZATIONS.register("standard-scaler")
def _standard_scaler(split: Split, channels: int, file_batches=None, cache_key: str = "") -> Stats:
    """Per-pixel mean and std of the training part, as scikit-learn's StandardScaler on flattened
    pixels (the UW lab). A pixel that never varies gets std 1, as StandardScaler does."""
    if not isinstance(split, ArraySplit):
        raise ConfigError("data.normalize=standard-scaler needs the images in memory; set data.in_memory=true")
    scale = value_scale(split.images)
    total = torch.zeros(split.images.shape[1:], dtype=torch.float64)  # (C, H, W)
    total_sq = torch.zeros_like(total)
    for i in range(0, len(split), 8192):  # chunks: no float64 copy of the whole split
        x = split.images[i : i + 8192].to(torch.float64) / scale
        total += x.sum(0)
        total_sq += x.square().sum(0)
    n = max(1, len(split))
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant pixel: the sums leave ~1e-9 of rounding
    return mean.float(), std.float()


def compute_stats(
    name: str, split: Split, channels: int, file_batches: Callable[[], object] | None = None, cache_key: str = ""
) -> Stats:
    """The statistics `name` gives for the training part `split`. `file_batches` yields its images
    as [0, 1] float batches where they are on disk; `cache_key` names their preprocessing."""
    return NORMALIZATIONS.get(name)(split, channels, file_batches, cache_key)
