"""`cnnlab sweep`: a recipe trained over a grid of keys and several seeds, one run folder each.

A plain sweep runs every combination of the grid. A cumulative sweep (the KTH study's method) takes
the keys in order and tries each value on the best configuration so far, keeping it only where it
beats that configuration. Every run has its own folder under the sweep folder; a sweep that stops
halfway resumes where it stopped (finished runs are read back, an interrupted one resumes from its
last.pt). The table (sweep.md, sweep.csv, sweep.json) gives mean +- std over the seeds. A search
(`--search optuna`) is search.py's; it shares train_or_resume and the table files with the grid.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shutil
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import RunConfig, apply_overrides, flatten
from cnnlab.errors import ConfigError
from cnnlab.report.tables import markdown_table
from cnnlab.run_folder import read_config, read_metrics, write_json, write_text

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


def parse_values(text: str) -> list[Any]:
    """`a,b,[1, 2],c` as values: each read as YAML (numbers, lists, true), text where it is not YAML."""
    values: list[Any] = []
    for v in split_values(text):
        try:
            values.append(yaml.safe_load(v))
        except yaml.YAMLError:
            values.append(v)
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """`key=v1,v2` strings -> [(key, [v1, v2])], values read as YAML (0.1 -> float, [64, 128] -> list)."""
    grid = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid expects key=v1,v2,..., got {item!r} (e.g. --grid optim.lr=0.1,0.05)")
        grid.append((key.strip(), parse_values(raw)))
    return grid


def _overrides_slug(overrides: dict[str, Any]) -> str:
    """A row's folder name from the keys it changes: {"optim.lr": 0.1} -> "lr=0.1"; no change -> "base"."""
    if not overrides:
        return "base"
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9=._+-]+", "", text.replace(" ", ""))[:80]


@dataclass
class SweepRow:
    """One configuration of a sweep (or a reproduction's row), trained over the seeds: its runs and figures."""

    label: str  # what this configuration changes, e.g. "optim.lr=0.1"
    overrides: dict[str, Any]  # all keys over the recipe (a cumulative row carries the kept ones too)
    runs: list[str] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)  # the sweep's metric, one per seed
    accuracy: list[float] = field(default_factory=list)
    parameters: int = 0
    seconds: float = 0.0  # training time summed over the seeds
    kept: bool | None = None  # cumulative: did this configuration become the best so far
    metrics: list[dict[str, Any]] = field(
        default_factory=list, repr=False
    )  # each seed's metrics.json (the last period's)
    periods: list[list[dict[str, Any]]] = field(
        default_factory=list, repr=False
    )  # each seed's metrics after each period

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


TrainFn = Callable[..., Any]  # trains one run, as cnnlab.run.train_run(cfg, out=..., resume=..., overrides=...)


def _read_json(path: Path) -> dict[str, Any]:
    """A metrics-period-K.json the sweep wrote (a copy of metrics.json after period K)."""
    return json.loads(path.read_text())


def train_or_resume(cfg: RunConfig, folder: Path, train: TrainFn) -> dict[str, Any]:
    """metrics.json of the run in `folder`: read back when finished, resumed when interrupted, else trained."""
    if (folder / "metrics.json").is_file():
        return read_metrics(folder)
    if (folder / "checkpoints" / "last.pt").is_file() and (folder / "config.yaml").is_file():
        return train(None, resume=folder).metrics
    if folder.exists():
        shutil.rmtree(folder)  # stopped before its first checkpoint: nothing to keep
    return train(cfg, out=str(folder)).metrics


def _period_runs(cfg: RunConfig, folder: Path, periods: list[int], train: TrainFn) -> list[dict[str, Any]]:
    """One run trained in periods (e.g. 10, 20, 30 epochs), each period a `--resume --epochs N` of the
    last; metrics-period-K.json keeps what the run scored after period K. Returns them in order.

    A period is done when metrics.json says the run reached its end (epochs_run), or stopped early
    (early stopping, a time limit) with the period's end configured; a run stopped early is not
    trained further: its later periods repeat its last figures."""
    out: list[dict[str, Any]] = []
    for k, end in enumerate(periods, 1):
        snap = folder / f"metrics-period-{k}.json"
        if not snap.is_file():
            if out and out[-1].get("stop_reason"):
                _keep_period_plots(folder, k)
                write_json(snap, out[-1])
                out.append(out[-1])
                continue
            m = read_metrics(folder) if (folder / "metrics.json").is_file() else None
            configured = read_config(folder)["train"]["epochs"] if (folder / "config.yaml").is_file() else None
            done = m is not None and (m.get("epochs_run") == end or (bool(m.get("stop_reason")) and configured == end))
            if not done:
                if k == 1:
                    train_or_resume(apply_overrides(cfg, {"train.epochs": end}), folder, train)
                else:
                    train(None, resume=folder, overrides={"train.epochs": end, "train.min_steps": None})
            _keep_period_plots(folder, k)
            write_text(snap, (folder / "metrics.json").read_text())
        out.append(_read_json(snap))
    return out


PERIOD_PLOTS = ("confusion", "curves")  # the report draws them again after each period: each period's is kept


def _keep_period_plots(folder: Path, k: int) -> None:
    """plots/confusion.png -> plots/confusion-period-K.png (and curves): the next period redraws them."""
    from cnnlab.run_folder import atomic_write

    for name in PERIOD_PLOTS:
        src = folder / "plots" / f"{name}.png"
        if src.is_file():
            data = src.read_bytes()
            atomic_write(folder / "plots" / f"{name}-period-{k}.png", lambda f, data=data: f.write(data), mode="wb")


def _run_row(
    base: RunConfig,
    label: str,
    overrides: dict[str, Any],
    seeds: int,
    metric: str,
    folder: Path,
    train: TrainFn,
    log: Callable[[str], None],
    periods: list[int] | None = None,
) -> SweepRow:
    row = SweepRow(label, dict(overrides))
    for s in range(seeds):
        seed = base.train.seed + s
        cfg = apply_overrides(base, {**overrides, "train.seed": seed})
        run_dir = folder / f"seed-{seed}"
        log(f"{label} (seed {seed}) -> {run_dir}")
        if periods:
            row.periods.append(_period_runs(cfg, run_dir, periods, train))
            m = row.periods[-1][-1]
        else:
            m = train_or_resume(cfg, run_dir, train)
        part = m.get("test") or m.get("val") or {}
        if metric not in part:
            raise ConfigError(
                f"--metric {metric} is not in {run_dir}/metrics.json; "
                f"use one of {', '.join(k for k in METRICS if k in part)}"
            )
        row.runs.append(str(run_dir))
        row.metrics.append(m)
        row.metric.append(float(part[metric]))
        row.accuracy.append(float(part["accuracy"]))
        row.parameters = int(m.get("num_parameters", 0))
        row.seconds += float(m.get("train_seconds", 0.0))
    return row


def guard_plan(out: Path, name: str, plan: dict[str, Any], what: str) -> None:
    """Write the plan of a sweep (or reproduction) as out/NAME; refuse a folder that holds another plan,
    naming the first key that differs. A config key the saved plan lacks, at its default here, was
    added to cnnlab after that plan was written: it does not count as a difference."""
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(plan, sort_keys=False)
    saved = out / name
    if saved.is_file() and saved.read_text() != text:
        new = flatten(plan)
        try:
            old = flatten(yaml.safe_load(saved.read_text()))
            added = {
                k for k, v in flatten({"recipe": RunConfig().to_dict()}).items() if k not in old and new.get(k) == v
            }
            key = next(
                (k for k in list(old) + list(new) if k not in added and old.get(k, "(unset)") != new.get(k, "(unset)")),
                None,
            )
        except (yaml.YAMLError, AttributeError):
            old, key = {}, ""
        if key is not None:
            detail = f": {key} is {old.get(key, '(unset)')!r} there and {new.get(key, '(unset)')!r} here" if key else ""
            raise ConfigError(
                f"{out} holds another {what} ({name} differs{detail}); "
                f"give another --out, or rerun that {what}'s own command to resume it"
            )
    write_text(saved, text)


def run_rows(
    base: RunConfig,
    steps: list[tuple[str, dict[str, Any], str]],
    *,
    seeds: int,
    out: Path,
    cumulative: bool = False,
    metric: str = "accuracy",
    periods: list[int] | None = None,
    train: TrainFn | None = None,
    log: Callable[[str], None] = print,
) -> list[SweepRow]:
    """Train each step (label, overrides, folder name) over `seeds` seeds, one folder each under `out`.

    Plain: each step's overrides apply to `base`. Cumulative: the first step is the starting point and
    each later step applies to the best row so far, kept where its mean beats it; a step that leaves
    the best configuration as it is is skipped (it has no row)."""
    if train is None:
        from cnnlab.run import train_run as train
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    rows: list[SweepRow] = []
    best: SweepRow | None = None
    for label, delta, folder in steps:
        overrides = {**best.overrides, **delta} if cumulative and best is not None else dict(delta)
        if (
            cumulative
            and best is not None
            and apply_overrides(base, overrides).to_dict() == apply_overrides(base, best.overrides).to_dict()
        ):
            continue  # the best configuration already has this value
        row = _run_row(base, label, overrides, seeds, metric, out / folder, train, log, periods)
        if cumulative:
            row.kept = best is None or row.mean > best.mean
            best = row if row.kept else best
        rows.append(row)
    return rows


def _grid_changes(grid: list[tuple[str, list[Any]]], cumulative: bool) -> list[dict[str, Any]]:
    """The keys each row of the sweep changes: every combination of the grid, or for a cumulative sweep
    the starting point ({}) and then one key=value at a time, in the grid's order."""
    if cumulative:
        return [{}] + [{key: v} for key, values in grid for v in values]
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in (itertools.product(*(vs for _, vs in grid)) if grid else [()])]


def run_sweep(
    base: RunConfig,
    grid: list[tuple[str, list[Any]]],
    *,
    seeds: int,
    out: Path,
    cumulative: bool = False,
    metric: str = "accuracy",
    train: TrainFn | None = None,
    log: Callable[[str], None] = print,
    sets: dict[str, Any] | None = None,
) -> list[SweepRow]:
    """Train the grid over `seeds` seeds under `out`; returns the rows and writes the tables.

    `sets` are the user's --set keys, already in `base`: a row that changes model.name drops the
    recipe's model.kwargs (config.apply_overrides), and the user's model.kwargs.* are applied again."""
    user_kwargs = {k: v for k, v in (sets or {}).items() if k.startswith("model.kwargs.")}
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")

    def with_user(change: dict[str, Any]) -> dict[str, Any]:
        return {**change, **user_kwargs} if "model.name" in change else change

    for key, values in grid:  # every key and value is checked before the first run
        for v in values:
            apply_overrides(base, with_user({key: v})).validate()
    out = Path(out)
    guard_plan(
        out,
        "sweep.yaml",
        {
            "recipe": base.to_dict(),
            "grid": [[k, v] for k, v in grid],
            "seeds": seeds,
            "cumulative": cumulative,
            "metric": metric,
        },
        "sweep",
    )
    steps = [
        (", ".join(f"{k}={v}" for k, v in c.items()) or "base", with_user(c), f"{i:02d}-{_overrides_slug(c)}")
        for i, c in enumerate(_grid_changes(grid, cumulative))
    ]
    rows = run_rows(
        base,
        steps,
        seeds=seeds,
        out=out,
        cumulative=cumulative,
        metric=metric,
        train=train,
        log=lambda m: log(f"sweep: {m}"),
    )
    write_tables(rows, out, metric, cumulative)
    return rows


def _grid_table(rows: list[SweepRow], metric: str, cumulative: bool) -> tuple[list[str], list[list[str]]]:
    header = [
        "#",
        "configuration",
        f"{metric} % (mean ± std)",
        "test accuracy %",
        "seeds",
        "parameters",
        "train time",
    ] + (["kept"] if cumulative else [])
    body = []
    for i, r in enumerate(rows):
        line = [
            str(i),
            r.label,
            _mean_std(r.metric),
            _mean_std(r.accuracy),
            str(len(r.metric)),
            f"{r.parameters:,}",
            f"{r.seconds:.1f} s",
        ]
        if cumulative:
            line.append("yes" if r.kept else "no")
        body.append(line)
    return header, body


def render_table(header: list[str], body: list[list[str]], fmt: str = "md") -> str:
    """A table as markdown (fmt "md") or CSV (fmt "csv")."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    return markdown_table(header, body)


def table_text(rows: list[SweepRow], metric: str, cumulative: bool, fmt: str = "md") -> str:
    return render_table(*_grid_table(rows, metric, cumulative), fmt)


def write_table_files(out: Path, header: list[str], body: list[list[str]], payload: dict[str, Any]) -> None:
    """A sweep's table in its folder: sweep.md and sweep.csv for people, sweep.json (`payload`) for scripts."""
    write_text(out / "sweep.md", render_table(header, body))
    write_text(out / "sweep.csv", render_table(header, body, "csv"))
    write_json(out / "sweep.json", payload)


def write_tables(rows: list[SweepRow], out: Path, metric: str, cumulative: bool) -> None:
    payload = [
        {**{k: v for k, v in asdict(r).items() if k not in ("metrics", "periods")}, "mean": r.mean, "std": r.std}
        for r in rows
    ]
    write_table_files(
        out, *_grid_table(rows, metric, cumulative), {"metric": metric, "cumulative": cumulative, "rows": payload}
    )
