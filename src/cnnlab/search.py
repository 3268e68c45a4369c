"""`cnnlab sweep --search optuna`: a recipe searched with Optuna rather than a grid, one run folder a trial.

Optuna's TPE sampler proposes each trial's values of the --space keys; each epoch's validation accuracy
is reported to the trial, and the median pruner stops a trial that falls below the median of the
earlier trials at the same epoch (the run then tests its weights, as early stopping does). A trial
scores its run's validation accuracy (metrics.json's, in fp32): the test part stays out of the choice.

The study lives in SQLite in the sweep folder (study.db), so a search that stops resumes with the same
command: finished trials are read back, and a trial left RUNNING by a killed process carries on in its
own run folder (from its last.pt, or trained again with the same values), so it counts once. The table
(sweep.md, sweep.csv, sweep.json, as the grid sweep's) lists every trial; search.png plots the best
validation accuracy so far against the trial number.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.state import FitState
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run_folder import read_metrics
from cnnlab.sweep import TrainFn, guard_plan, parse_values, train_or_resume, write_table_files

SPACE_FORM = "key=low:high, key=low:high:log or key=a,b,c (e.g. --space optim.lr=0.01:0.5:log)"
PRUNED = "pruned"  # how a pruned run's stop_reason begins (metrics.json), so a resumed search knows it
STUDY = "search"  # the study's name in study.db


def _number(text: str) -> int | float | None:
    """An int where the text is one ("3"), else a float ("0.5", "1e-3"), else None."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else None
    return None


@dataclass(frozen=True)
class Dimension:
    """One key of the search space: a range low..high (integers where both ends are, optionally on a log
    scale) or a choice among values."""

    key: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The trial's value (Optuna returns the stored one for a key the trial already has)."""
        if self.choices:
            # Optuna's choices are scalars; a list value (model.kwargs.widths) is offered as its YAML text.
            if all(v is None or isinstance(v, bool | int | float | str) for v in self.choices):
                return trial.suggest_categorical(self.key, list(self.choices))
            text = trial.suggest_categorical(
                self.key, [yaml.safe_dump(v, default_flow_style=True).strip() for v in self.choices]
            )
            return yaml.safe_load(text)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def values_to_check(self) -> list[Any]:
        return list(self.choices) if self.choices else [self.low, self.high]

    def describe(self) -> str:
        if self.choices:
            return f"{self.key} in {{{', '.join(str(v) for v in self.choices)}}}"
        return f"{self.key} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")


def parse_dimension(item: str) -> Dimension:
    """`key=low:high[:log]` or `key=a,b,c` -> a Dimension; ConfigError, naming the form, otherwise."""
    key, sep, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    bad = f"--space expects {SPACE_FORM}, got {item!r}"
    if not sep or not key or not raw:
        raise ConfigError(bad)
    if ":" in raw and "," not in raw:
        parts = raw.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() != "log"):
            raise ConfigError(bad)
        low, high = _number(parts[0].strip()), _number(parts[1].strip())
        log = len(parts) == 3
        if low is None or high is None or not low < high:
            raise ConfigError(f"{bad}: low and high must be numbers with low < high")
        if log and low <= 0:
            raise ConfigError(f"{bad}: a log range needs low > 0")
        return Dimension(key, low, high, log)
    values = parse_values(raw)
    if len(values) < 2 or len(set(map(repr, values))) < len(values):
        raise ConfigError(f"{bad}: a choice needs two or more different values")
    return Dimension(key, choices=tuple(values))


def parse_space(items: list[str]) -> list[Dimension]:
    """The --space flags as Dimensions, each key once."""
    if not items:
        raise ConfigError(f"--search needs at least one --space: {SPACE_FORM}")
    space = [parse_dimension(item) for item in items]
    keys = [d.key for d in space]
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"--space {key} is given twice; give each key once")
    return space


class ReportToTrial(Callback):
    """Each epoch's validation accuracy to the Optuna trial; a trial the pruner prunes stops at the epoch's
    end (state.stop_reason), and the run then tests its weights as early stopping does."""

    def __init__(self, trial, reported: set[int]) -> None:
        self.trial, self.reported = trial, set(reported)  # epochs reported before a resume are not sent again

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        value = row.get("val_accuracy", "")
        if value in ("", None):
            return
        if state.epoch not in self.reported:
            self.trial.report(float(value), state.epoch)
            self.reported.add(state.epoch)
        if state.stop_reason is None and state.epoch < state.epochs and self.trial.should_prune():
            state.stop_reason = (
                f"{PRUNED} by the median pruner at epoch {state.epoch}: validation accuracy {float(value):.4f} "
                "is below the median of the earlier trials there"
            )


@dataclass
class TrialRow:
    """One trial of the table: its values, how it ended and its run's figures."""

    number: int
    params: dict[str, Any]
    state: str  # COMPLETE, PRUNED, FAIL (the run diverged) or RUNNING (stopped mid-way, resumed next time)
    value: float | None  # what Optuna holds: the validation accuracy (a pruned trial's last epoch report)
    run: str
    val_accuracy: float | None = None  # the run's metrics.json (fp32, its test weights), pruned trials too
    test_accuracy: float | None = None
    epochs_run: int | None = None
    train_seconds: float | None = None
    stop_reason: str | None = None
    best_so_far: float | None = None  # the best COMPLETE value up to this trial


def _optuna():
    try:
        import optuna
    except ImportError:
        raise CnnlabError("--search optuna needs Optuna: pip install optuna (tested with 5.0.0)") from None
    return optuna


@contextlib.contextmanager
def _one_search_at_a_time(out: Path) -> Iterator[None]:
    """Hold a lock on the sweep folder while searching, so that a trial left RUNNING in study.db can only
    be one a stopped process left behind (the kernel frees the lock of a killed process). Where no lock
    can be taken (no fcntl), none is."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out / ".search.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CnnlabError(f"another search is running in {out}; wait for it, or give another --out") from None
        yield  # closing the file releases the lock


def open_study(out: Path, seed: int):
    """The study in out/study.db, created or loaded. TPE's seed is the recipe's plus the number of trials
    already there: an uninterrupted search is reproducible, and a resumed one does not draw its first
    random trials again."""
    optuna = _optuna()
    study = optuna.create_study(
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        study_name=STUDY,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(),
        load_if_exists=True,
    )
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    return study


def _run_trial(study, trial, space: list[Dimension], base: RunConfig, out: Path, train: TrainFn, log) -> None:
    """Train one trial (or carry on with it) in out/trial-NNN and tell the study how it ended."""
    from cnnlab.run import RunDiverged, RunInterrupted

    state = _optuna().trial.TrialState
    params = {d.key: d.suggest(trial) for d in space}
    folder = out / f"trial-{trial.number:03d}"
    log(f"search: trial {trial.number} ({params_label(params)}) -> {folder}")
    reported = set(study.get_trials(deepcopy=False)[trial.number].intermediate_values)
    try:
        m = train_or_resume(
            apply_overrides(base, params), folder, functools.partial(train, callbacks=[ReportToTrial(trial, reported)])
        )
    except RunDiverged as e:
        trial.set_user_attr("stop_reason", str(e))
        study.tell(trial, state=state.FAIL)
        log(f"search: trial {trial.number} failed: {e}")
        return
    except RunInterrupted:
        # The trial stays RUNNING in study.db: the next search carries it on from its last.pt.
        raise RunInterrupted(
            f"interrupted in trial {trial.number} ({folder}); rerun the same cnnlab sweep command to resume the search"
        ) from None
    if "val" not in m:
        study.tell(trial, state=state.FAIL)
        raise ConfigError(
            "the search scores the validation accuracy, and this data has no validation part: "
            "set data.val_size (e.g. --set data.val_size=0.1) and give another --out"
        )
    if str(m.get("stop_reason") or "").startswith(PRUNED):
        study.tell(trial, state=state.PRUNED)
    else:
        study.tell(trial, float(m["val"]["accuracy"]))
    frozen = study.get_trials(deepcopy=False)[trial.number]
    log(
        f"search: trial {trial.number} {frozen.state.name.lower()}: validation accuracy "
        f"{_percent(m['val'].get('accuracy'))}%, test {_percent((m.get('test') or {}).get('accuracy'))}%"
    )


def params_label(params: dict[str, Any]) -> str:
    """A trial's values as one short line: optim.lr=0.0123, train.label_smoothing=0.05."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _finished(study) -> int:
    """Trials that ended (COMPLETE, PRUNED, or FAIL: a run that diverged): what --trials counts."""
    ended = {"COMPLETE", "PRUNED", "FAIL"}
    return sum(t.state.name in ended for t in study.get_trials(deepcopy=False))


def run_search(
    base: RunConfig,
    space: list[Dimension],
    *,
    trials: int,
    out: Path,
    train: TrainFn | None = None,
    log: Callable[[str], None] = print,
) -> list[TrialRow]:
    """Search `space` over `base` until `trials` trials have ended, each trained in out/trial-NNN; returns
    the rows of the table it writes (sweep.md, sweep.csv, sweep.json) and draws search.png.

    Rerunning it on the same folder resumes: a trial left RUNNING carries on first, then new trials are
    asked for until `trials` have ended (a larger `trials` extends a finished search)."""
    if train is None:
        from cnnlab.run import train_run as train
    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    for d in space:  # every key and bound is checked before the first run
        for v in d.values_to_check():
            apply_overrides(base, {d.key: v}).validate()
    optuna = _optuna()
    out = Path(out)
    plan = {
        "recipe": base.to_dict(),
        "search": "optuna",
        "space": [asdict(d) | {"choices": list(d.choices)} for d in space],
        "sampler": "tpe",
        "pruner": "median",
    }
    guard_plan(out, "sweep.yaml", plan, "sweep")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the lines below say more (the run folder, the test)
    try:
        with _one_search_at_a_time(out):
            study = open_study(out, base.train.seed)
            for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                # Optuna's Trial over a stored trial: its values come back from study.db, and it reports
                # and is told as the trial the stopped process asked for.
                _run_trial(study, optuna.trial.Trial(study, stale._trial_id), space, base, out, train, log)
            while _finished(study) < trials:
                _run_trial(study, study.ask(), space, base, out, train, log)
            rows = trial_rows(study, out)
    finally:
        optuna.logging.set_verbosity(verbosity)
    write_search_tables(rows, space, out)
    plot_search(rows, out / "search.png")
    return rows


def trial_rows(study, out: Path) -> list[TrialRow]:
    """The study's trials with their runs' figures, in trial order; best_so_far over the COMPLETE ones."""
    rows, best = [], None
    for t in study.get_trials(deepcopy=False):
        folder = out / f"trial-{t.number:03d}"
        row = TrialRow(t.number, dict(t.params), t.state.name, t.value, str(folder))
        if t.state.name == "PRUNED" and row.value is None and t.intermediate_values:
            row.value = t.intermediate_values[max(t.intermediate_values)]
        if (folder / "metrics.json").is_file():
            m = read_metrics(folder)
            row.val_accuracy = (m.get("val") or {}).get("accuracy")
            row.test_accuracy = (m.get("test") or {}).get("accuracy")
            row.epochs_run, row.train_seconds, row.stop_reason = (
                m.get("epochs_run"),
                m.get("train_seconds"),
                m.get("stop_reason"),
            )
        row.stop_reason = row.stop_reason or t.user_attrs.get("stop_reason")
        if row.state == "COMPLETE" and row.value is not None:
            best = row.value if best is None else max(best, row.value)
        row.best_so_far = best
        rows.append(row)
    return rows


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def search_table(rows: list[TrialRow], space: list[Dimension]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: trial, each key's value, state, validation and test accuracy."""
    header = ["trial", *[d.key for d in space], "state", "val accuracy %", "test accuracy %", "epochs", "train time"]
    body = []
    for r in rows:
        values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.params.get(d.key, "") for d in space)]
        state = r.state.lower() + (f" (epoch {r.epochs_run})" if r.state == "PRUNED" and r.epochs_run else "")
        seconds = "" if r.train_seconds is None else f"{r.train_seconds:.1f} s"
        epochs = "" if r.epochs_run is None else str(r.epochs_run)
        body.append(
            [str(r.number), *values, state, _percent(r.val_accuracy), _percent(r.test_accuracy), epochs, seconds]
        )
    return header, body


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The COMPLETE trial with the highest validation accuracy (the first of equals), as Optuna's best_trial."""
    done = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    return max(done, key=lambda r: r.value) if done else None


def write_search_tables(rows: list[TrialRow], space: list[Dimension], out: Path) -> None:
    best = best_row(rows)
    payload = {
        "search": "optuna",
        "objective": "validation accuracy",
        "space": [d.describe() for d in space],
        "best_trial": None if best is None else best.number,
        "trials": [asdict(r) for r in rows],
    }
    write_table_files(out, *search_table(rows, space), payload)


def plot_search(rows: list[TrialRow], path: Path) -> Path:
    """search.png: each trial's validation accuracy (pruned ones hollow) and the best so far, against the
    trial number."""
    from matplotlib.figure import Figure  # no pyplot: nothing here needs a backend or a screen

    from cnnlab.report.plots import save

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for state, style in (
        ("COMPLETE", dict(color="tab:blue")),
        ("PRUNED", dict(facecolors="none", edgecolors="tab:gray")),
    ):
        shown = [r for r in rows if r.state == state and r.val_accuracy is not None]
        ax.scatter([r.number for r in shown], [r.val_accuracy for r in shown], label=state.lower(), zorder=3, **style)
    best = [r for r in rows if r.best_so_far is not None]
    ax.step(
        [r.number for r in best], [r.best_so_far for r in best], where="post", color="tab:orange", label="best so far"
    )
    ax.set(xlabel="trial", ylabel="validation accuracy", title="Search: the best validation accuracy so far")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return save(fig, path)
