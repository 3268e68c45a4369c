"""`cnnlab report RUN_DIR`: every figure of a run, and report.html with all of them on one page."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from cnnlab.data.base import Split
from cnnlab.engine.losses import Objective
from cnnlab.errors import DataError
from cnnlab.evaluation import Predictions, display_image, load_run, load_split, predict, split_loader
from cnnlab.report.gradcam import grad_cam
from cnnlab.report.html import image_tag, metrics_tables, pct, render, table
from cnnlab.report.images import plot_feature_maps, plot_filters, plot_gallery, plot_gradcam
from cnnlab.report.plots import confused_pairs, plot_confusion, plot_lr, plot_per_class, plot_training_curves, shorten
from cnnlab.run_folder import read_config, read_history, read_metrics, read_steps, write_json, write_text

GALLERY = 16  # worst misclassifications shown
CAM_IMAGES = 12  # Grad-CAM examples
DELETION_IMAGES = 100  # images the deletion test of the maps runs on (report/attribution.py)


@dataclass
class ReportInputs:
    """What the figures need beyond the run folder's files: the model and the test split it was scored on."""

    model: nn.Module
    objective: Objective
    classes: list[str]
    split: Split  # the part the figures show (test, else val)
    split_name: str
    batches: Callable[[Split], Any]  # split -> loader giving normalised batches as in evaluation
    predictions: Predictions
    preprocess: list
    channels: int
    mean: list | None = None  # the run's normalisation: what a black image is to the model (attribution.py)
    std: list | None = None


def inputs_from_run(run_dir: Path) -> ReportInputs:
    """Rebuild everything from the run folder alone (its best.pt and its data)."""
    run = load_run(run_dir)
    ds, split = load_split(run, "auto")
    name = "test" if split is ds.test else "val"
    preds = predict(run.model, split_loader(run, split), run.objective, run.tta())
    return ReportInputs(
        run.model,
        run.objective,
        run.classes,
        split,
        name,
        lambda s: split_loader(run, s, 64),
        preds,
        run.preprocess,
        run.input_shape[0],
        run.mean,
        run.std,
    )


def _normalised(inp: ReportInputs, indices: list[int]) -> torch.Tensor:
    xs = [x for x, _ in inp.batches(inp.split.subset(torch.tensor(indices, dtype=torch.long)))]
    return torch.cat(xs).float()


def _caption(inp: ReportInputs, row: int) -> str:
    """ "true: X / pred: Y (93%)" for prediction row `row`, names shortened to fit under an image."""
    p = inp.predictions
    k = int(p.probs[row].argmax())
    return (
        f"true: {shorten(inp.classes[int(p.targets[row])], 16)}\n"
        f"pred: {shorten(inp.classes[k], 16)} ({100 * float(p.probs[row, k]):.0f}%)"
    )


def write_figures(
    run_dir: Path,
    metrics: dict[str, Any],
    inp: ReportInputs | None,
    history: list[dict[str, str]] | None = None,
    steps: list[dict[str, str]] | None = None,
) -> dict[str, Path | None]:
    """plots/*.png: curves, lr, confusion, per-class, gallery, filters, feature maps, Grad-CAM.
    `history` and `steps` are the run's history.csv and steps.csv rows (read from `run_dir` where not given)."""
    plots = run_dir / "plots"
    figs: dict[str, Path | None] = {
        "curves": plot_training_curves(run_dir, history, steps),
        "lr": plot_lr(run_dir, steps),
    }
    test = metrics.get("test") or metrics.get("val")
    classes = list(test["per_class"]) if test else []
    if test and not test.get("multilabel"):
        figs["confusion"] = plot_confusion(test["confusion_matrix"], classes, plots / "confusion.png")
    if test:
        figs["per_class"] = plot_per_class(test, classes, plots / "per_class.png")
    if inp is None:
        return figs
    multilabel = inp.objective.multilabel
    show = lambda i: display_image(inp.split, i, inp.preprocess, inp.channels)  # noqa: E731
    index = inp.predictions.index.tolist()  # prediction row -> split index (undecodable files have no row)
    if not multilabel:
        wrong = (inp.predictions.probs.argmax(1) != inp.predictions.targets).nonzero().flatten()
        worst = wrong[inp.predictions.losses[wrong].argsort(descending=True)][:GALLERY].tolist()
        figs["gallery"] = (
            plot_gallery(
                [show(index[r]) for r in worst],
                [_caption(inp, r) for r in worst],
                ["darkred"] * len(worst),
                plots / "worst.png",
                f"The {len(worst)} misclassified {inp.split_name} images with the highest loss",
            )
            if worst
            else None
        )
    figs["filters"] = plot_filters(inp.model, plots / "filters.png")
    if index:
        figs["feature_maps"] = plot_feature_maps(
            inp.model, _normalised(inp, index[:1]), show(index[0]), plots / "feature_maps.png"
        )
        rows = list(range(min(CAM_IMAGES, len(index))))
        heats, _ = grad_cam(inp.model, _normalised(inp, [index[r] for r in rows]))
        titles = [f"image {index[r]}" if multilabel else _caption(inp, r) for r in rows]
        figs["gradcam"] = plot_gradcam([show(index[r]) for r in rows], heats, titles, plots / "gradcam.png")
        if _single_label(inp) and inp.mean is not None and inp.std is not None and _has_captum():
            figs["attribution"] = _attribution(inp, index, rows, titles, show, plots)
    return figs


def _has_captum() -> bool:
    """captum is a dependency of cnnlab; an install without it draws the report without integrated gradients."""
    import importlib.util

    return importlib.util.find_spec("captum") is not None


def _single_label(inp: ReportInputs) -> bool:
    """A softmax over two or more classes: what the deletion test's "probability of the predicted class" is."""
    return not inp.objective.multilabel and inp.predictions.probs.shape[1] > 1 and inp.objective.outputs > 1


def _attribution(inp: ReportInputs, index: list[int], rows: list[int], titles, show, plots: Path) -> Path:
    """plots/attribution.png (integrated gradients on the Grad-CAM images) and plots/deletion.json: the
    deletion test of both maps on the first DELETION_IMAGES images (report/attribution.py)."""
    from cnnlab.report.attribution import deletion_drops, integrated_gradients

    x = _normalised(inp, [index[r] for r in rows])
    heats, _ = integrated_gradients(inp.model, x, inp.mean, inp.std)
    path = plot_gradcam(
        [show(index[r]) for r in rows],
        heats,
        titles,
        plots / "attribution.png",
        title="Integrated gradients: each pixel's share of the predicted class's score against a black image",
    )
    x = _normalised(inp, index[:DELETION_IMAGES])
    with torch.no_grad():
        classes = inp.model(x).float().argmax(1)
    maps = {
        "integrated gradients": integrated_gradients(inp.model, x, inp.mean, inp.std, classes)[0],
        "Grad-CAM": grad_cam(inp.model, x, classes)[0],
    }
    drops = {name: deletion_drops(inp.model, x, heat, classes, inp.mean, inp.std) for name, heat in maps.items()}
    write_json(plots / "deletion.json", {"images": len(x), "split": inp.split_name, "drops": drops})
    return path


def write_report(run_dir: str | Path, inputs: ReportInputs | None = None, log=print) -> Path:
    """Write plots/*.png and report.html for `run_dir`. Without `inputs`, the model and test data are
    rebuilt from the run folder (best.pt and its recipe's data); where the data is not here, the page
    has the figures drawn from the run's files alone, and `log` says what is missing."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    history = read_history(run_dir)
    metrics = read_metrics(run_dir)
    missing = ""
    if inputs is None:
        try:
            inputs = inputs_from_run(run_dir)
        except DataError as e:  # the data moved or is on another machine: the numbers still draw
            missing = str(e).splitlines()[0]
            log(f"note: without the run's data ({missing}), the image figures are left out")
    figs = write_figures(run_dir, metrics, inputs, history=history, steps=read_steps(run_dir))
    subtitle = (
        f"data {metrics.get('data')} ({metrics.get('data_source', '')}), seed {metrics.get('seed')}, "
        f"{metrics.get('device')} {metrics.get('precision')}, loss {metrics.get('loss', '')}"
    )
    page = render(f"Run {run_dir.name}", subtitle, _cards(metrics), _sections(metrics, config, figs, missing))
    out = run_dir / "report.html"
    write_text(out, page)
    return out


def _cards(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures at the top of the page: accuracy with its counts, the worst class, epochs, model, time."""
    test = metrics.get("test") or metrics.get("val") or {}
    part = "test" if "test" in metrics else "validation"
    correct = round(test.get("accuracy", 0) * test.get("num_samples", 0))
    return [
        (f"{part} accuracy", f"{pct(test.get('accuracy'))} ({correct}/{test.get('num_samples', 0)})"),
        (
            "worst class",
            f"{test.get('worst_class', '')} ({pct(test['per_class'][test['worst_class']]['recall'])})"
            if test.get("worst_class")
            else "",
        ),
        ("best epoch", f"{metrics.get('best_epoch')} of {metrics.get('epochs_run')}"),
        ("model", f"{metrics.get('model')} ({metrics.get('num_parameters', 0):,} params)"),
        ("training time", f"{metrics.get('train_seconds', 0):.1f} s"),
    ]


def _deletion_table(attribution: Path | None) -> str:
    """The deletion test of the maps (plots/deletion.json beside `attribution`) as a table and a sentence."""
    path = attribution.parent / "deletion.json" if attribution is not None else None
    if path is None or not path.is_file():
        return ""
    import json

    found = json.loads(path.read_text())
    drops = found["drops"]
    shares = list(next(iter(drops.values()))["map"])
    rows = [[name, *(f"{d['map'][s]:.3f}" for s in shares)] for name, d in drops.items()]
    rows.append(["random order", *(f"{next(iter(drops.values()))['random'][s]:.3f}" for s in shares)])
    head = ["pixels set to black, hottest first by", *(f"{float(s):.0%}" for s in shares)]
    return (
        f"<p>The deletion test on {found['images']} {html.escape(found['split'])} images: the mean fall of the "
        "predicted class's probability when the hottest pixels by each map are set to black, against the same "
        "number of pixels in random order (the mean of 5 orders). A map worth reading makes it fall much further "
        "than random.</p>" + table(head, rows)
    )


def _sections(
    metrics: dict[str, Any], config: dict[str, Any], figs: dict[str, Path | None], missing: str
) -> list[tuple[str, str, str]]:
    """The page's (anchor, heading, body html) sections; those that need the run's data say why they
    are empty where it was `missing` (the first line of the error)."""
    test = metrics.get("test") or metrics.get("val") or {}
    part = "test" if "test" in metrics else "validation"
    classes = list(test.get("per_class", {}))
    pairs = confused_pairs(test["confusion_matrix"], classes, 8) if test and not test.get("multilabel") else []
    pair_table = (
        table(["true", "predicted as", "count", "share of the true class"], [[t, p, c, pct(s)] for t, p, c, s in pairs])
        if pairs
        else ""
    )
    sections = [
        (
            "curves",
            "Training curves",
            image_tag(figs.get("curves"), "loss and accuracy curves") + image_tag(figs.get("lr"), "learning rate"),
        ),
        ("metrics", f"Metrics ({part})", metrics_tables(test, classes) if test else "<p>No evaluation.</p>"),
        ("confusion", "Confusion matrix", image_tag(figs.get("confusion"), "confusion matrix")),
        (
            "per-class",
            "Per-class accuracy and the most-confused pairs",
            image_tag(figs.get("per_class"), "per-class accuracy") + pair_table,
        ),
        ("worst", "Worst misclassifications", image_tag(figs.get("gallery"), "worst misclassifications")),
        (
            "layers",
            "What the layers see",
            image_tag(figs.get("filters"), "first-layer filters") + image_tag(figs.get("feature_maps"), "feature maps"),
        ),
        (
            "gradcam",
            "Grad-CAM and integrated gradients",
            image_tag(figs.get("gradcam"), "Grad-CAM overlays")
            + image_tag(figs.get("attribution"), "integrated gradients")
            + _deletion_table(figs.get("attribution")),
        ),
        ("config", "Configuration", f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"),
    ]
    if missing:
        for i, (anchor, head, _) in enumerate(sections):
            if anchor in ("worst", "layers", "gradcam"):
                sections[i] = (
                    anchor,
                    head,
                    "<p><em>Not drawn: the run's data was not found when this page was written "
                    f"({html.escape(missing)}).</em></p>",
                )
    return sections
