"""`cnnlab sweep`: a recipe trained over a grid of keys and several seeds, one run folder each.

A plain sweep runs every combination of the grid. A cumulative sweep (the KTH study's method) takes
the keys in order and tries each value on the best configuration so far, keeping it only where it
beats that configuration. Every run has its own folder under the sweep folder; a sweep that stops
halfway resumes where it stopped (finished runs are read back, an interrupted one resumes from its
last.pt). The table (sweep.md, sweep.csv, sweep.json) gives mean +- std over the seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import ConfigError
from cnnlab.runs import write_text

METRICS = ("accuracy", "balanced_accuracy")


def split_values(text: str) -> list[str]:
    """Split `a,b,[1, 2],c` at the commas outside brackets and braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """`key=v1,v2` strings -> [(key, [v1, v2])], values read as YAML (0.1 -> float, [64, 128] -> list)."""
    grid = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid expects key=v1,v2,..., got {item!r} (e.g. --grid optim.lr=0.1,0.05)")
        values = []
        for v in split_values(raw):
            try:
                values.append(yaml.safe_load(v))
            except yaml.YAMLError:
                values.append(v)
        grid.append((key.strip(), values))
    return grid


def _slug(overrides: dict[str, Any]) -> str:
    if not overrides:
        return "base"
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9=._+-]+", "", text.replace(" ", ""))[:80]


@dataclass
class Row:
    label: str  # what this configuration changes, e.g. "optim.lr=0.1"
    overrides: dict[str, Any]  # all keys over the recipe (a cumulative row carries the kept ones too)
    runs: list[str] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)  # the sweep's metric, one per seed
    accuracy: list[float] = field(default_factory=list)
    parameters: int = 0
    seconds: float = 0.0  # training time summed over the seeds
    kept: bool | None = None  # cumulative: did this configuration become the best so far

    @property
    def mean(self) -> float:
        return statistics.fmean(self.metric) if self.metric else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.metric) if len(self.metric) > 1 else 0.0


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


Train = Callable[..., Any]  # cnnlab.run.train_run


def _one_run(cfg: RunConfig, folder: Path, train: Train) -> dict[str, Any]:
    """metrics.json of the run in `folder`: read back when finished, resumed when interrupted, else trained."""
    metrics = folder / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    if (folder / "checkpoints" / "last.pt").is_file() and (folder / "config.yaml").is_file():
        return train(None, resume=folder).metrics
    if folder.exists():
        shutil.rmtree(folder)  # stopped before its first checkpoint: nothing to keep
    return train(cfg, out=str(folder)).metrics


def _run_row(base: RunConfig, label: str, overrides: dict[str, Any], seeds: int, metric: str, folder: Path, train: Train, log: Callable[[str], None]) -> Row:
    row = Row(label, dict(overrides))
    for s in range(seeds):
        seed = base.train.seed + s
        cfg = apply_overrides(base, {**overrides, "train.seed": seed})
        run_dir = folder / f"seed-{seed}"
        log(f"sweep: {label} (seed {seed}) -> {run_dir}")
        m = _one_run(cfg, run_dir, train)
        part = m.get("test") or m.get("val") or {}
        if metric not in part:
            raise ConfigError(f"--metric {metric} is not in {run_dir}/metrics.json; use one of {', '.join(k for k in METRICS if k in part)}")
        row.runs.append(str(run_dir))
        row.metric.append(float(part[metric]))
        row.accuracy.append(float(part["accuracy"]))
        row.parameters = int(m.get("num_parameters", 0))
        row.seconds += float(m.get("train_seconds", 0.0))
    return row


def run_sweep(base: RunConfig, grid: list[tuple[str, list[Any]]], *, seeds: int, out: Path, cumulative: bool = False, metric: str = "accuracy", train: Train | None = None, log: Callable[[str], None] = print) -> list[Row]:
    """Train the grid over `seeds` seeds under `out`; returns the rows and writes the tables."""
    if train is None:
        from cnnlab.run import train_run as train
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    for key, values in grid:  # every key and value is checked before the first run
        for v in values:
            apply_overrides(base, {key: v}).validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = yaml.safe_dump({"recipe": base.to_dict(), "grid": [[k, v] for k, v in grid], "seeds": seeds, "cumulative": cumulative, "metric": metric}, sort_keys=False)
    saved = out / "sweep.yaml"
    if saved.is_file() and saved.read_text() != plan:
        raise ConfigError(f"{out} holds another sweep (its sweep.yaml differs); give another --out, or rerun that sweep's own command to resume it")
    write_text(saved, plan)
    rows: list[Row] = []
    if cumulative:
        best = _run_row(base, "base", {}, seeds, metric, out / "00-base", train, log)
        best.kept = True
        rows.append(best)
        for key, values in grid:
            for v in values:
                trial = {**best.overrides, key: v}
                if trial == best.overrides:
                    continue
                row = _run_row(base, f"{key}={v}", trial, seeds, metric, out / f"{len(rows):02d}-{_slug({key: v})}", train, log)
                row.kept = row.mean > max(r.mean for r in rows if r.kept)
                rows.append(row)
                if row.kept:
                    best = row
    else:
        keys = [k for k, _ in grid]
        combos = list(itertools.product(*(vs for _, vs in grid))) if grid else [()]
        for i, combo in enumerate(combos):
            overrides = dict(zip(keys, combo))
            label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base"
            rows.append(_run_row(base, label, overrides, seeds, metric, out / f"{i:02d}-{_slug(overrides)}", train, log))
    write_tables(rows, out, metric, cumulative)
    return rows


def table_text(rows: list[Row], metric: str, cumulative: bool, fmt: str = "md") -> str:
    header = ["#", "configuration", f"{metric} % (mean ± std)", "test accuracy %", "seeds", "parameters", "train time"] + (["kept"] if cumulative else [])
    body = []
    for i, r in enumerate(rows):
        line = [str(i), r.label, _mean_std(r.metric), _mean_std(r.accuracy), str(len(r.metric)), f"{r.parameters:,}", f"{r.seconds:.1f} s"]
        if cumulative:
            line.append("yes" if r.kept else "no")
        body.append(line)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    fmt_line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([fmt_line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt_line, body)]) + "\n"


def write_tables(rows: list[Row], out: Path, metric: str, cumulative: bool) -> None:
    write_text(out / "sweep.md", table_text(rows, metric, cumulative))
    write_text(out / "sweep.csv", table_text(rows, metric, cumulative, "csv"))
    payload = [{**asdict(r), "mean": r.mean, "std": r.std} for r in rows]
    write_text(out / "sweep.json", json.dumps({"metric": metric, "cumulative": cumulative, "rows": payload}, indent=2) + "\n")
