"""Batches from an in-memory uint8 split: index, augment, normalise, all on whole batches.

Replaces torch.utils.data.DataLoader for data that fits in memory: a DataLoader collates one
sample at a time through Python (873 img/s with per-sample ToTensor on the 2-core CPU, slower
than the model itself), where slicing one uint8 tensor costs microseconds per batch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from cnnlab.data.augment import AUGMENTATIONS
from cnnlab.data.base import ArraySplit


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(images), chunk):  # chunks keep the float64 copy small
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum((0, 2, 3))
        total_sq += x.square().sum((0, 2, 3))
    n = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


class TensorLoader:
    """Iterate (x, y) batches: x float32 (B, C, H, W) normalised, y int64 (B,), both on `device`.

    The order and the augmentation of an epoch depend only on (seed, epoch): set_epoch(e) before
    iterating makes a run repeatable and a resumed run continue exactly.
    """

    def __init__(
        self,
        split: ArraySplit,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: str = "none",
        translate: int = 2,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = AUGMENTATIONS.get(augment)
        self.translate = translate
        self.drop_last = drop_last
        self.seed = seed
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.epoch = 0
        c = split.images.shape[1]
        # x_norm = (x_uint8 / 255 - mean) / std = x_uint8 * scale + shift, one fused multiply-add
        std_t = torch.tensor(list(std), dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device)
        self.shift = (-torch.tensor(list(mean), dtype=torch.float32) / std_t).view(1, c, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        # One stream per (seed, epoch); the large odd multiplier keeps nearby seeds' streams apart.
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = self._generator()
        n = len(self.split)
        order = torch.randperm(n, generator=g) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            x = self.split.images[idx].to(self.device, non_blocking=True)  # (B, C, H, W) uint8
            y = self.split.labels[idx].to(self.device, non_blocking=True)
            x = self.augment(x, g, self.translate)
            x = torch.addcmul(self.shift, x.float(), self.scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
