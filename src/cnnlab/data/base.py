"""What every dataset source returns, and the interface a source implements.

A split is either in memory (`ArraySplit`: one uint8 or float32 tensor, fed by fast batched
loaders) or on disk (`FileSplit`: image paths decoded lazily by DataLoader workers, for folders too
big to hold in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.config import DataConfig
from cnnlab.errors import DataError


@dataclass
class ArraySplit:
    """One split in memory: images (N, C, H, W) uint8 (0..255) or float32 (any scale), labels (N,) int64
    or (N, K) float32 multi-hot for a multi-label task."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.labels.ndim == 1:
            self.labels = self.labels.long()
        if self.images.ndim == 3:  # (N, H, W): one channel
            self.images = self.images.unsqueeze(1)
        if self.images.ndim != 4 or self.images.dtype not in (torch.uint8, torch.float32):
            raise DataError(
                f"images must be (N, C, H, W) uint8 or float32, got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.ndim not in (1, 2) or len(self.labels) != len(self.images):
            raise DataError(
                f"{len(self.images)} images but {tuple(self.labels.shape)} labels; the files do not belong together"
            )

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor | slice) -> ArraySplit:
        return ArraySplit(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    """One split on disk: image files decoded when a batch needs them. labels as in ArraySplit."""

    paths: list[str]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.labels.ndim == 1:
            self.labels = self.labels.long()
        if len(self.paths) != len(self.labels):
            raise DataError(f"{len(self.paths)} files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor | slice) -> FileSplit:
        if isinstance(index, slice):
            return FileSplit(self.paths[index], self.labels[index])
        return FileSplit([self.paths[i] for i in index.tolist()], self.labels[index])


Split = ArraySplit | FileSplit


@dataclass
class Dataset:
    """A dataset's splits, class names and where it was read from.

    `test` is None for a single folder with no test part, and `val` None where the source has no
    validation part: load_dataset() carves them. `skipped` lists (path, reason) for files that would
    not decode; `warnings` anything else a user should know.
    """

    train: Split
    test: Split | None
    classes: list[str]
    source: str  # the folder the files were read from
    val: Split | None = None
    multilabel: bool = False  # labels are (N, K) multi-hot over `classes`
    input_shape: tuple[int, int, int] | None = None  # (C, H, W) of one image as the model sees it
    preprocess: list[dict[str, Any]] = field(default_factory=list)  # resize/crop steps applied on load
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.input_shape is None:
            if not isinstance(self.train, ArraySplit):
                raise DataError("a dataset on disk must give its input_shape")
            self.input_shape = tuple(self.train.images.shape[1:])  # type: ignore[assignment]
        k = len(self.classes)
        for name, split in self.splits().items():
            if len(split) == 0 or split.labels.ndim != 1:
                continue
            lo, hi = int(split.labels.min()), int(split.labels.max())
            if lo < 0 or hi >= k:
                raise DataError(
                    f"{self.source}: {name} labels run from {lo} to {hi}, outside the {k} classes 0..{k - 1}; "
                    "the label file is corrupt or belongs to another dataset"
                )

    def splits(self) -> dict[str, Split]:
        """The splits that exist, by name (train, val, test)."""
        return {n: s for n, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}


class DataSource:
    """One on-disk format. Registered instances are called with the DataConfig to load a Dataset."""

    name = ""
    layout = ""  # one line: the files this source reads
    generic = False  # True for a layout most folders match (tried last when detecting --data PATH)
    needs_root = False  # True where there is no usual place to look: only --data PATH finds it
    default_augment = "flip-translate"  # what data.augment=auto means here
    reads_files = (
        False  # True where images are files: data.preprocess runs as each is decoded (else once on the arrays)
    )

    def find(self, cfg: DataConfig) -> Path | None:
        """Where the data is on this machine (cheap: no decoding), or None."""
        return self.matches(Path(cfg.root).expanduser()) if cfg.root else None

    def matches(self, root: Path) -> Path | None:
        """The folder under `root` that holds this layout, or None."""
        raise NotImplementedError

    def load(self, cfg: DataConfig) -> Dataset:
        raise NotImplementedError

    def scan(self, cfg: DataConfig) -> Any:
        """The files per split without decoding (a FolderScan), for sources that read files; else None."""
        return None

    def __call__(self, cfg: DataConfig) -> Dataset:
        return self.load(cfg)

    def root_folder(self, cfg: DataConfig) -> Path:
        """The --data folder, checked: it must exist, be a folder, and hold this layout."""
        root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
        if not root.exists():
            raise DataError(
                f"--data {cfg.root} does not exist; give --data a folder holding {self.layout}, "
                f"or a dataset name like {self.name}"
            )
        if not root.is_dir():
            raise DataError(f"--data {cfg.root} is a file; give --data the folder that holds {self.layout}")
        folder = self.matches(root)
        if folder is None:
            raise DataError(f"{root} does not hold the {self.name} layout: expected {self.layout}")
        return folder
