"""What every dataset loader returns: splits held in memory as one uint8 tensor each."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.errors import DataError


@dataclass
class ArraySplit:
    """One split in memory: images (N, C, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.labels = self.labels.long()
        if self.images.ndim == 3:  # (N, H, W): one channel
            self.images = self.images.unsqueeze(1)
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise DataError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {tuple(self.labels.shape)} labels; the files do not belong together")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor | slice) -> "ArraySplit":
        return ArraySplit(self.images[index], self.labels[index])


@dataclass
class Dataset:
    """A dataset's splits, class names and where it was read from. `val` is None until carved."""

    train: ArraySplit
    test: ArraySplit
    classes: list[str]
    source: str  # the folder the files were read from
    val: ArraySplit | None = None

    def __post_init__(self) -> None:
        k = len(self.classes)
        for name, split in (("train", self.train), ("test", self.test), ("val", self.val)):
            if split is None or len(split) == 0:
                continue
            lo, hi = int(split.labels.min()), int(split.labels.max())
            if lo < 0 or hi >= k:
                raise DataError(f"{self.source}: {name} labels run from {lo} to {hi}, outside the {k} classes 0..{k - 1}; the label file is corrupt or belongs to another dataset")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]
