"""`cnnlab compare RUN_DIR...`: one table across runs, and every run's prediction for the same test images."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.evaluation import display_image, load_run, load_split, predict, split_loader
from cnnlab.report.images import plot_predictions_grid
from cnnlab.report.tables import markdown_table
from cnnlab.run_folder import read_metrics

COLUMNS = ["run", "model", "data", "parameters", "best epoch", "test accuracy", "test loss", "train time"]


def _metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a run to compare; where it is missing, the message asks for finished runs."""
    if not (Path(run_dir) / "metrics.json").is_file():
        why = (
            "not a run folder"
            if not (Path(run_dir) / "config.yaml").is_file()
            else "its training was interrupted before the test evaluation"
        )
        raise CnnlabError(f"{run_dir} has no metrics.json ({why}); give run folders that cnnlab train finished")
    return read_metrics(run_dir)


def compare_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, str]]:
    """One row per run, as strings ready to print; test accuracy with its counts, "97.98% (11937/12183)"."""
    rows = []
    for d in run_dirs:
        m = _metrics(Path(d))
        part = m.get("test") or m.get("val") or {}
        n = part.get("num_samples", 0)
        acc = part.get("accuracy", 0.0)
        rows.append(
            {
                "run": Path(d).name,
                "model": str(m.get("model", "")),
                "data": str(m.get("data", "")),
                "parameters": f"{m.get('num_parameters', 0):,}",
                "best epoch": f"{m.get('best_epoch')} of {m.get('epochs_run')}",
                "test accuracy": f"{100 * acc:.2f}% ({round(acc * n)}/{n})",
                "test loss": f"{part.get('loss', float('nan')):.4f}",
                "train time": f"{m.get('train_seconds', 0):.1f} s",
            }
        )
    return rows


def format_table(rows: list[dict[str, str]], fmt: str = "md") -> str:
    """The rows as a markdown, CSV or HTML table."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in COLUMNS) + "</tr>" for r in rows)
        return f"<table>\n<tr>{head}</tr>\n{body}\n</table>\n"
    return markdown_table(COLUMNS, [[r[c] for c in COLUMNS] for r in rows])


def predictions_figure(
    run_dirs: Sequence[str | Path], out: Path, images: int = 8, labels: Sequence[str] | None = None
) -> Path:
    """Each run's prediction for the first `images` test images of the first run's data (each row
    named by `labels`, or by its folder's name)."""
    runs = [load_run(d) for d in run_dirs]
    first = runs[0]
    others = [r for r in runs[1:] if r.classes != first.classes]
    if others:
        raise CnnlabError(
            f"{others[0].checkpoint} has other classes than {first.checkpoint}; "
            "compare runs trained on the same classes"
        )
    ds, split = load_split(first, "auto")
    ids = torch.arange(min(images, len(split)))
    subset = split.subset(ids)
    rows = []
    for d, run, label in zip(run_dirs, runs, labels or [Path(d).name for d in run_dirs]):
        if run.input_shape != first.input_shape or run.preprocess != first.preprocess:
            _, sub = load_split(run, "auto")  # the same images, prepared as this run expects
            sub = sub.subset(ids)
        else:
            sub = subset
        p = predict(run.model, split_loader(run, sub, 64), run.objective, tta=run.tta())  # as the run was tested
        if run.objective.multilabel:
            raise CnnlabError("the predictions figure is for single-label runs; the table above still compares them")
        if len(p.index) != len(ids):
            raise CnnlabError(
                f"some of the first {len(ids)} test images did not decode for {d}; cnnlab data check lists them"
            )
        k = p.probs.argmax(1)
        rows.append((label, [run.classes[int(i)] for i in k], [float(p.probs[j, k[j]]) for j in range(len(k))]))
    truths = [first.classes[int(y)] for y in subset.labels]
    pics = [display_image(subset, i, first.preprocess, first.input_shape[0]) for i in range(len(subset))]
    return plot_predictions_grid(pics, truths, rows, Path(out))
