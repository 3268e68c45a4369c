"""Figures of numbers: training and learning-rate curves (from history.csv and steps.csv), the
confusion matrix, per-class accuracy and the most-confused pairs (from metrics.json's figures).
matplotlib with the Agg backend (in a Jupyter kernel, the notebook's own), PNG files written atomically."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

# Agg: no screen needed and no window ever opens. In a Jupyter kernel the backend the notebook chose
# (inline unless it said otherwise) stays: switching it to Agg would show every figure after this
# import, a Run's and the user's own, as text.
if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnlab.run_folder import atomic_write, read_history, read_steps  # noqa: E402


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key, "") != ""]


def plot_training_curves(
    run_dir: Path, history: list[dict[str, str]] | None = None, steps: list[dict[str, str]] | None = None
) -> Path:
    """plots/curves.png: training loss per step and per epoch (left), accuracy per epoch (right).
    `history` and `steps` are the rows of the run's history.csv and steps.csv, read from `run_dir`
    where not given."""
    run_dir = Path(run_dir)
    history = read_history(run_dir) if history is None else history
    steps = read_steps(run_dir) if steps is None else steps
    epochs = [int(r["epoch"]) for r in history]
    spe = max(1, len(steps) // max(1, len(epochs)))  # steps per epoch, to put both on one x axis

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    if steps:
        x = [int(r["step"]) / spe for r in steps]
        ax_loss.plot(x, _floats(steps, "loss"), color="tab:blue", alpha=0.35, lw=0.8, label="train loss (per step)")
    ax_loss.plot(epochs, _floats(history, "train_loss"), "o-", color="tab:blue", label="train loss (epoch mean)")
    val_loss = _floats(history, "val_loss")
    if val_loss:
        ax_loss.plot(epochs[: len(val_loss)], val_loss, "s-", color="tab:orange", label="validation loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)

    ax_acc.plot(epochs, _floats(history, "train_accuracy"), "o-", color="tab:blue", label="train accuracy (augmented)")
    val_acc = _floats(history, "val_accuracy")
    if val_acc:
        ax_acc.plot(epochs[: len(val_acc)], val_acc, "s-", color="tab:orange", label="validation accuracy")
        best = max(range(len(val_acc)), key=val_acc.__getitem__)
        ax_acc.annotate(
            f"best {val_acc[best]:.4f}",
            (epochs[best], val_acc[best]),
            textcoords="offset points",
            xytext=(0, -16),
            ha="center",
            color="tab:orange",
        )
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_acc.legend(loc="lower right")
    ax_acc.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()

    return save(fig, run_dir / "plots" / "curves.png")


def save(fig, path: Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi), mode="wb")
    plt.close(fig)
    return path


def shorten(name: str, width: int = 14) -> str:
    """A class name cut to `width` characters with an ellipsis, so tick labels never overlap."""
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def plot_lr(run_dir: Path, steps: list[dict[str, str]] | None = None) -> Path | None:
    """plots/lr.png: the learning rate at every optimizer step (`steps`: steps.csv's rows, read from
    `run_dir` where not given); None for a run without steps."""
    run_dir = Path(run_dir)
    steps = read_steps(run_dir) if steps is None else steps
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot([int(r["step"]) for r in steps], _floats(steps, "lr"), color="tab:green")
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    ax.grid(alpha=0.3)
    return save(fig, run_dir / "plots" / "lr.png")


def plot_confusion(cm: list, classes: list[str], path: Path, title: str = "test") -> Path:
    """Raw counts (left) and row-normalised shares (right): rows are true classes, columns predictions."""
    m = np.asarray(cm, dtype=float)
    k = len(classes)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = max(4.5, 0.45 * k + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    labels = [shorten(c) for c in classes]
    small = k > 12
    for ax, data, fmt, name in (
        (axes[0], m, "{:.0f}", "counts"),
        (axes[1], norm, "{:.2f}", "share of each true class"),
    ):
        ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        ax.set_xticks(
            range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=7 if small else 9
        )
        ax.set_yticks(range(k), labels, fontsize=7 if small else 9)
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({name}), {title}")
        if k <= 20:
            top = data.max() if data.max() > 0 else 1
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        fmt.format(data[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6 if small else 8,
                        color="white" if data[i, j] > 0.6 * top else "black",
                    )
    fig.tight_layout()
    return save(fig, path)


def confused_pairs(cm: list, classes: list[str], n: int = 10) -> list[tuple[str, str, int, float]]:
    """The `n` largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    m = np.asarray(cm, dtype=float)
    pairs = [(m[i, j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and m[i, j] > 0]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(classes[i], classes[j], int(c), c / max(m[i].sum(), 1)) for c, i, j in pairs[:n]]


def plot_per_class(metrics: dict, classes: list[str], path: Path) -> Path:
    """Recall (per-class accuracy) per class with the worst one in red (left); the most-confused pairs (right)."""
    multilabel = bool(metrics.get("multilabel"))
    recall = [metrics["per_class"][c]["accuracy" if multilabel else "recall"] for c in classes]
    worst = metrics["worst_class"]
    pairs = confused_pairs(metrics["confusion_matrix"], classes) if not metrics.get("multilabel") else []
    k = len(classes)
    height = max(3.2, 0.32 * max(k, len(pairs)) + 1.2)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1, 1.1]})
    y = np.arange(k)
    ax.barh(y, recall, color=["tab:red" if c == worst else "tab:blue" for c in classes])
    ax.set_yticks(y, [shorten(c, 18) for c in classes], fontsize=8 if k > 12 else 9)
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1.08),
        xlabel="accuracy on the attribute" if multilabel else "recall (accuracy on the class)",
        title=f"Per-{'attribute' if multilabel else 'class'} accuracy (worst: {shorten(worst, 24)})",
    )
    for i, r in enumerate(recall):
        ax.text(min(r + 0.01, 1.0), i, f"{100 * r:.1f}%", va="center", fontsize=7)
    ax.axvline(metrics["accuracy"], color="gray", ls="--", lw=1, label=f"overall {100 * metrics['accuracy']:.2f}%")
    ax.legend(loc="lower right", fontsize=8)
    if pairs:
        labels = [f"{shorten(t, 14)} \u2192 {shorten(p, 14)}" for t, p, _, _ in pairs]
        ax2.barh(range(len(pairs)), [c for _, _, c, _ in pairs], color="tab:orange")
        ax2.set_yticks(range(len(pairs)), labels, fontsize=8)
        ax2.invert_yaxis()
        for i, (_, _, c, share) in enumerate(pairs):
            ax2.text(c, i, f" {c} ({100 * share:.1f}%)", va="center", fontsize=7)
        ax2.set(xlabel="test images", title="Most-confused pairs (true \u2192 predicted)")
        ax2.set_xlim(0, max(c for _, _, c, _ in pairs) * 1.3)
    else:
        ax2.axis("off")
        ax2.text(
            0.5,
            0.5,
            "no confusions" if not metrics.get("multilabel") else "multi-label: see the per-attribute table",
            ha="center",
            va="center",
        )
    fig.tight_layout()
    return save(fig, path)


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float, minimum: float, path: Path) -> Path:
    """cnnlab lr-find's figure: the smoothed loss against the learning rate (log axis), with the
    suggested rate (half the minimum) and the loss's minimum marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(lrs, losses, color="#2060c0", lw=2)
    ax.set_xscale("log")
    ax.axvline(suggestion, color="#e07020", ls="--", label=f"suggested: {suggestion:.3g} (half the minimum)")
    ax.axvline(minimum, color="#808080", ls=":", label=f"minimum of the loss: {minimum:.3g}")
    top = min(max(losses), 3 * min(losses) + 1e-12) if losses else 1.0
    ax.set_ylim(min(losses) * 0.95 if losses else 0, max(top, losses[0] * 1.05) if losses else 1)
    ax.set(xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
