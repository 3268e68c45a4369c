"""The dataset doctor (`cnnlab data check`): counts, sizes, corrupt files, duplicates and leakage.

Duplicates are exact: the same bytes (a file's content for data on disk, an image's pixels for data
in arrays). A test or validation image that is a byte copy of a training image is leakage: the model
is graded on an image it trained on.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cnnlab.config import DataConfig
from cnnlab.data import DATASETS, resolve_data
from cnnlab.data.base import ArraySplit
from cnnlab.data.images import BadImage, header_info, open_image
from cnnlab.text import printable

IMBALANCE_WARN = 10.0  # largest class / smallest class in train above this is worth a warning


@dataclass
class Item:
    """One image as the doctor sees it."""

    split: str
    name: str  # a path, or split[index] for data in arrays
    label: int
    digest: str | None  # None where it would not decode
    size: str = ""  # "WxH"
    mode: str = ""
    error: str | None = None


def _file_item(split: str, path: Path, label: int, max_pixels: int) -> Item:
    try:
        data = path.read_bytes()
    except OSError as e:
        return Item(split, printable(str(path)), label, None, error=f"unreadable ({e.strerror})")
    try:
        (w, h), mode = header_info(path)
        open_image(path, 3, max_pixels)  # a full decode: truncated files fail here
    except BadImage as e:
        return Item(split, printable(str(path)), label, None, error=str(e))
    return Item(split, printable(str(path)), label, hashlib.sha256(data).hexdigest(), f"{w}x{h}", mode)


def _file_items(scan, cfg: DataConfig) -> list[Item]:
    jobs = [
        (split if split != "all" else "train", p, label)
        for split, entries in scan.files.items()
        for p, label in entries
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        items = list(
            tqdm(
                pool.map(lambda j: _file_item(j[0], j[1], _class_of(j[2]), cfg.max_pixels), jobs),
                total=len(jobs),
                desc="checking",
                unit="file",
                leave=False,
                disable=None if len(jobs) > 2000 else True,
            )
        )
    items += [Item("train", path, -1, None, error=reason) for path, reason in scan.skipped]
    return items


def _class_of(label: Any) -> int:
    return int(label) if not isinstance(label, (list, tuple)) else max(range(len(label)), key=label.__getitem__)


def _array_items(name: str, split: ArraySplit) -> list[Item]:
    ids = split.labels if split.labels.ndim == 1 else split.labels.argmax(1)
    c, h, w = split.images.shape[1:]
    mode = {1: "L", 3: "RGB"}.get(c, f"{c}-channel")
    flat = split.images.reshape(len(split), -1).numpy()
    return [
        Item(name, f"{name}[{i}]", int(ids[i]), hashlib.sha256(flat[i].tobytes()).hexdigest(), f"{w}x{h}", mode)
        for i in range(len(split))
    ]


def check(cfg: DataConfig) -> dict[str, Any]:
    """Everything `cnnlab data check` reports, as a JSON-ready dict (see format_report)."""
    cfg = resolve_data(cfg)
    source = DATASETS.get(cfg.name)
    scan = source.scan(cfg)
    if scan is not None:  # data on disk: read every file
        classes, root = scan.classes, str(scan.root)
        items = _file_items(scan, cfg)
        carved = "all" in scan.files
        warnings = list(scan.warnings)
    else:  # data in arrays: hash every image's pixels
        ds = source(cfg)
        classes, root = ds.classes, ds.source
        items = [
            it
            for name, split in ds.splits().items()
            for it in (_array_items(name, split) if isinstance(split, ArraySplit) else [])
        ]
        carved = ds.test is None
        warnings = list(ds.warnings)
    return _report(cfg.name, root, classes, items, carved, warnings)


def _report(
    name: str, root: str, classes: list[str], items: list[Item], carved: bool, warnings: list[str]
) -> dict[str, Any]:
    good = [it for it in items if it.digest is not None]
    splits = sorted({it.split for it in good}, key=["train", "val", "test"].index)
    counts = {s: [0] * len(classes) for s in splits}
    for it in good:
        counts[it.split][it.label] += 1
    train_counts = [c for c in counts.get("train", []) if c > 0]
    imbalance = max(train_counts) / min(train_counts) if train_counts else None

    by_digest: dict[str, list[Item]] = defaultdict(list)
    for it in good:
        by_digest[it.digest].append(it)  # type: ignore[index]
    within = {s: [[d.name for d in group if d.split == s] for group in by_digest.values()] for s in splits}
    within = {s: [g for g in groups if len(g) > 1] for s, groups in within.items()}
    leakage = []
    for group in by_digest.values():
        train_names = [d.name for d in group if d.split == "train"]
        if train_names:
            leakage += [
                {"image": d.name, "split": d.split, "copy_of": train_names[0]} for d in group if d.split != "train"
            ]
    corrupt = [{"path": it.name, "reason": it.error} for it in items if it.error is not None]

    problems = []
    if corrupt:
        problems.append(f"{len(corrupt)} file(s) that will not decode")
    if leakage:
        problems.append(f"{len(leakage)} val/test image(s) that are copies of training images (leakage)")
    dup_count = sum(len(g) - 1 for groups in within.values() for g in groups)
    if dup_count:
        problems.append(f"{dup_count} duplicate image(s) within a split")
    empty = [classes[i] for i, c in enumerate(counts.get("train", [])) if c == 0]
    if empty:
        problems.append(f"{len(empty)} class(es) with no training images: {', '.join(empty[:5])}")
    if imbalance is not None and imbalance > IMBALANCE_WARN:
        problems.append(
            f"class imbalance {imbalance:.1f}:1 in train (consider --class-weights auto or data.sampler=balanced)"
        )
    verdict = "OK: no problems found" if not problems else f"{len(problems)} problem(s): " + "; ".join(problems)
    return {
        "dataset": name,
        "source": root,
        "classes": classes,
        "splits": {s: sum(counts[s]) for s in splits},
        "test_and_val_carved_at_train_time": carved,
        "class_counts": {s: dict(zip(classes, counts[s])) for s in splits},
        "imbalance_ratio": imbalance,
        "image_sizes": dict(Counter(it.size for it in good).most_common()),
        "image_modes": dict(Counter(it.mode for it in good).most_common()),
        "corrupt": corrupt,
        "duplicates_within_split": within,
        "leakage": leakage,
        "warnings": warnings,
        "problems": problems,
        "verdict": verdict,
    }


def format_report(r: dict[str, Any], limit: int = 20) -> str:
    """The report as text for a person: tables first, then every problem with its files."""
    lines = [f"dataset  {r['dataset']}  ({r['source']})"]
    splits = list(r["splits"])
    note = (
        "  (one folder: test and val parts are carved when training)" if r["test_and_val_carved_at_train_time"] else ""
    )
    lines.append("images   " + ", ".join(f"{s} {n:,}" for s, n in r["splits"].items()) + note)
    width = max([len(c) for c in r["classes"]] + [5])
    lines.append("")
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits))
    for c in r["classes"]:
        lines.append(f"  {c:<{width}}  " + "  ".join(f"{r['class_counts'][s][c]:>7,}" for s in splits))
    if r["imbalance_ratio"] is not None:
        lines.append(f"  imbalance (largest / smallest class in train): {r['imbalance_ratio']:.2f}:1")
    lines.append("")
    lines.append(
        "sizes    "
        + ", ".join(f"{k}: {v:,}" for k, v in list(r["image_sizes"].items())[:6])
        + (" ..." if len(r["image_sizes"]) > 6 else "")
    )
    lines.append("modes    " + ", ".join(f"{k}: {v:,}" for k, v in r["image_modes"].items()))

    def listing(title: str, rows: list[str]) -> None:
        lines.append("")
        lines.append(title)
        lines.extend(f"  {row}" for row in rows[:limit])
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more (--json lists all)")

    if r["corrupt"]:
        listing(
            f"{len(r['corrupt'])} file(s) will not decode (skipped when training):",
            [f"{c['path']}: {c['reason']}" for c in r["corrupt"]],
        )
    if r["leakage"]:
        listing(
            f"{len(r['leakage'])} val/test image(s) are byte copies of training images (leakage):",
            [f"{x['image']}  =  {x['copy_of']}" for x in r["leakage"]],
        )
    dups = [" = ".join(g) for groups in r["duplicates_within_split"].values() for g in groups]
    if dups:
        listing(f"{len(dups)} group(s) of identical images within a split:", dups)
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    lines.append("")
    lines.append(f"verdict: {r['verdict']}")
    return "\n".join(lines)


def list_datasets() -> list[dict[str, str]]:
    """Each registered dataset: name, layout, and where it is found here (or what it needs)."""
    rows = []
    for name in DATASETS.names():
        source = DATASETS.get(name)
        found = source.find(DataConfig(name=name, download=False))
        rows.append(
            {
                "name": name,
                "layout": source.layout,
                "found": str(found) if found else "needs --data PATH" if source.needs_root else "not found here",
            }
        )
    return rows
