"""CelebA: img_align_celeba/*.jpg with list_attr_celeba.txt and list_eval_partition.txt.

The target is one attribute (a binary task: "not <A>" / "<A>") chosen by name or by its 0-based
index in the attribute file, or a list of attributes (a multi-label task). The official partition
file gives train (0), valid (1) and test (2).

Parsed here rather than through torchvision.datasets.CelebA, which insists on the identity and
landmark files too and on MD5-checking the whole download, so no partial copy or fixture loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.config import DataConfig
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import Dataset, DataSource
from cnnlab.data.folder import FolderScan, decode_scan
from cnnlab.errors import DataError
from cnnlab.text import printable

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
PARTS = {0: "train", 1: "val", 2: "test"}
DEFAULT_ATTRIBUTE = "Smiling"
# The textbook's eval transform: CenterCrop(178) then Resize(64), on the 178x218 aligned faces.
TEXTBOOK_STEPS = [{"center_crop": 178}, {"resize": 64}]


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """(attribute names, {file name: [+1/-1 per attribute]})."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(lines) < 2:
        raise DataError(f"{path} is too short: a count line, a line of attribute names, then one row per image")
    names = lines[1].split()
    rows: dict[str, list[int]] = {}
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1", "0") for v in parts[1:]):
            raise DataError(f"{path}, line {i}: expected a file name and {len(names)} values of 1 or -1")
        rows[parts[0]] = [int(v) for v in parts[1:]]
    return names, rows


def read_partition(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    for i, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}, line {i}: expected a file name and 0, 1 or 2")
        out[parts[0]] = int(parts[1])
    return out


def target_columns(names: list[str], attributes: Any) -> list[int]:
    """Column indices for a name, an index, or a list of them."""
    wanted = attributes if isinstance(attributes, list) else [attributes]
    cols = []
    for a in wanted:
        if isinstance(a, int) and not isinstance(a, bool):
            if not 0 <= a < len(names):
                raise DataError(f"data.attributes index {a} is outside 0..{len(names) - 1}")
            cols.append(a)
        elif isinstance(a, str) and a in names:
            cols.append(names.index(a))
        else:
            raise DataError(f"CelebA has no attribute {a!r}; choose from: {', '.join(names)}")
    if not cols:
        raise DataError("data.attributes is an empty list; name at least one attribute")
    return cols


class CelebASource(DataSource):
    name = "celeba"
    reads_files = True
    needs_root = True
    layout = f"{IMAGES}/, {ATTR_FILE} and {PARTITION_FILE} (torchvision's celeba/ folder)"

    def matches(self, root: Path) -> Path | None:
        for folder in (root, root / "celeba"):
            if (folder / ATTR_FILE).is_file():
                return folder
        return None

    def load(self, cfg: DataConfig) -> Dataset:
        scan, classes, multilabel = self._scan(cfg)
        return decode_scan(scan, cfg, classes=classes, multilabel=multilabel, default_steps=TEXTBOOK_STEPS)

    def scan(self, cfg: DataConfig) -> FolderScan:
        return self._scan(cfg)[0]

    def _scan(self, cfg: DataConfig) -> tuple[FolderScan, list[str], bool]:
        if cfg.root is None:
            raise DataError(f"CelebA cannot be downloaded here; pass --data PATH to a folder holding {self.layout}")
        folder = self.root_folder(cfg)
        for needed in (PARTITION_FILE, IMAGES):
            if not (folder / needed).exists():
                raise DataError(f"{folder} has no {needed}; CelebA needs {self.layout}")
        names, rows = read_attributes(folder / ATTR_FILE)
        partition = read_partition(folder / PARTITION_FILE)
        cols = target_columns(names, cfg.attributes if cfg.attributes is not None else DEFAULT_ATTRIBUTE)
        multilabel = len(cols) > 1
        classes = [names[c] for c in cols] if multilabel else [f"not {names[cols[0]]}", names[cols[0]]]
        scan = FolderScan(folder, classes, {"train": [], "val": [], "test": []})
        images = (folder / IMAGES).resolve()
        for file, values in rows.items():
            part = partition.get(file)
            if part is None:
                scan.skipped.append((printable(str(folder / IMAGES / file)), f"not in {PARTITION_FILE}"))
                continue
            path = folder / IMAGES / file
            # the attribute file names the images: a name that is absolute, climbs out with .., or is a
            # link out of img_align_celeba/ would read a file outside the dataset
            if Path(file).is_absolute() or not path.resolve().is_relative_to(images):
                scan.skipped.append((printable(file), f"a name in {ATTR_FILE} that leads outside {IMAGES}/: not read"))
                continue
            label: Any = [float(values[c] > 0) for c in cols] if multilabel else int(values[cols[0]] > 0)
            scan.files[PARTS[part]].append((path, label))
        for split in ("train", "test"):
            if not scan.files[split]:
                raise DataError(f"{folder / PARTITION_FILE} puts no image in the {split} part")
        return scan, classes, multilabel


DATASETS.register("celeba")(CelebASource())
