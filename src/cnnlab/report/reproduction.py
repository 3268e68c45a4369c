"""reproduction.html and reproduction.png: the report's figures and ours, side by side, on one page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from cnnlab.report.html import image_tag, render, table
from cnnlab.report.plots import plt, save, shorten

PANELS = [
    ("percent", lambda ln: ln.kind == "fraction" and not ln.relative),
    ("change (points)", lambda ln: ln.kind == "fraction" and ln.relative),
    ("loss", lambda ln: ln.kind == "loss"),
    ("epoch", lambda ln: ln.kind == "epoch"),
]


def plot_figures(res: Any, path: Path) -> Path | None:
    """Each figure as a row: the report's value (a diamond, or a band for a range) and ours (mean,
    a bar of ± one std over the seeds). Percentages, changes in points, losses and epochs each on a
    panel of their own; times, whose scales differ by thousands, are in the table only."""
    lines = [ln for ln in res.lines if ln.mean is not None and ln.kind != "seconds"]
    groups = [(xlabel, [ln for ln in lines if pick(ln)]) for xlabel, pick in PANELS]
    groups = [(xlabel, mine) for xlabel, mine in groups if mine]
    if not groups:
        return None
    tallest = max(len(mine) for _, mine in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(7.0 * len(groups), 0.5 * tallest + 1.6), squeeze=False)
    for ax, (xlabel, mine) in zip(axes[0], groups):
        for y, ln in enumerate(mine):
            rep = ln.reported_value
            if isinstance(rep, list):
                ax.plot(
                    [ln.scale * min(rep), ln.scale * max(rep)],
                    [y, y],
                    color="#f0a040",
                    lw=7,
                    alpha=0.6,
                    solid_capstyle="butt",
                    label="report (range)" if y == 0 else None,
                )
            else:
                ax.plot(ln.scale * rep, y, "D", color="#e07020", ms=8, label="report" if y == 0 else None)
            ax.errorbar(
                ln.scale * ln.mean,
                y,
                xerr=ln.scale * (ln.std or 0),
                fmt="o",
                color="#2060c0",
                ms=7,
                capsize=4,
                label="ours (mean ± std)" if y == 0 else None,
            )
        ax.set_yticks(range(len(mine)), [shorten(f"{ln.row}: {ln.figure}", 64) for ln in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{res.study.name}: the report's figures and ours")
    fig.tight_layout()
    return save(fig, path)


def first_runs(res: Any) -> list[tuple[str, Path]]:
    """(row name, its first seed's run folder) for each row that has a run: what the figures below draw."""
    return [(name, Path(row.runs[0])) for name, row in zip(res.names, res.rows) if row.runs]


def plot_two_panel(res: Any, path: Path) -> Path | None:
    """The lab's figure, laid out as the lab has it (figsize 15 x 9, two rows): the training loss
    against the iteration above the validation accuracy against the epoch, a line per row (its first
    seed's run)."""
    from cnnlab.report.plots import read_csv

    runs = [(name, d) for name, d in first_runs(res) if (d / "steps.csv").is_file() and (d / "history.csv").is_file()]
    if not runs:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 9))
    for name, d in runs:
        steps = read_csv(d / "steps.csv")
        top.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=1.5, label=name)
        hist = [r for r in read_csv(d / "history.csv") if r.get("val_accuracy")]
        bottom.plot([int(r["epoch"]) for r in hist], [float(r["val_accuracy"]) for r in hist], lw=3, label=name)
    top.set(ylabel="training loss", xlabel="Iterations")
    bottom.set(ylabel="validation accuracy", xlabel="Epochs")
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)  # the lab's sns.despine()
        ax.legend(fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def period_images(res: Any) -> str:
    """Each row's confusion matrix and curves after the first and the last period (its first seed's run)."""
    if not res.periods:
        return ""
    last = len(res.periods)
    parts = []
    for name, run in first_runs(res):
        plots = run / "plots"
        cells = [
            image_tag(
                plots / f"{kind}-period-{k}.png",
                f"{name}: {kind} after period {k} ({res.periods[k - 1]} epoch{'s' if res.periods[k - 1] != 1 else ''})",
            )
            for kind in ("confusion", "curves")
            for k in dict.fromkeys((1, last))
        ]
        parts.append(
            f"<h3>{html.escape(name)}</h3><p>after {res.periods[0]} and {res.periods[-1]} epochs</p>" + "".join(cells)
        )
    return "".join(parts)


def plot_predictions(res: Any, path: Path) -> Path | None:
    """cnnlab compare's figure: a few test images with each row's prediction (first seeds' runs)."""
    from cnnlab.errors import CnnlabError
    from cnnlab.report.compare import predictions_figure

    runs = first_runs(res)
    if not runs:
        return None
    try:
        return predictions_figure([d for _, d in runs], path, images=8, labels=[n for n, _ in runs])
    except CnnlabError:  # e.g. runs of other classes: the table still stands
        return None


def write_html(res: Any, rows: list[list[str]], header: list[str]) -> Path:
    from cnnlab.reproduce import _summary_lines, epochs_text, per_class_text, run_link
    from cnnlab.run_folder import write_text

    png = plot_figures(res, res.out / "reproduction.png")
    links = "".join(
        f"<li>{html.escape(name)}: "
        + ", ".join(f'<a href="{html.escape(run_link(res, r))}">{html.escape(Path(r).name)}</a>' for r in row.runs)
        + "</li>"
        for name, row in zip(res.names, res.rows)
    )
    sections = [
        ("table", "Figures", table(header, rows)),
        ("figure", "At a glance", image_tag(png, "the report's figures and ours")),
    ]
    if res.study.per_class:
        sections.append(("per-class", "Per-class accuracy", f"<pre>{html.escape(per_class_text(res))}</pre>"))
    if res.study.two_panel:
        sections.append(
            (
                "lab-figure",
                "Training loss and validation accuracy",
                image_tag(
                    plot_two_panel(res, res.out / "reproduction-curves.png"),
                    "training loss per iteration, validation accuracy per epoch",
                ),
            )
        )
    if res.periods:
        sections.append(("periods", "After the first and the last period", period_images(res)))
    if res.study.predictions:
        sections.append(
            (
                "predictions",
                "Predictions for a few test images",
                image_tag(
                    plot_predictions(res, res.out / "reproduction-predictions.png"),
                    "each model's prediction for the first test images",
                ),
            )
        )
    if res.study.examples:
        sections.append(
            (
                "examples",
                "The report's worked examples, computed by torch",
                f"<pre>{html.escape(res.worked_text)}</pre>",
            )
        )
    sections += [
        (
            "about",
            "How these were made",
            "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in _summary_lines(res)) + "</ul>",
        ),
        ("runs", "Run folders", f"<ul>{links}</ul>"),
    ]
    cards = [
        ("data", res.data + (" (stand-in)" if res.stand_in else "")),
        ("seeds", str(res.seeds)),
        ("epochs", epochs_text(res)),
        ("wall time", f"{res.wall_seconds:.0f} s"),
    ]
    page = render(f"Reproduction: {res.study.name}", res.study.report, cards, sections)
    path = res.out / "reproduction.html"
    write_text(path, page)
    return path
