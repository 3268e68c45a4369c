"""Training curves, drawn from a run folder's history.csv and steps.csv (matplotlib, Agg, PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402

from cnnlab.runs import atomic_write  # noqa: E402


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key, "") != ""]


def plot_training_curves(run_dir: Path) -> Path:
    """plots/curves.png: training loss per step and per epoch (left), accuracy per epoch (right)."""
    run_dir = Path(run_dir)
    history = read_csv(run_dir / "history.csv")
    steps = read_csv(run_dir / "steps.csv") if (run_dir / "steps.csv").is_file() else []
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
        ax_acc.annotate(f"best {val_acc[best]:.4f}", (epochs[best], val_acc[best]), textcoords="offset points", xytext=(0, -16), ha="center", color="tab:orange")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_acc.legend(loc="lower right")
    ax_acc.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()

    out = run_dir / "plots" / "curves.png"
    out.parent.mkdir(exist_ok=True)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)
    return out
