"""reproduction.html and reproduction.png: the report's figures and ours, side by side, on one page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from cnnlab.report.html import image_tag, render, table
from cnnlab.report.plots import plt, save, shorten


def plot_figures(res: Any, path: Path) -> Path | None:
    """Each figure as a row: the report's value (a diamond, or a band for a range) and ours (mean,
    a bar of ± one std over the seeds). Percentages on one panel, changes in points on another."""
    lines = [ln for ln in res.lines if ln.mean is not None and ln.scale == 100]
    if not lines:
        return None
    panels = [ln.relative for ln in lines]
    groups = [(False, "percent"), (True, "change (points)")]
    groups = [(rel, xlabel) for rel, xlabel in groups if rel in panels]
    fig, axes = plt.subplots(1, len(groups), figsize=(8.0 * len(groups), 0.5 * len(lines) + 1.6), squeeze=False)
    for ax, (rel, xlabel) in zip(axes[0], groups):
        mine = [ln for ln, p in zip(lines, panels) if p == rel]
        for y, ln in enumerate(mine):
            rep = ln.reported_value
            if isinstance(rep, list):
                ax.plot([100 * min(rep), 100 * max(rep)], [y, y], color="#f0a040", lw=7, alpha=0.6, solid_capstyle="butt", label="report (range)" if y == 0 else None)
            else:
                ax.plot(100 * rep, y, "D", color="#e07020", ms=8, label="report" if y == 0 else None)
            ax.errorbar(100 * ln.mean, y, xerr=100 * (ln.std or 0), fmt="o", color="#2060c0", ms=7, capsize=4, label="ours (mean ± std)" if y == 0 else None)
        ax.set_yticks(range(len(mine)), [shorten(f"{ln.row}: {ln.figure}", 64) for ln in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{res.study.name}: the report's figures and ours")
    fig.tight_layout()
    return save(fig, path)


def write_html(res: Any, rows: list[list[str]], header: list[str]) -> Path:
    from cnnlab.reproduce import _summary_lines, epochs_text, per_class_text, run_link
    from cnnlab.runs import write_text

    png = plot_figures(res, res.out / "reproduction.png")
    links = "".join(
        f"<li>{html.escape(name)}: " + ", ".join(f'<a href="{html.escape(run_link(res, r))}">{html.escape(Path(r).name)}</a>' for r in row.runs) + "</li>"
        for name, row in zip(res.names, res.rows)
    )
    sections = [
        ("table", "Figures", table(header, rows)),
        ("figure", "At a glance", image_tag(png, "the report's figures and ours")),
    ]
    if res.study.per_class:
        sections.append(("per-class", "Per-class accuracy", f"<pre>{html.escape(per_class_text(res))}</pre>"))
    sections += [("about", "How these were made", "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in _summary_lines(res)) + "</ul>"), ("runs", "Run folders", f"<ul>{links}</ul>")]
    cards = [("data", res.data + (" (stand-in)" if res.stand_in else "")), ("seeds", str(res.seeds)), ("epochs", epochs_text(res)), ("wall time", f"{res.wall_seconds:.0f} s")]
    page = render(f"Reproduction: {res.study.name}", res.study.report, cards, sections)
    path = res.out / "reproduction.html"
    write_text(path, page)
    return path
