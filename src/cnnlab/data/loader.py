"""Batches for training and evaluation: index, augment, normalise, all on whole batches.

`TensorLoader` slices an in-memory split: it replaces torch.utils.data.DataLoader there, which
collates one sample at a time through Python (873 img/s with per-sample ToTensor on the 2-core
CPU, slower than the model itself), where slicing one uint8 tensor costs microseconds per batch.
`FileLoader` feeds a split on disk: DataLoader workers decode and resize, and the main process
augments and normalises the collated uint8 batch exactly as TensorLoader does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from cnnlab.data.augment import AugmentParams, build_augment
from cnnlab.data.base import ArraySplit, FileSplit, Split
from cnnlab.data.images import BadImage, open_image, preprocess_transform, to_uint8_tensor
from cnnlab.data.normalize import affine, value_scale
from cnnlab.data.splits import class_counts
from cnnlab.errors import DataError


def stream_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """The seed of a run's random stream for one epoch (and, under torchrun, one process): a pure
    function of (seed, epoch, rank), so a run repeats and a resumed run continues exactly. The large
    odd multipliers keep nearby seeds' streams apart."""
    base = seed * 1_000_003 + epoch
    return base % (2**63) if rank is None else base * 1_009 + rank + 1


class BatchLoader:
    """What both loaders share: the order of an epoch, augmentation and normalisation.

    The order and the augmentation of an epoch depend only on (seed, epoch): set_epoch(e) before
    iterating makes a run repeatable and a resumed run continue exactly.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        mean: Sequence[Any],
        std: Sequence[Any],
        shuffle: bool = False,
        augment: str = "none",
        augment_params: AugmentParams | None = None,
        sampler: str = "shuffle",
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        value_max: float = 255.0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.balanced = shuffle and sampler == "balanced"
        self.augment = build_augment(augment, augment_params or AugmentParams(value_max=value_max))
        self.drop_last = drop_last
        self.seed = seed
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.epoch = 0
        # (rank, world): this process's share of every epoch under torchrun. Training splits each
        # batch of `batch_size * world` images into `world` pieces; evaluation gives each process
        # one contiguous chunk of the split.
        self.rank, self.world = shard
        self._resume: dict[str, Any] | None = None  # set_epoch(e, resume=...): where to pick up
        self._generator_now: torch.Generator | None = None  # the running epoch's stream
        self._done = 0  # batches yielded in the running epoch
        self.skipped: dict[str, str] = {}  # files that would not decode (data on disk): path -> reason
        scale, shift = affine(mean, std, value_max)  # x_norm = (x / value_max - mean) / std = x * scale + shift
        self.scale, self.shift = scale.to(self.device), shift.to(self.device)

    def set_epoch(self, epoch: int, resume: dict[str, Any] | None = None) -> None:
        """Iterate epoch `epoch` next; `resume` (a state_dict() taken inside that epoch) skips the
        batches already trained and restores the augmentation stream where it was."""
        self.epoch = epoch
        self._resume = resume

    def state_dict(self) -> dict[str, Any]:
        """The position inside the running epoch: batches done and the random stream after them."""
        g = self._generator_now
        return {"epoch": self.epoch, "batches": self._done, "generator": g.get_state() if g is not None else None}

    def _indices(self, order: torch.Tensor | None) -> torch.Tensor | None:
        """The sample indices this process iterates, in order; None: the whole split in its own order."""
        if self.world == 1:
            return order
        n = len(self.split)
        order = order if order is not None else torch.arange(n)
        if self.drop_last:  # training: piece `rank` of every global batch
            group = self.batch_size * self.world
            usable = n // group * group
            return order[:usable].view(-1, self.world, self.batch_size)[:, self.rank].reshape(-1)
        return torch.tensor_split(order, self.world)[self.rank]

    def _count(self) -> int:
        n = len(self.split)
        if self.world > 1:
            n = (
                n // (self.batch_size * self.world) * self.batch_size
                if self.drop_last
                else len(torch.tensor_split(torch.arange(n), self.world)[self.rank])
            )
        return n

    def __len__(self) -> int:
        n = self._count()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))

    def _order(self, g: torch.Generator) -> torch.Tensor | None:
        """Sample indices for one epoch; None means the split's own order."""
        n = len(self.split)
        if self.balanced:  # every class drawn equally often, with replacement
            counts = class_counts(
                self.split,
                int(self.split.labels.max()) + 1 if self.split.labels.ndim == 1 else self.split.labels.shape[1],
            ).float()
            ids = self.split.labels if self.split.labels.ndim == 1 else self.split.labels.argmax(1)
            weights = (1.0 / counts.clamp_min(1))[ids]
            return torch.multinomial(weights, n, replacement=True, generator=g)
        return torch.randperm(n, generator=g) if self.shuffle else None

    def _batches(self, indices: torch.Tensor | None, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 (or float) image batches and labels, from batch number `start` on; (None, labels)
        stands for a batch none of whose files decoded."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = self._generator()
        indices = self._indices(self._order(g))
        if self.world > 1:  # every process its own augmentation stream
            g.manual_seed(stream_seed(self.seed, self.epoch, self.rank))
        start, resume, self._resume = 0, self._resume, None
        if resume is not None and resume.get("batches"):
            start = int(resume["batches"])
            g.set_state(resume["generator"])
        self._generator_now, self._done = g, start
        batches = 0
        for x, y in self._batches(indices, start):
            if x is None:  # every file of this batch failed to decode: nothing to train, but a batch done
                self._done += 1
                continue
            batches += 1
            x = self.augment(x.to(self.device, non_blocking=True), g)
            x = torch.addcmul(self.shift, x.float(), self.scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self._done += 1  # before the yield: a checkpoint taken while the batch trains counts it (and only it)
            yield x, y.to(self.device, non_blocking=True)
        if batches == 0 and start == 0 and self._count() > 0:
            raise DataError(
                f"none of the {len(self.split)} images of this part decoded "
                f"(first reasons: {'; '.join(list(self.skipped.values())[:2])}); cnnlab data check lists them"
            )


class TensorLoader(BatchLoader):
    """(x, y) batches from an ArraySplit: x float32 (B, C, H, W) normalised, y the labels."""

    def __init__(self, split: ArraySplit, batch_size: int, **kw: Any) -> None:
        kw.setdefault("value_max", value_scale(split.images))
        super().__init__(split, batch_size, **kw)

    def _batches(self, indices: torch.Tensor | None, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self._count()
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = indices[sl] if indices is not None else sl
            yield self.split.images[idx], self.split.labels[idx]


class _DecodeFiles(torch.utils.data.Dataset):
    """Workers' side of FileLoader: decode and preprocess one file; a bad file yields None and a reason."""

    def __init__(
        self, split: FileSplit, channels: int, steps: list, shape: tuple[int, int, int], max_pixels: int
    ) -> None:
        self.split, self.channels, self.shape, self.max_pixels = split, channels, tuple(shape), max_pixels
        self.transform = preprocess_transform(steps)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        path = self.split.paths[i]
        try:
            x = to_uint8_tensor(open_image(path, self.channels, self.max_pixels), self.transform)
            if tuple(x.shape) != self.shape:
                raise BadImage(
                    f"comes out {tuple(x.shape)}, not {self.shape}; add a center_crop step to data.preprocess"
                )
        except BadImage as e:
            return None, self.split.labels[i], (path, str(e))
        return x, self.split.labels[i], None


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, str]]]:
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [b for _, _, b in items if b is not None]
    if not good:
        return None, torch.empty(0), bad
    return torch.stack([x for x, _ in good]), torch.stack([y for _, y in good]), bad


class FileLoader(BatchLoader):
    """(x, y) batches from a FileSplit, decoded by DataLoader workers. Files that fail to decode are
    left out of their batch and collected in `skipped` (path -> reason)."""

    def __init__(
        self,
        split: FileSplit,
        batch_size: int,
        *,
        channels: int,
        preprocess: list,
        input_shape: Sequence[int],
        max_pixels: int,
        workers: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(split, batch_size, **kw)
        self.files = _DecodeFiles(split, channels, preprocess, tuple(input_shape), max_pixels)
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers

    def _batches(self, indices: torch.Tensor | None, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = indices.tolist() if indices is not None else range(len(self.split))
        batches = list(BatchSampler(order, self.batch_size, self.drop_last))[start:]  # type: ignore[arg-type]
        # A generator of its own: otherwise each DataLoader iterator draws its workers' base seed from
        # torch's global stream, so reading files would shift the model's initialisation, dropout
        # and mixing (and a resumed run, which starts one more iterator, would drift from the original).
        own = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        loader = DataLoader(
            self.files,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            generator=own,
        )
        for x, y, bad in loader:
            self.skipped.update(bad)
            yield x, y


def make_loader(
    split: Split,
    batch_size: int,
    *,
    input_shape: Sequence[int],
    preprocess: list,
    max_pixels: int = 40_000_000,
    workers: int | None = None,
    **kw: Any,
) -> BatchLoader:
    """The loader that fits the split: TensorLoader in memory, FileLoader on disk."""
    if isinstance(split, ArraySplit):
        return TensorLoader(split, batch_size, **kw)
    return FileLoader(
        split,
        batch_size,
        channels=input_shape[0],
        preprocess=preprocess,
        input_shape=input_shape,
        max_pixels=max_pixels,
        workers=workers,
        **kw,
    )
