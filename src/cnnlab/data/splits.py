"""Carving validation and test parts: by count or fraction, random, stratified or the first N."""

from __future__ import annotations

import torch

from cnnlab.data.base import Split
from cnnlab.errors import DataError

METHODS = ("random", "stratified", "first")


def part_count(size: float, of: int) -> int:
    """A count (>= 1) as given, or a fraction (< 1) of `of` images, rounded."""
    return int(size) if size >= 1 else int(round(size * of))


def class_ids(labels: torch.Tensor) -> torch.Tensor:
    """One class id per sample: the label, or the first attribute set in a multi-label row."""
    return labels if labels.ndim == 1 else labels.argmax(1)


def carve(split: Split, size: float, of: int, seed: int, method: str = "random") -> tuple[Split, Split | None]:
    """Split `split` into (rest, part) with part_count(size, of) images in `part`.

    random: a seeded permutation; stratified: each class gives the same share (rounded, so the
    part's count may differ by a few); first: the first k images, as the textbook's Subset(range(k)).
    Both parts keep the source's order.
    """
    n = len(split)
    k = part_count(size, of)
    if k == 0:
        return split, None
    if k >= n:
        raise DataError(
            f"a part of {k} images (from {size:g}) leaves no training images out of {n}; "
            "use a smaller count or fraction"
        )
    if method == "first":
        return split.subset(slice(k, n)), split.subset(slice(0, k))
    g = torch.Generator().manual_seed(seed)
    if method == "stratified":
        ids = class_ids(split.labels)
        classes = torch.unique(ids)
        members = [(ids == c).nonzero().flatten() for c in classes.tolist()]
        # largest remainders: each class's share k * n_c / n, rounded so the shares add up to k exactly
        exact = torch.tensor([k * len(m) / n for m in members], dtype=torch.float64)
        take = exact.floor().long()
        for i in torch.argsort(exact - take, descending=True, stable=True)[: k - int(take.sum())].tolist():
            take[i] += 1
        part_idx = torch.cat([m[torch.randperm(len(m), generator=g)[:t]] for m, t in zip(members, take.tolist())])
    elif method == "random":
        part_idx = torch.randperm(n, generator=g)[:k]
    else:
        raise DataError(f"unknown split method {method!r}; use {', '.join(METHODS)}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[part_idx] = True
    return split.subset((~mask).nonzero().flatten()), split.subset(mask.nonzero().flatten())


def class_counts(split: Split, num_classes: int) -> torch.Tensor:
    """(num_classes,) images per class; for multi-label, images with each attribute set."""
    if split.labels.ndim == 2:
        return (split.labels > 0.5).sum(0).long()
    return torch.bincount(split.labels, minlength=num_classes)


def inverse_frequency_weights(split: Split, num_classes: int) -> torch.Tensor:
    """(num_classes,) loss weights n / (k * count): 1 for every class of a balanced split."""
    counts = class_counts(split, num_classes).double()
    return (counts.sum() / (num_classes * counts.clamp_min(1))).float()
