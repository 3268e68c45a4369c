"""Figures of images: the worst misclassifications, the first layer's filters, every conv layer's
feature maps for one image, Grad-CAM overlays, and several runs' predictions side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab.report.plots import plt, save, shorten


def _show(ax, img: torch.Tensor) -> None:
    """An (H, W, C) [0, 1] image: grey for one channel."""
    a = img.detach().cpu().numpy()
    ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray" if a.shape[-1] == 1 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_gallery(
    images: Sequence[torch.Tensor], titles: Sequence[str], colors: Sequence[str], path: Path, title: str, cols: int = 8
) -> Path:
    """A grid of images, each with a short caption."""
    n = max(1, len(images))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, c in zip(axes.flat, images, titles, colors):
        ax.axis("on")
        _show(ax, img)
        ax.set_title(t, fontsize=7, color=c)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_filters(model: nn.Module, path: Path, limit: int = 64) -> Path | None:
    """The first conv layer's filters: in colour for 3 input channels, else the mean over them."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    w = convs[0].weight.detach().float().cpu()[:limit]  # (out, in, k, k)
    imgs = w.permute(0, 2, 3, 1) if w.shape[1] == 3 else w.mean(1, keepdim=True).permute(0, 2, 3, 1)
    lo = imgs.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = imgs.flatten(1).max(1).values.view(-1, 1, 1, 1)
    imgs = (imgs - lo) / (hi - lo).clamp_min(1e-12)
    cols = min(16, len(imgs))
    rows = math.ceil(len(imgs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.75 * cols, 0.8 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, imgs):
        _show(ax, img)
    k = tuple(w.shape[2:])
    fig.suptitle(
        f"First conv layer: {convs[0].out_channels} filters of {k[0]}x{k[1]} over {convs[0].in_channels} channel(s) "
        f"(first {len(imgs)} shown)",
        fontsize=9,
    )
    fig.tight_layout()
    return save(fig, path)


@torch.no_grad()
def plot_feature_maps(
    model: nn.Module, x: torch.Tensor, image: torch.Tensor, path: Path, per_layer: int = 8
) -> Path | None:
    """For one normalised image `x` (1, C, H, W): the first `per_layer` channels of every conv layer's output."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    maps: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: maps.append((name, out.detach().float().cpu()[0])))
        for name, m in convs
    ]
    was_training = model.training
    model.eval()
    try:
        model(x.float())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = len(maps)
    fig, axes = plt.subplots(rows, per_layer + 1, figsize=(1.25 * (per_layer + 1), 1.35 * rows + 0.4), squeeze=False)
    for r, (name, fm) in enumerate(maps):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                _show(ax, image)
                ax.set_ylabel(f"{shorten(name, 16)}\n{fm.shape[0]}x{fm.shape[1]}x{fm.shape[2]}", fontsize=7)
            elif c - 1 < fm.shape[0]:
                ax.imshow(fm[c - 1].numpy(), cmap="viridis")
            else:
                ax.axis("off")
    fig.suptitle("Feature maps of every conv layer for one test image (first channels)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_gradcam(
    images: Sequence[torch.Tensor],
    heats: torch.Tensor,
    titles: Sequence[str],
    path: Path,
    cols: int = 6,
    title: str = "Grad-CAM: where the evidence for the predicted class lies (red: most)",
) -> Path:
    """Each image above its heat map overlaid (jet, half transparent): Grad-CAM's, or another map's."""
    n = len(images)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.0 * cols, 4.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, heat, t) in enumerate(zip(images, heats, titles)):
        r, c = 2 * (i // cols), i % cols
        _show(axes[r][c], img)
        axes[r][c].axis("on")
        axes[r][c].set_title(t, fontsize=7)
        _show(axes[r + 1][c], img)
        axes[r + 1][c].axis("on")
        axes[r + 1][c].imshow(heat.cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_predictions_grid(
    images: Sequence[torch.Tensor],
    truths: Sequence[str],
    rows: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    path: Path,
) -> Path:
    """Several runs' predictions for the same images: one row per run, green when right, red when wrong."""
    cols = len(images)
    heights = [1.0] + [0.4] * len(rows)  # the images, then one short row of predictions per run
    fig, axes = plt.subplots(
        len(rows) + 1,
        cols,
        figsize=(1.7 * cols, 1.75 * sum(heights) + 0.4),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for c, (img, truth) in enumerate(zip(images, truths)):
        _show(axes[0][c], img)
        axes[0][c].set_title(f"true: {shorten(truth, 12)}", fontsize=7)
    axes[0][0].set_ylabel("image", fontsize=8)
    for r, (name, preds, probs) in enumerate(rows, start=1):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            right = preds[c] == truths[c]
            ax.set_facecolor("#e6f4ea" if right else "#fde8e8")
            ax.text(
                0.5,
                0.5,
                f"{shorten(preds[c], 12)}\n{100 * probs[c]:.0f}%",
                ha="center",
                va="center",
                fontsize=8,
                color="darkgreen" if right else "darkred",
                transform=ax.transAxes,
            )
        axes[r][0].set_ylabel(shorten(name, 18), fontsize=8)
    fig.suptitle("Each run's prediction for the same test images", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def heat_inside_ratio(heats: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean heat on the object's pixels divided by the mean heat on the background, over all images."""
    inside = float(heats[masks].mean()) if bool(masks.any()) else 0.0
    outside = float(heats[~masks].mean()) if bool((~masks).any()) else 0.0
    return inside / outside if outside > 0 else float("inf")


__all__ = [
    "heat_inside_ratio",
    "plot_feature_maps",
    "plot_filters",
    "plot_gallery",
    "plot_gradcam",
    "plot_predictions_grid",
]
