"""`cnnlab reproduce NAME`: rerun a source report's system from its recipe and set our figures beside its own.

A recipe's `reproduce:` block is the study, as data (see recipes/kth-cifar10.yaml):
- `report`, `data` (the report's dataset: any other is a stand-in) and optional `epochs` (the
  report's, where the recipe trains fewer by default);
- `rows`: the configurations trained, each a few recipe keys (`set`) over the recipe, and its
  `figures`: what the report printed and where ours comes from (`value`: test.X or val.X of
  metrics.json, or history.X at an `epoch`, or test.X after a `period`). A figure's `reported` is a
  number, or a [low, high] range, or null for a row the report does not have (a model it did not try:
  ours alone); `goal: true` makes it a target to beat; `relative_to: ROW` compares the difference from
  that row (an ablation);
- `cumulative: true`: each row after the first is applied to the best configuration so far (on the
  `metric`), as the KTH study did; `periods: [10, 20, 30]`: each run trained in periods, resumed;
- `stand_ins`: recipe keys for data that is not the report's (e.g. mnist-5k's smaller split);
- `per_class: true`: print each row's per-class accuracy and its worst class.

Runs are the sweep's (sweep.run_rows): one folder per row and seed, a stopped reproduction resumes.
The results go to reproduction.md, reproduction.json and reproduction.html (with reproduction.png).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import RunConfig, apply_overrides, load_recipe, recipe_dir, recipe_names
from cnnlab.errors import ConfigError, DataError
from cnnlab.report.tables import markdown_table
from cnnlab.run_folder import read_history, report_link, write_json, write_text
from cnnlab.sweep import METRICS, SweepRow, TrainFn, guard_plan, run_rows

# keys that do not change what a run computes: a reproduction resumes whatever they are
PLAN_FREE = {
    "data.root",
    "data.workers",
    "data.download",
    "train.device",
    "train.threads",
    "train.eval_batch_size",
    "train.checkpoint_steps",
    "train.checkpoint_seconds",
    "train.report",
    "train.tensorboard",
    "train.mlflow",
}
VALUE = re.compile(
    r"^(test|val)\.(accuracy|balanced_accuracy|loss)$|^history\.(train_accuracy|val_accuracy|train_loss|val_loss)$|^(best_epoch|train_seconds)$"
)
DURATION = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


def duration_seconds(text: str) -> float | None:
    """ "1h 15m 44s" -> 4544.0 (a report's wall time); None for anything else."""
    m = DURATION.match(text) if isinstance(text, str) and text.strip() else None
    return (
        None
        if m is None or not any(m.groups())
        else float(int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + int(m[3] or 0))
    )


def duration_text(seconds: float) -> str:
    """4544 -> "1h 15m 44s"; 12.3 -> "12.3 s"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return (f"{h}h " if h else "") + f"{m}m {sec}s"


@dataclass
class ReportedFigure:
    """A figure the source report printed, and where our figure to set beside it comes from."""

    value: str  # test.accuracy | val.balanced_accuracy | history.val_accuracy (with epoch) ...
    reported: float | list[float] | None  # a number, or a [low, high] range; null: a row the report has not (ours only)
    label: str = ""  # what the report calls it, e.g. "epoch 10 val accuracy"
    epoch: int | str | None = None  # history.* figures: the epoch the report printed it at, or "last"
    period: int | None = None  # a periods study: test.* after this period (1-based)
    goal: bool = False  # the report's figure is a target to beat, not a result
    relative_to: str | None = None  # ours is this row's figure minus that row's (same seeds)


@dataclass
class StudyRow:
    """A configuration the study trains: recipe keys over the recipe (`set`) and the report's figures of it."""

    name: str
    set: dict[str, Any]
    figures: list[ReportedFigure]


@dataclass
class StudySpec:
    """A recipe's `reproduce:` block, checked: what to train and which of the report's figures to compare."""

    name: str
    report: str
    data: str
    rows: list[StudyRow]
    epochs: int | None = None  # the report's epochs, where the recipe's differ
    cumulative: bool = False
    metric: str = "accuracy"  # what ranks a cumulative study's rows (test part)
    periods: list[int] = field(default_factory=list)
    stand_ins: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_class: bool = False
    notes: list[str] = field(default_factory=list)
    examples: list[Any] = field(default_factory=list)  # worked examples (cnnlab/worked.py), computed again by torch
    test_images: int | None = None  # the report's test part: its accuracies are also shown as counts (Hanoi: 12,183)
    two_panel: bool = (
        False  # the report's figure: training loss against iteration over validation accuracy against epoch
    )
    predictions: bool = False  # the report's figure of a few test images with each row's prediction (cnnlab compare's)


def study_names() -> list[str]:
    """The recipes that have a `reproduce:` block."""
    return [
        n for n in recipe_names() if "reproduce" in (yaml.safe_load((recipe_dir() / f"{n}.yaml").read_text()) or {})
    ]


def _figure(raw: Any, default_value: str | None, where: str) -> ReportedFigure:
    if not isinstance(raw, dict):
        raw = {"reported": raw}
    raw = {"value": default_value, **raw}
    unknown = set(raw) - {f for f in ReportedFigure.__dataclass_fields__}
    if unknown:
        raise ConfigError(f"{where}: unknown figure key(s) {', '.join(sorted(unknown))}")
    if "reported" not in raw:
        raise ConfigError(
            f"{where}: a figure needs reported: the report's number, [low, high], or null (not in the report)"
        )
    f = ReportedFigure(**raw)
    if not isinstance(f.value, str) or not VALUE.match(f.value):
        raise ConfigError(
            f"{where}: value {f.value!r} is not test.X, val.X (X accuracy, balanced_accuracy or loss) or history.X"
        )
    if f.value.startswith("history.") and f.epoch is None:
        raise ConfigError(f"{where}: {f.value} needs the epoch the report printed it at")
    if f.epoch is not None and f.epoch != "last" and not isinstance(f.epoch, int):
        raise ConfigError(f"{where}: epoch {f.epoch!r} is not a number or last")
    if f.value == "train_seconds" and isinstance(f.reported, str):
        seconds = duration_seconds(f.reported)
        if seconds is None:
            raise ConfigError(f"{where}: reported time {f.reported!r} is not like 1h 15m 44s")
        f.reported = seconds
    rep = f.reported
    if rep is None:  # a row the report does not have (a model it did not try): ours, beside nothing
        if f.goal or f.relative_to:
            raise ConfigError(f"{where}: a goal or a change from another row needs the report's number, not null")
        return f
    if not (
        isinstance(rep, (int, float))
        or (isinstance(rep, list) and len(rep) == 2 and all(isinstance(v, (int, float)) for v in rep))
    ):
        raise ConfigError(f"{where}: reported must be a number or [low, high], got {rep!r}")
    return f


def load_study(name: str) -> StudySpec:
    """The `reproduce:` block of recipe NAME, checked."""
    known = study_names()
    if name not in known:
        raise ConfigError(f"unknown report {name!r}; cnnlab reproduce knows: {', '.join(known)}")
    raw = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text())["reproduce"]
    where = f"recipes/{name}.yaml reproduce"
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("rows"), list)
        or not all(isinstance(r, dict) for r in raw["rows"])
    ):
        raise ConfigError(f"{where}: must be a mapping with a list of rows, each a mapping (name, set, figures)")
    default_value = raw.pop("value", None)
    rows = []
    for i, r in enumerate(raw.pop("rows")):
        figs = r.get("figures", [r["reported"]] if "reported" in r else [])
        rows.append(
            StudyRow(
                str(r.get("name", f"row {i}")),
                dict(r.get("set") or {}),
                [_figure(f, default_value, f"{where} row {r.get('name', i)}") for f in figs],
            )
        )
    if not rows or not all(r.figures for r in rows):
        raise ConfigError(f"{where}: every row needs a figure the report printed")
    unknown = set(raw) - set(StudySpec.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    from cnnlab import worked

    raw["examples"] = worked.parse(raw.get("examples"), where)
    study = StudySpec(name=name, rows=rows, **raw)
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: row names must differ (each names a row of the table and its folder)")
    if study.metric not in METRICS:
        raise ConfigError(f"{where}: metric {study.metric!r} is not one of {', '.join(METRICS)}")
    for r in rows:
        for f in r.figures:
            if f.relative_to is not None and f.relative_to not in names:
                raise ConfigError(f"{where} row {r.name}: relative_to {f.relative_to!r} is not a row")
            if f.period is not None and not 1 <= f.period <= len(study.periods):
                has = f"periods: {study.periods}" if study.periods else "no periods:"
                raise ConfigError(f"{where} row {r.name}: period {f.period} is not one of the study's ({has})")
    return study


# --- the runs ------------------------------------------------------------------------------------------


def _data_read(cfg: RunConfig) -> str:
    """The dataset name cfg reads (the layout --data PATH holds, where a path is given)."""
    from cnnlab.data import resolve_data

    return resolve_data(cfg.data).name


def _check_data(cfg: RunConfig, study: StudySpec) -> None:
    """Fail before the first run where the data is not here, with the source's own word on where it
    looked (it downloads where a network exists), and the study's stand-ins."""
    from cnnlab.data import DATASETS, resolve_data

    data = resolve_data(cfg.data)
    source = DATASETS.get(data.name)
    if data.root is not None:
        source.root_folder(data)  # a missing or wrong --data folder says so now, not after the first row
    elif source.find(data) is None:
        try:
            source(data)
        except DataError as e:
            hint = (
                f"; or run it on a stand-in here: --data {' or --data '.join(study.stand_ins)}"
                if study.stand_ins
                else ""
            )
            raise DataError(f"{study.name} needs {study.data}: {e}{hint}") from None


@dataclass
class Reproduction:
    """A study as it was run: its rows' runs, what was read and trained, and where the files went."""

    study: StudySpec
    rows: list[SweepRow]  # as trained, in the study's order (a cumulative row that changes nothing has none)
    names: list[str]  # the study row each SweepRow is
    data: str  # what was read
    stand_in: str | None
    epochs: int  # what the recipe's runs trained (the last period's end)
    report_epochs: int
    periods: list[int]  # each period's last epoch, as trained (empty: one period)
    row_epochs: list[tuple[int, int]]  # each row's (epochs trained, the report's), as a row may set its own
    seeds: int
    wall_seconds: float
    out: Path

    @cached_property
    def worked_text(self) -> str:
        """The study's worked examples as torch computes them, beside the report's numbers."""
        from cnnlab import worked

        return worked.report(self.study.examples)

    @cached_property
    def lines(self) -> list[FigureLine]:
        """figure_lines(self), worked out once (it reads every run's history.csv): the table, the JSON
        and the figure all show these."""
        return figure_lines(self)


def run_reproduction(
    name: str,
    *,
    data: str | None = None,
    epochs: int | None = None,
    seeds: int = 1,
    out: str | Path | None = None,
    sets: dict[str, Any] | None = None,
    only: list[str] | None = None,
    train: TrainFn | None = None,
    log: Callable[[str], None] = print,
) -> Reproduction:
    """Train study NAME's rows (over `seeds` seeds) and write the reproduction files under `out`."""
    t0 = time.perf_counter()
    study = load_study(name)
    if study.examples:  # before any data is needed: they are the report's own arithmetic
        from cnnlab import worked

        log(
            f"reproduce {name}: the report's worked examples, computed by torch\n"
            + worked.report(study.examples).rstrip()
        )
    rows = _chosen_rows(study, only)
    recipe, cfg, read, stand_in = _study_config(study, data, sets)
    report_epochs = study.epochs or (study.periods[-1] if study.periods else recipe.train.epochs)
    periods, epoch_keys = _epoch_plan(study, epochs)
    cfg = apply_overrides(cfg, epoch_keys) if epoch_keys else cfg
    user = dict(sets or {})  # the user's --set keys win over a row's own
    row_keys = {r.name: {**r.set, **epoch_keys, **user} for r in rows}
    _check_rows(cfg, list(row_keys.values()))
    out = Path(out or f"runs/reproduce-{name}")
    _guard_study_plan(out, study, cfg, periods)
    kept_rows, trained = _train_rows(
        study,
        rows,
        row_keys,
        cfg,
        periods,
        seeds=seeds,
        out=out,
        train=train,
        log=lambda m: log(f"reproduce {name}: {m}"),
    )
    ran = periods[-1] if periods else cfg.train.epochs
    result = Reproduction(
        study,
        trained,
        [r.name for r in kept_rows],
        read if cfg.data.root is None else f"{read} at {cfg.data.root}",
        stand_in,
        ran,
        report_epochs,
        periods,
        [_row_epochs(r, ran, report_epochs, epochs, bool(periods)) for r in kept_rows],
        seeds,
        time.perf_counter() - t0,
        out,
    )
    write_reproduction(result)
    return result


def _chosen_rows(study: StudySpec, only: list[str] | None) -> list[StudyRow]:
    """The study's rows, or with --rows A,B those and the rows their figures are relative to."""
    rows = study.rows
    if not only:
        return rows
    missing = [o for o in only if o not in [r.name for r in rows]]
    if missing:
        raise ConfigError(
            f"--rows {missing[0]!r} is not a row of {study.name}; its rows: {', '.join(r.name for r in rows)}"
        )
    if study.cumulative:
        raise ConfigError(f"{study.name} is cumulative (each row builds on the best so far): run all its rows")
    needed = set(only) | {f.relative_to for r in rows if r.name in only for f in r.figures if f.relative_to}
    return [r for r in rows if r.name in needed]


def _study_config(
    study: StudySpec, data: str | None, sets: dict[str, Any] | None
) -> tuple[RunConfig, RunConfig, str, str | None]:
    """(the study's recipe, the config its rows start from, the dataset it reads, that dataset's name
    where it is a stand-in for the report's, else None). The data is checked here, before any run."""
    recipe = load_recipe(study.name)
    overrides = dict(sets or {})
    if data is not None:
        from cnnlab.data import data_key

        overrides[data_key(data)] = data
    cfg = apply_overrides(recipe, overrides)
    read = _data_read(cfg)
    stand_in = None if read == study.data else read
    if stand_in is not None and stand_in in study.stand_ins:
        cfg = apply_overrides(cfg, {**study.stand_ins[stand_in], **overrides})  # the user's keys win
    _check_data(cfg, study)
    return recipe, cfg, read, stand_in


def _epoch_plan(study: StudySpec, epochs: int | None) -> tuple[list[int], dict[str, Any]]:
    """(each period's last epoch, empty for one period; the keys --epochs N sets, none without it).
    --epochs N trains N per period where the study trains in periods, and over a row's own epochs too."""
    if epochs is None:
        return list(study.periods), {}
    return [epochs * (k + 1) for k in range(len(study.periods))], {"train.epochs": epochs, "train.min_steps": None}


def _check_rows(cfg: RunConfig, row_keys: list[dict[str, Any]]) -> None:
    """Every row's keys and names, checked before the first run."""
    from cnnlab.data import resolve_data
    from cnnlab.models.timm_zoo import check_installed
    from cnnlab.run import check_names

    for keys in row_keys:
        row_cfg = apply_overrides(cfg, keys).validate()
        check_names(dataclasses.replace(row_cfg, data=resolve_data(row_cfg.data)))
        check_installed(row_cfg.model.name, row_cfg.model.kwargs.get("pretrained"))


def _guard_study_plan(out: Path, study: StudySpec, cfg: RunConfig, periods: list[int]) -> None:
    """reproduce.yaml in `out` (sweep.guard_plan): what the runs compute, without the PLAN_FREE keys."""
    plan = {
        "study": study.name,
        "recipe": {
            sec: {k: v for k, v in vals.items() if f"{sec}.{k}" not in PLAN_FREE} if isinstance(vals, dict) else vals
            for sec, vals in cfg.to_dict().items()
        },
        "rows": [[r.name, r.set] for r in study.rows],
        "periods": periods,
    }
    old = _saved_rows(out / "reproduce.yaml")
    if old is not None and len(old) < len(plan["rows"]) and plan["rows"][: len(old)] == old:
        # rows the study gained after this reproduction began (hanoi-animals' offline row): its runs stand
        guard_plan(out, "reproduce.yaml", {**plan, "rows": old}, "reproduction")  # the rest must match
        write_text(out / "reproduce.yaml", yaml.safe_dump(plan, sort_keys=False))
        return
    guard_plan(out, "reproduce.yaml", plan, "reproduction")


def _saved_rows(path: Path) -> list | None:
    """The rows of a reproduce.yaml written before, or None."""
    try:
        saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return saved.get("rows") if isinstance(saved, dict) and isinstance(saved.get("rows"), list) else None


def _train_rows(
    study: StudySpec,
    rows: list[StudyRow],
    row_keys: dict[str, dict[str, Any]],
    cfg: RunConfig,
    periods: list[int],
    *,
    seeds: int,
    out: Path,
    train: TrainFn | None,
    log: Callable[[str], None],
) -> tuple[list[StudyRow], list[SweepRow]]:
    """Train `rows` (sweep.run_rows), each with its `row_keys` over `cfg`: (the rows that have runs, and
    their runs), in the study's order. A cumulative row that leaves the best configuration as it is has none."""
    index = {r.name: i for i, r in enumerate(study.rows)}  # folders by the study's row number: --rows runs are reused
    steps = [(r.name, row_keys[r.name], f"{index[r.name]:02d}-{_row_slug(r.name)}") for r in rows]
    trained = run_rows(
        cfg,
        steps,
        seeds=seeds,
        out=out,
        cumulative=study.cumulative,
        metric=study.metric,
        periods=periods or None,
        train=train,
        log=log,
    )
    by_label = {r.label: r for r in trained}
    kept = [r for r in rows if r.name in by_label]
    return kept, [by_label[r.name] for r in kept]


def _row_epochs(row: StudyRow, ran: int, report_epochs: int, epochs: int | None, periods: bool) -> tuple[int, int]:
    """(epochs the row trained, the report's) where a row may set its own train.epochs."""
    if periods:
        return ran, report_epochs
    return epochs or int(row.set.get("train.epochs", ran)), int(row.set.get("train.epochs", report_epochs))


def _row_slug(text: str) -> str:
    """A study row's folder name from its name: "SqueezeNet 1.1" -> "squeezenet-1-1"."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "row"


# --- the figures ---------------------------------------------------------------------------------------


def _history_value(run_dir: str, column: str, epoch: int | str) -> tuple[float, int] | None:
    """`column` of history.csv at `epoch` ("last": the last epoch run), or at the last epoch run where
    the run is shorter."""
    if not (Path(run_dir) / "history.csv").is_file():
        return None
    rows = [r for r in read_history(run_dir) if r.get(column) not in (None, "")]
    if not rows:
        return None
    at = [r for r in rows if int(r["epoch"]) == epoch] or [rows[-1]]
    return float(at[0][column]), int(at[0]["epoch"])


def _sources(row: SweepRow, f: ReportedFigure) -> list[dict[str, Any]]:
    """Each seed's metrics.json that figure `f` reads: after its period, or at the end."""
    return [p[f.period - 1] for p in row.periods] if f.period else row.metrics


def seed_values(row: SweepRow, f: ReportedFigure) -> tuple[list[float | None], int | None]:
    """This figure of each seed's run (None where a run lacks it), and the fewest epochs a value was
    read after (history figures: the epoch read; period figures: the epochs the period ran)."""
    kind, _, key = f.value.partition(".")
    if kind == "history":
        got = [_history_value(r, key, f.epoch) for r in row.runs]  # type: ignore[arg-type]
        epochs = [g[1] for g in got if g is not None]
        return [g[0] if g is not None else None for g in got], (
            None if f.epoch == "last" else min(epochs) if epochs else None
        )
    sources = _sources(row, f)
    epochs = [int(m["epochs_run"]) for m in sources if "epochs_run" in m] if f.period else []
    if not key:  # best_epoch, train_seconds: top-level keys of metrics.json
        values = [float(m[kind]) if m.get(kind) is not None else None for m in sources]
        if kind == "train_seconds" and f.period and f.period > 1:  # a period's own time: the runs' clock is cumulative
            before = [float(p[f.period - 2].get("train_seconds", 0.0)) for p in row.periods]
            values = [v - b if v is not None else None for v, b in zip(values, before)]
        return values, (min(epochs) if epochs else None)
    values = [float(m[kind][key]) if key in (m.get(kind) or {}) else None for m in sources]
    return values, (min(epochs) if epochs else None)


@dataclass
class FigureLine:
    """One line of the reproduction table: a figure of the report beside ours, as text and as numbers."""

    row: str
    figure: str
    reported: str
    ours: str
    difference: str
    notes: str
    reported_value: float | list[float] | None
    mean: float | None
    std: float | None
    scale: float  # 100 for fractions shown as %, 1 for losses, epochs and seconds
    relative: bool  # a change from another row, in points
    kind: str = "fraction"  # fraction | loss | epoch | seconds (_kind)


def _fmt(v: float, scale: float) -> str:
    return f"{v * scale:.2f}{'%' if scale == 100 else ''}"


def _kind(value: str) -> str:
    """How a figure is shown: fraction (as %), loss, epoch or seconds (as a duration)."""
    return {"train_seconds": "seconds", "best_epoch": "epoch"}.get(
        value, "loss" if value.endswith("loss") else "fraction"
    )


def _show(v: float, kind: str) -> str:
    if kind == "seconds":
        return duration_text(v)
    if kind == "epoch":
        return f"{v:.1f}".removesuffix(".0")
    return _fmt(v, 100.0) if kind == "fraction" else f"{v:.4g}"  # a loss to four figures, as the reports print them


def _counts(res: Reproduction, row: SweepRow, f: ReportedFigure) -> tuple[str, str]:
    """(the report's, ours) accuracy as counts, e.g. "(9678/12183)", where the study gives its test size."""
    if res.study.test_images is None or f.value != "test.accuracy" or f.relative_to or isinstance(f.reported, list):
        return "", ""
    tests = [m["test"] for m in _sources(row, f) if "num_samples" in (m.get("test") or {})]
    ours = ""
    if tests:
        correct = statistics.fmean(t["accuracy"] * t["num_samples"] for t in tests)
        ours = f" ({correct:.0f}/{tests[0]['num_samples']})"
    if f.reported is None:
        return "", ours
    return f" ({round(float(f.reported) * res.study.test_images)}/{res.study.test_images})", ours


def _reported_text(f: ReportedFigure, kind: str) -> str:
    rep, unit = f.reported, " pts" if f.relative_to else ""
    scale = 100.0 if kind == "fraction" else 1.0
    if rep is None:
        return "not in the report"
    if isinstance(rep, list):
        lo, hi = sorted(rep)
        return (
            f"{lo * scale:+.1f} to {hi * scale:+.1f}{unit or ' pts'}"
            if f.relative_to
            else f"{_show(lo, kind)} to {_show(hi, kind)}"
        )
    return (
        f"> {_show(rep, kind)} (goal)" if f.goal else f"{rep * scale:+.2f}{unit}" if f.relative_to else _show(rep, kind)
    )


def _difference(f: ReportedFigure, mean: float, kind: str) -> str:
    rep, scale = f.reported, (100.0 if kind == "fraction" else 1.0)
    if rep is None:
        return ""
    if kind == "seconds" and not isinstance(rep, list):
        return f"{100 * mean / rep:.2g}% of the report's time" if rep else ""
    if isinstance(rep, list):
        lo, hi = sorted(rep)
        d = 0.0 if lo <= mean <= hi else (mean - hi if mean > hi else mean - lo)
        return "within the range" if d == 0 else f"{d * scale:+.2f}{' pts' if kind == 'fraction' else ''} outside"
    return f"{(mean - rep) * scale:+.2f}{' pts' if kind == 'fraction' else ''}" + (
        (" (met)" if mean > rep else " (not met)") if f.goal else ""
    )


def _label(res: Reproduction, f: ReportedFigure) -> str:
    pretty = _pretty(f.value)
    if f.epoch == "last":
        label = f.label or f"{pretty} at the last epoch"
    elif f.epoch:
        label = f.label or f"{pretty} at epoch {f.epoch}"
    elif f.period:
        n = _period_end(res, f.period)
        label = f.label or f"{pretty} after period {f.period} ({n} epoch{'s' if n != 1 else ''})"
    else:
        label = f.label or pretty
    return label + (f" (change from {f.relative_to})" if f.relative_to else "")


def figure_lines(res: Reproduction) -> list[FigureLine]:
    by_name = dict(zip(res.names, res.rows))
    lines = []
    for name, row, (ran, report_epochs) in zip(res.names, res.rows, res.row_epochs):
        study_row = next(r for r in res.study.rows if r.name == name)
        for f in study_row.figures:
            got_values, at_epoch = seed_values(row, f)
            kind = _kind(f.value)
            if f.relative_to:  # paired by seed: this row's run minus the reference row's run of the same seed
                base_values, _ = seed_values(
                    by_name[f.relative_to], ReportedFigure(f.value, 0, epoch=f.epoch, period=f.period)
                )
                got_values = [
                    a - b if a is not None and b is not None else None for a, b in zip(got_values, base_values)
                ]
            values = [v for v in got_values if v is not None]
            notes = [f"stand-in data ({res.stand_in}, not {res.study.data})"] if res.stand_in else []
            numbered = f.epoch is not None and f.epoch != "last"
            wanted = f.epoch if numbered else (res.study.periods[f.period - 1] if f.period else report_epochs)
            got = at_epoch if (numbered or f.period) else ran
            if got is not None and got < wanted:  # type: ignore[operator]
                notes.append(f"fewer epochs ({got} of {wanted})")
            if row.kept is not None:
                notes.append("kept" if row.kept else "not kept")
            mean = statistics.fmean(values) if values else None
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            scale = 100.0 if kind == "fraction" else 1.0
            rep_count, our_count = _counts(res, row, f)
            if mean is None:
                ours, diff = "no value", ""
            else:
                spread = (
                    f" ± {_show(std, kind) if kind == 'seconds' else f'{std * scale:.2f}'}" if len(values) > 1 else ""
                )
                ours = (
                    (f"{mean * scale:+.2f}{spread} pts" if f.relative_to else f"{_show(mean, kind)}{spread}")
                    + our_count
                    + f" ({len(values)} seed{'s' if len(values) > 1 else ''})"
                )
                diff = _difference(f, mean, kind)
            lines.append(
                FigureLine(
                    name,
                    _label(res, f),
                    _reported_text(f, kind) + rep_count,
                    ours,
                    diff,
                    "; ".join(notes),
                    f.reported,
                    mean,
                    std,
                    scale,
                    bool(f.relative_to),
                    kind,
                )
            )
    return lines


def _pretty(value: str) -> str:
    """test.balanced_accuracy -> "test mean per-class recall"; history.val_loss -> "val loss"."""
    kind, _, key = value.partition(".")
    if not key:
        return {"best_epoch": "best epoch", "train_seconds": "training time"}.get(kind, kind)
    key = key.replace("balanced_accuracy", "mean per-class recall").replace("_", " ")
    return key if kind == "history" else f"{kind} {key}"


def _period_end(res: Reproduction, period: int) -> int:
    return res.periods[period - 1]


def per_class_accuracy(row: SweepRow) -> dict[str, float]:
    """Each class's test accuracy (its recall), the mean over the row's seeds."""
    tests = [m["test"]["per_class"] for m in row.metrics if "test" in m]
    return {c: statistics.fmean(t[c]["recall"] for t in tests) for c in tests[0]} if tests else {}


# --- the files -----------------------------------------------------------------------------------------

HEADER = [
    "configuration",
    "figure",
    "report",
    "ours (mean ± std)",
    "difference",
    "data",
    "epochs",
    "notes",
    "wall time per run (ours)",
]


def run_wall_seconds(row: SweepRow) -> float | None:
    """A row's wall time per run, the mean over its seeds: each run's total_seconds, summed over its
    periods where it trained in periods (each period is a session of its own)."""
    per_run = (
        [sum(float(m.get("total_seconds", 0.0)) for m in p) for p in row.periods]
        if row.periods
        else [float(m.get("total_seconds", 0.0)) for m in row.metrics]
    )
    return statistics.fmean(per_run) if per_run else None


def figure_table_rows(res: Reproduction) -> list[list[str]]:
    """The rows of the figures' table, under HEADER: one per figure, as reproduction.md shows them."""
    epochs = {
        name: f"{ran}" + (f" of the report's {ref}" if ran < ref else "")
        for name, (ran, ref) in zip(res.names, res.row_epochs)
    }
    wall = {
        name: duration_text(w) if (w := run_wall_seconds(row)) is not None else ""
        for name, row in zip(res.names, res.rows)
    }
    return [
        [ln.row, ln.figure, ln.reported, ln.ours, ln.difference, res.data, epochs[ln.row], ln.notes, wall[ln.row]]
        for ln in res.lines
    ]


def epochs_text(res: Reproduction) -> str:
    """The epochs the runs trained: one number, or each row's where rows set their own."""
    ran = [e for e, _ in res.row_epochs]
    if len(set(ran)) <= 1:
        return str(ran[0] if ran else res.epochs)
    return ", ".join(f"{e} ({n})" for n, e in zip(res.names, ran))


def _summary_lines(res: Reproduction) -> list[str]:
    s = res.study
    out = [
        f"Report: {s.report}",
        f"Data: {res.data}" + (f" (a stand-in for {s.data})" if res.stand_in else ""),
        f"Seeds: {res.seeds} per row; epochs: {epochs_text(res)}"
        + (f" (the report: {res.report_epochs})" if res.epochs != res.report_epochs else ""),
    ]
    if s.periods:
        out.append(
            f"Trained in {len(res.periods)} periods, each resumed from the last: up to "
            + ", ".join(map(str, res.periods))
            + " epochs"
        )
    if s.cumulative:
        out.append(
            "Cumulative: each row is applied to the best configuration so far, kept where it beats it "
            f"(on the {_pretty('test.' + s.metric)})"
        )
    train = sum(r.seconds for r in res.rows)
    runs = sum(m.get("total_seconds", 0.0) for r in res.rows for m in r.metrics)  # each run's own wall time
    out.append(
        f"Time: {train:.0f} s of training, {runs:.0f} s in all over {sum(len(r.runs) for r in res.rows)} runs "
        f"(each run's wall time, summed); this command took {res.wall_seconds:.0f} s "
        "(runs read back from an earlier one take none)"
    )
    return out + list(s.notes)


def per_class_text(res: Reproduction) -> str:
    out = []
    for name, row in zip(res.names, res.rows):
        acc = per_class_accuracy(row)
        if not acc:
            continue
        worst = min(acc, key=acc.get)  # type: ignore[arg-type]
        out.append(f"Per-class test accuracy, {name}:")
        w = max(len(c) for c in acc)
        out += [f"  {c:<{w}}  {100 * a:6.2f}%" + ("  <- worst" if c == worst else "") for c, a in acc.items()]
        out.append(f"  worst class: {worst} ({100 * acc[worst]:.2f}%)")
    return "\n".join(out) + ("\n" if out else "")


def write_reproduction(res: Reproduction) -> None:
    """reproduction.md, reproduction.json and reproduction.html (with its figures) in res.out."""
    rows = figure_table_rows(res)
    write_text(res.out / "reproduction.md", _markdown(res, rows))
    write_json(res.out / "reproduction.json", _json_payload(res))
    from cnnlab.report.reproduction import ReproductionPage, write_html  # matplotlib: only once the figures are drawn

    page = ReproductionPage(
        study=res.study.name,
        report=res.study.report,
        out=res.out,
        header=HEADER,
        table=rows,
        lines=res.lines,
        runs=[(name, list(row.runs)) for name, row in zip(res.names, res.rows)],
        summary=_summary_lines(res),
        data=res.data,
        stand_in=bool(res.stand_in),
        seeds=res.seeds,
        epochs=epochs_text(res),
        wall_seconds=res.wall_seconds,
        periods=list(res.periods),
        per_class=per_class_text(res) if res.study.per_class else None,
        worked=res.worked_text if res.study.examples else None,
        two_panel=res.study.two_panel,
        predictions=res.study.predictions,
    )
    write_html(page)


def _markdown(res: Reproduction, rows: list[list[str]]) -> str:
    md = [
        f"# Reproduction: {res.study.name}",
        "",
        *[f"- {x}" for x in _summary_lines(res)],
        "",
        markdown_table(HEADER, rows),
    ]
    if res.study.per_class:
        md += ["```", per_class_text(res).rstrip(), "```", ""]
    if res.study.examples:
        md += ["## The report's worked examples, computed by torch", "", "```", res.worked_text.rstrip(), "```", ""]
    md += [
        "Run folders: "
        + ", ".join(
            f"[{Path(r).relative_to(res.out)}]({report_link(r, res.out)})" for row in res.rows for r in row.runs
        ),
        "",
    ]
    return "\n".join(md)


def _json_payload(res: Reproduction) -> dict[str, Any]:
    return {
        "study": res.study.name,
        "report": res.study.report,
        "data": res.data,
        "stand_in": res.stand_in,
        "epochs": res.epochs,
        "report_epochs": res.report_epochs,
        "seeds": res.seeds,
        "wall_seconds": res.wall_seconds,
        "train_seconds": sum(r.seconds for r in res.rows),
        "figures": [
            {
                "row": ln.row,
                "figure": ln.figure,
                "reported": ln.reported_value,
                "mean": ln.mean,
                "std": ln.std,
                "notes": ln.notes,
            }
            for ln in res.lines
        ],
        "rows": [
            {
                "name": n,
                "runs": r.runs,
                "kept": r.kept,
                "parameters": r.parameters,
                "train_seconds": r.seconds,
                **({"per_class_accuracy": per_class_accuracy(r)} if res.study.per_class else {}),
            }
            for n, r in zip(res.names, res.rows)
        ],
    }
