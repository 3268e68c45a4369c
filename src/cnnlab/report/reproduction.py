"""reproduction.html and reproduction.png: the report's figures and ours, side by side, on one page.

The page is drawn from plain data (ReproductionPage) that cnnlab.reproduce works out: text, numbers
and run folders, so this module needs nothing of the study's own classes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cnnlab.report.html import image_tag, render, table
from cnnlab.report.plots import plt, save, shorten
from cnnlab.run_folder import read_history, read_steps, report_link, write_text


class PlottedFigure(Protocol):
    """One figure of the table as numbers (cnnlab.reproduce.FigureLine has these fields)."""

    row: str  # the study's row
    figure: str  # what the figure is, e.g. "test accuracy"
    kind: str  # fraction | loss | epoch | seconds
    relative: bool  # a change from another row, in points
    reported_value: float | list[float] | None  # the report's number, its [low, high] range, or None (not in it)
    mean: float | None  # ours over the seeds (None: no run has it)
    std: float | None
    scale: float  # 100 for fractions shown as %, 1 for losses, epochs and seconds


@dataclass
class ReproductionPage:
    """What reproduction.html shows, as text and numbers worked out by cnnlab.reproduce."""

    study: str  # the study's name
    report: str  # the source report it reproduces (the page's subtitle)
    out: Path  # the reproduction folder: the page and its figures go here, the run folders are under it
    header: list[str]
    table: list[list[str]]  # the figures' table, as reproduction.md has it
    lines: Sequence[PlottedFigure]  # the same figures as numbers, for reproduction.png
    runs: list[tuple[str, list[str]]]  # (row name, its run folders: one per seed), in the table's order
    summary: list[str]  # how the figures were made, one sentence each
    data: str  # the data read
    stand_in: bool  # that data stands in for the report's
    seeds: int
    epochs: str  # the epochs trained, as the summary gives them
    wall_seconds: float
    periods: list[int] = field(default_factory=list)  # each period's last epoch, as trained (empty: one period)
    per_class: str | None = None  # each row's per-class accuracy, where the study shows it
    worked: str | None = None  # the report's worked examples as torch computes them, where the study has some
    two_panel: bool = False  # draw the report's figure: training loss per iteration over val accuracy per epoch
    predictions: bool = False  # draw a few test images with each row's prediction (cnnlab compare's figure)


PANELS = [
    ("percent", lambda ln: ln.kind == "fraction" and not ln.relative),
    ("change (points)", lambda ln: ln.kind == "fraction" and ln.relative),
    ("loss", lambda ln: ln.kind == "loss"),
    ("epoch", lambda ln: ln.kind == "epoch"),
]


def _once(labelled: set[str], kind: str) -> str | None:
    """`kind` the first time it is asked for (a legend entry), None after."""
    if kind in labelled:
        return None
    labelled.add(kind)
    return kind


def plot_figures(lines: Sequence[PlottedFigure], study: str, path: Path) -> Path | None:
    """Each figure as a row: the report's value (a diamond, or a band for a range) and ours (mean,
    a bar of ± one std over the seeds). Percentages, changes in points, losses and epochs each on a
    panel of their own; times, whose scales differ by thousands, are in the table only."""
    lines = [ln for ln in lines if ln.mean is not None and ln.kind != "seconds"]
    groups = [(xlabel, [ln for ln in lines if pick(ln)]) for xlabel, pick in PANELS]
    groups = [(xlabel, mine) for xlabel, mine in groups if mine]
    if not groups:
        return None
    tallest = max(len(mine) for _, mine in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(7.0 * len(groups), 0.5 * tallest + 1.6), squeeze=False)
    for ax, (xlabel, mine) in zip(axes[0], groups):
        labelled: set[str] = set()  # each legend entry once, on the first marker of its kind (not row 0's)
        for y, ln in enumerate(mine):
            rep = ln.reported_value
            if rep is None:  # a row the report does not have: ours alone
                pass
            elif isinstance(rep, list):
                ax.plot(
                    [ln.scale * min(rep), ln.scale * max(rep)],
                    [y, y],
                    color="#f0a040",
                    lw=7,
                    alpha=0.6,
                    solid_capstyle="butt",
                    label=_once(labelled, "report (range)"),
                )
            else:
                ax.plot(ln.scale * rep, y, "D", color="#e07020", ms=8, label=_once(labelled, "report"))
            ax.errorbar(
                ln.scale * ln.mean,
                y,
                xerr=ln.scale * (ln.std or 0),
                fmt="o",
                color="#2060c0",
                ms=7,
                capsize=4,
                label=_once(labelled, "ours (mean ± std)"),
            )
        ax.set_yticks(range(len(mine)), [shorten(f"{ln.row}: {ln.figure}", 64) for ln in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{study}: the report's figures and ours")
    fig.tight_layout()
    return save(fig, path)


def first_runs(runs: list[tuple[str, list[str]]]) -> list[tuple[str, Path]]:
    """(row name, its first seed's run folder) for each row that has a run: what the figures below draw."""
    return [(name, Path(folders[0])) for name, folders in runs if folders]


def plot_two_panel(runs: list[tuple[str, list[str]]], path: Path) -> Path | None:
    """The lab's figure, laid out as the lab has it (figsize 15 x 9, two rows): the training loss
    against the iteration above the validation accuracy against the epoch, a line per row (its first
    seed's run)."""
    drawn = [(name, d) for name, d in first_runs(runs) if (d / "steps.csv").is_file() and (d / "history.csv").is_file()]
    if not drawn:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 9))
    for name, d in drawn:
        steps = read_steps(d)
        top.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=1.5, label=name)
        hist = [r for r in read_history(d) if r.get("val_accuracy")]
        bottom.plot([int(r["epoch"]) for r in hist], [float(r["val_accuracy"]) for r in hist], lw=3, label=name)
    top.set(ylabel="training loss", xlabel="Iterations")
    bottom.set(ylabel="validation accuracy", xlabel="Epochs")
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)  # the lab's sns.despine()
        ax.legend(fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def period_images(runs: list[tuple[str, list[str]]], periods: list[int]) -> str:
    """Each row's confusion matrix and curves after the first and the last of the `periods` (each
    period's last epoch), from its first seed's run."""
    if not periods:
        return ""
    last = len(periods)
    parts = []
    for name, run in first_runs(runs):
        plots = run / "plots"
        cells = [
            image_tag(
                plots / f"{kind}-period-{k}.png",
                f"{name}: {kind} after period {k} ({periods[k - 1]} epoch{'s' if periods[k - 1] != 1 else ''})",
            )
            for kind in ("confusion", "curves")
            for k in dict.fromkeys((1, last))
        ]
        parts.append(f"<h3>{html.escape(name)}</h3><p>after {periods[0]} and {periods[-1]} epochs</p>" + "".join(cells))
    return "".join(parts)


def plot_predictions(runs: list[tuple[str, list[str]]], path: Path) -> Path | None:
    """cnnlab compare's figure: a few test images with each row's prediction (first seeds' runs)."""
    from cnnlab.errors import CnnlabError
    from cnnlab.report.compare import predictions_figure

    first = first_runs(runs)
    if not first:
        return None
    try:
        return predictions_figure([d for _, d in first], path, images=8, labels=[n for n, _ in first])
    except CnnlabError:  # e.g. runs of other classes: the table still stands
        return None


def write_html(page: ReproductionPage) -> Path:
    """reproduction.html in page.out, with reproduction.png and the figures the study asks for beside it."""
    png = plot_figures(page.lines, page.study, page.out / "reproduction.png")
    links = "".join(
        f"<li>{html.escape(name)}: "
        + ", ".join(
            f'<a href="{html.escape(report_link(r, page.out))}">{html.escape(Path(r).name)}</a>' for r in folders
        )
        + "</li>"
        for name, folders in page.runs
    )
    sections = [
        ("table", "Figures", table(page.header, page.table)),
        ("figure", "At a glance", image_tag(png, "the report's figures and ours")),
        *_study_sections(page),
        (
            "about",
            "How these were made",
            "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in page.summary) + "</ul>",
        ),
        ("runs", "Run folders", f"<ul>{links}</ul>"),
    ]
    cards = [
        ("data", page.data + (" (stand-in)" if page.stand_in else "")),
        ("seeds", str(page.seeds)),
        ("epochs", page.epochs),
        ("wall time", f"{page.wall_seconds:.0f} s"),
    ]
    path = page.out / "reproduction.html"
    write_text(path, render(f"Reproduction: {page.study}", page.report, cards, sections))
    return path


def _study_sections(page: ReproductionPage) -> list[tuple[str, str, str]]:
    """The sections only some studies have: per-class accuracy, the report's own figure, the periods,
    the predictions and the worked examples (their figures are drawn here, in that order)."""
    sections = []
    if page.per_class is not None:
        sections.append(("per-class", "Per-class accuracy", f"<pre>{html.escape(page.per_class)}</pre>"))
    if page.two_panel:
        sections.append(
            (
                "lab-figure",
                "Training loss and validation accuracy",
                image_tag(
                    plot_two_panel(page.runs, page.out / "reproduction-curves.png"),
                    "training loss per iteration, validation accuracy per epoch",
                ),
            )
        )
    if page.periods:
        sections.append(("periods", "After the first and the last period", period_images(page.runs, page.periods)))
    if page.predictions:
        sections.append(
            (
                "predictions",
                "Predictions for a few test images",
                image_tag(
                    plot_predictions(page.runs, page.out / "reproduction-predictions.png"),
                    "each model's prediction for the first test images",
                ),
            )
        )
    if page.worked is not None:
        sections.append(
            ("examples", "The report's worked examples, computed by torch", f"<pre>{html.escape(page.worked)}</pre>")
        )
    return sections
