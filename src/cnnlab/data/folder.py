"""Image folders: PATH/<class>/* or PATH/{train,val,test}/<class>/*, any image format Pillow reads.

Small folders are decoded once into memory (fast batched loaders); big ones are decoded lazily by
DataLoader workers. Files that will not decode are skipped and listed, never a crash mid-epoch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cnnlab.config import DataConfig
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import ArraySplit, Dataset, DataSource, FileSplit
from cnnlab.data.images import (
    IMAGE_SUFFIXES,
    BadImage,
    header_info,
    open_image,
    output_size,
    preprocess_transform,
    to_uint8_tensor,
)
from cnnlab.errors import DataError
from cnnlab.text import printable

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IN_MEMORY_BYTES = 2 * 1024**3  # decode into memory when the uint8 tensor fits in this
AUTO_SIZE = 64  # the largest side chosen for a folder whose recipe gives no preprocess (96 from LARGE_FOLDER images)
LARGE_FOLDER = 50_000
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_dirs(
    folder: Path, roots: tuple[Path, ...] | None = None, skipped: list[tuple[str, str]] | None = None
) -> list[Path]:
    """The visible sub-folders of `folder`; with `roots`, only those inside them (a link that leads
    out of the dataset is listed in `skipped` and not followed)."""
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and visible(p))
    return (
        dirs
        if roots is None
        else [p for p in dirs if _kept(p, roots, skipped if skipped is not None else [], "followed")]
    )


def _kept(p: Path, roots: tuple[Path, ...], skipped: list[tuple[str, str]], verb: str) -> bool:
    """Whether `p`, its links resolved, lies in one of the (resolved) folders `roots`; if not, it is
    listed in `skipped` ("not `verb`"). Only a link is resolved: anything else under a folder already
    found inside is inside (no resolve per file)."""
    if not p.is_symlink():
        return True
    real = p.resolve()
    if any(real.is_relative_to(r) for r in roots):
        return True
    skipped.append((printable(str(p)), f"a link to {printable(str(real))}, outside the dataset: not {verb}"))
    return False


def _files_under(cdir: Path, roots: tuple[Path, ...], skipped: list[tuple[str, str]]) -> list[Path]:
    """Every visible file under `cdir`, sorted, following links only where they stay inside `roots`
    (each folder once, so a link to a parent cannot loop); the others are listed in `skipped`."""
    found: list[Path] = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(dirpath)  # once per folder: a link to a parent is walked once
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [name for name in dirnames if _kept(here / name, roots, skipped, "followed")]
        found += [
            p
            for p in (here / name for name in filenames)
            if visible(p) and p.is_file() and _kept(p, roots, skipped, "read")
        ]
    return sorted(found)


@dataclass
class FolderScan:
    """What a folder holds, before any decoding."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[Path, Any]]]  # split -> (path, class index or multi-hot list); "all": a flat folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)


def split_folders(root: Path) -> dict[str, Path]:
    """{'train': root/train, ...} where root has split folders, else {}."""
    found = {}
    for p in _class_dirs(root):
        key = SPLIT_NAMES.get(p.name.lower())
        if key is not None:
            found[key] = p
    return found if "train" in found else {}


def scan_folder(root: Path) -> FolderScan:
    """List every file under the class folders; files without an image suffix are skipped and listed."""
    splits = split_folders(root) or {"all": root}
    # nothing outside the dataset is read: links out of it are listed as skipped. The dataset is the
    # root and its split folders, wherever each lies (train/ may be a link to another disk)
    inside = (root.resolve(), *(f.resolve() for f in splits.values()))
    skipped: list[tuple[str, str]] = []
    # class names are shown, logged and saved in checkpoints: a folder name that is not UTF-8 is
    # named with \xNN for its undecodable bytes (text.printable)
    train_dirs = _class_dirs(splits.get("train", root), inside, skipped)
    classes = [printable(p.name) for p in train_dirs]
    if not classes:
        raise DataError(f"{root} has no class folders; an image folder is PATH/<class>/* or PATH/train/<class>/*")
    scan = FolderScan(root, classes, {}, skipped)
    index = {p.name: i for i, p in enumerate(train_dirs)}
    for split, folder in splits.items():
        entries: list[tuple[Path, int]] = []
        for cdir in train_dirs if folder == splits.get("train", root) else _class_dirs(folder, inside, skipped):
            if cdir.name not in index:
                raise DataError(
                    f"{printable(str(cdir))} is a class that {splits.get('train', root)} does not have; "
                    "every split needs the same class folders"
                )
            files = _files_under(cdir, inside, skipped)
            if not files:
                scan.warnings.append(f"class folder {printable(str(cdir))} is empty")
            for p in files:
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    entries.append((p, index[cdir.name]))
                else:
                    skipped.append((printable(str(p)), f"not an image file (suffix {printable(p.suffix) or 'none'})"))
        scan.files[split] = entries
    return scan


def _labels(entries: list[tuple[Path, Any]]) -> torch.Tensor:
    """(N,) int64 class indices, or (N, K) float32 multi-hot rows."""
    if entries and isinstance(entries[0][1], (list, tuple)):
        return torch.tensor([label for _, label in entries], dtype=torch.float32)
    return torch.tensor([label for _, label in entries], dtype=torch.long)


DECODE_MEMORY = 2 * 1024**3  # bytes the decoding threads may hold at once, each at worst an image at the pixel limit


def decode_threads(max_pixels: int) -> int:
    """Threads decoding a folder at once: one per core, but no more than DECODE_MEMORY allows for
    images as large as `max_pixels` (4 bytes a pixel: RGBA or 16-bit gray while decoding)."""
    return max(1, min(os.cpu_count() or 1, DECODE_MEMORY // max(1, 4 * max_pixels)))


def _decode_all(
    entries: list[tuple[Path, Any]],
    channels: int,
    steps: list[dict[str, Any]],
    max_pixels: int,
    skipped: list[tuple[str, str]],
    desc: str,
) -> ArraySplit:
    transform = preprocess_transform(steps)

    def decode(entry: tuple[Path, int]) -> torch.Tensor | None:
        try:
            return to_uint8_tensor(open_image(entry[0], channels, max_pixels), transform)
        except BadImage as e:
            skipped.append((printable(str(entry[0])), str(e)))
            return None

    # Pillow releases the GIL while decoding, so threads use both cores without pickling anything.
    with ThreadPoolExecutor(max_workers=decode_threads(max_pixels)) as pool:
        tensors = list(
            tqdm(
                pool.map(decode, entries),
                total=len(entries),
                desc=desc,
                unit="img",
                leave=False,
                disable=None if len(entries) > 2000 else True,
            )
        )
    keep = [i for i, t in enumerate(tensors) if t is not None]
    shapes = {tuple(tensors[i].shape) for i in keep}
    if len(shapes) > 1:
        raise DataError(
            f"images come out in {len(shapes)} sizes ({sorted(shapes)[:3]} ...); "
            "add a center_crop step to data.preprocess"
        )
    labels = _labels([entries[i] for i in keep])
    images = torch.stack([tensors[i] for i in keep]) if keep else torch.zeros(0, channels, 1, 1, dtype=torch.uint8)
    return ArraySplit(images, labels)


class ImageFolderSource(DataSource):
    name = "folder"
    generic = True
    reads_files = True
    needs_root = True
    layout = "one sub-folder of images per class (PATH/<class>/*), or PATH/{train,val,test}/<class>/*"

    def matches(self, root: Path) -> Path | None:
        if not root.is_dir():
            return None
        base = split_folders(root).get("train", root)
        return root if any(any(visible(f) for f in d.iterdir()) for d in _class_dirs(base)) else None

    def load(self, cfg: DataConfig) -> Dataset:
        return decode_scan(self.scan(cfg), cfg)

    def scan(self, cfg: DataConfig) -> FolderScan:
        """The files, per split, without decoding any (the dataset doctor reads them itself)."""
        if cfg.root is None:
            raise DataError("the folder dataset needs --data PATH: a folder with one sub-folder of images per class")
        return scan_folder(self.root_folder(cfg))


HEADER_SAMPLE = 500  # files whose headers are read to infer size and mode (evenly spaced)


def auto_side(sides: list[int], count: int) -> int:
    """The side images are resized to: the median of their shorter sides (a folder of 28x28 images
    stays at 28, not blown up to 64), at most AUTO_SIZE (96 for LARGE_FOLDER images or more, which can
    afford more pixels), rounded down to a multiple of 4 from 16 up, and never below 8."""
    median = sorted(sides)[len(sides) // 2]
    side = min(median, AUTO_SIZE if count < LARGE_FOLDER else 96)
    return max(8, side // 4 * 4 if side >= 16 else side)


def _header_sample(scan: FolderScan, max_pixels: int) -> tuple[set[tuple[int, int]], set[str], list[int]]:
    """(sizes (w, h), modes, shorter sides) of up to HEADER_SAMPLE files, evenly spaced, from their headers."""
    paths = [p for entries in scan.files.values() for p, _ in entries]
    stride = max(1, len(paths) // HEADER_SAMPLE)
    sizes, modes, sides = set(), set(), []
    for path in paths[::stride]:
        try:
            size, mode = header_info(path)
        except BadImage:
            continue  # listed when decoding
        if size[0] * size[1] > max_pixels:
            continue  # refused as a bomb when decoding: it must not decide the size of the rest
        sizes.add(size)
        sides.append(min(size))
        modes.add(mode)
    if not sizes:
        raise DataError(f"no readable images under {scan.root}")
    return sizes, modes, sides


def median_side(scan: FolderScan, max_pixels: int) -> int:
    """The median shorter side, in pixels, of the scanned images (a sample of their headers; nothing decoded)."""
    sides = sorted(_header_sample(scan, max_pixels)[2])
    return sides[len(sides) // 2]


def _infer_layout(
    scan: FolderScan, cfg: DataConfig, default_steps: list[dict[str, Any]] | None
) -> tuple[int, list[dict[str, Any]], tuple[int, int]]:
    """(channels, preprocess steps, output (h, w)) from a sample of the files' headers and the recipe."""
    sizes, modes, sides = _header_sample(scan, cfg.max_pixels)
    channels = cfg.channels or (1 if modes <= GRAY_MODES else 3)
    steps = cfg.preprocess if cfg.preprocess is not None else default_steps
    if steps is None:
        same = len(sizes) == 1 and max(next(iter(sizes))) <= AUTO_SIZE  # one size, small enough: kept as it is
        side = auto_side(sides, sum(len(e) for e in scan.files.values()))
        steps = [] if same else [{"resize": side}, {"center_crop": side}]
    outs = {output_size(steps, (h, w)) for w, h in sizes}
    if len(outs) > 1:
        raise DataError(
            f"the images of {scan.root} come in {len(sizes)} sizes; add a center_crop step to data.preprocess, "
            f"e.g. [{{resize: 64}}, {{center_crop: 64}}]"
        )
    return channels, steps, outs.pop()


def decode_scan(
    scan: FolderScan,
    cfg: DataConfig,
    classes: list[str] | None = None,
    multilabel: bool = False,
    default_steps: list[dict[str, Any]] | None = None,
) -> Dataset:
    """Turn scanned files into a Dataset: in memory where it fits (or cfg.in_memory), else on disk."""
    channels, steps, (h, w) = _infer_layout(scan, cfg, default_steps)
    total = sum(len(e) for e in scan.files.values())
    in_memory = cfg.in_memory if cfg.in_memory is not None else total * channels * h * w <= IN_MEMORY_BYTES
    skipped = list(scan.skipped)
    splits: dict[str, Any] = {}
    for split, entries in scan.files.items():
        if in_memory:
            splits[split] = _decode_all(entries, channels, steps, cfg.max_pixels, skipped, f"decoding {split}")
        else:
            splits[split] = FileSplit([str(p) for p, _ in entries], _labels(entries))
    train = splits.get("train", splits.get("all"))
    return Dataset(
        train,
        splits.get("test"),
        classes or scan.classes,
        source=str(scan.root),
        multilabel=multilabel,
        val=splits.get("val"),
        input_shape=(channels, h, w),
        preprocess=list(steps),
        skipped=sorted(skipped),
        warnings=list(scan.warnings),
    )


DATASETS.register("folder")(ImageFolderSource())
