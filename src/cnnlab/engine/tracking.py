"""Experiment tracking in MLflow (train.mlflow): one MLflow run for each run folder.

The run folder stays the record; MLflow gets a copy to browse and compare in `mlflow ui`. While the
fit runs, MlflowTracker logs the flattened config as params and each history row's figures at
step = epoch; after metrics.json and the report, finish_mlflow_run logs metrics.json's figures and the
run folder's files and closes the MLflow run. The experiment is named after the recipe (the config's
`name`), the MLflow run after the run folder.

The store is the one MLflow picks: MLFLOW_TRACKING_URI where it is set, else MLflow's default in the
working folder (MLflow 3: mlflow.db, with the artifacts in mlruns/; it refuses its older ./mlruns file
store unless MLFLOW_ALLOW_FILE_STORE=true), which `mlflow ui` started in the same folder reads.
Only rank 0 logs: run.py adds the tracker and calls finish_mlflow_run there alone. mlflow is imported
only when a run asks for it: its import takes about 2 s.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.config import flatten
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.state import FitState
from cnnlab.errors import ConfigError

RUN_DIR_TAG = "cnnlab.run_dir"  # the run folder's resolved path, for people reading the MLflow run
RUN_KEY_TAG = "cnnlab.run_key"  # a hash of that path: what a resume and the final stage search by (no quoting)
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value; config.yaml, an artifact, has the whole of a longer one
RUN_FILES = ("config.yaml", "history.csv", "metrics.json", "report.html")  # logged at the top of the artifacts


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def open_client() -> Any:
    """An MlflowClient on the tracking store, opened now so that a store that cannot be used stops
    the run before its first epoch, as a ConfigError that says what to change."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()  # opens the store (a new sqlite store creates its tables here)
        client.search_experiments(max_results=1)  # a server is reached only by a request
    except ImportError as e:  # e.g. the SQLite store's sqlalchemy and alembic, which mlflow-skinny does not install
        wanted = "sqlalchemy alembic" if e.name in ("sqlalchemy", "alembic") else e.name
        raise ConfigError(f"train.mlflow: the tracking store needs {wanted}: pip install {wanted}") from None
    except Exception as e:  # noqa: BLE001  MLflow's store errors have no common base class
        if "MLFLOW_ALLOW_FILE_STORE" in str(e):  # a ./mlruns of an older MLflow is its default where it exists
            raise ConfigError(
                "train.mlflow: MLflow 3 opens its file store (mlruns/) only with MLFLOW_ALLOW_FILE_STORE=true; set "
                "that, or MLFLOW_TRACKING_URI=sqlite:///mlflow.db (mlflow migrate-filestore moves the old runs)"
            ) from None
        raise ConfigError(
            f"train.mlflow could not open the MLflow tracking store ({_first_line(e)}); set MLFLOW_TRACKING_URI "
            "to a store that works, or train.mlflow=false"
        ) from None
    return client


def run_key(run_dir: Path) -> str:
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:32]


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment `name`, created where it does not exist yet; a deleted one (in the
    store's trash, where its name stays taken) is a ConfigError."""
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"train.mlflow: the MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
            f"--experiment-id {found.experiment_id}) or give the run another name (--set name=...)"
        )
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001  another run created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_run(client: Any, experiment: str, run_dir: Path) -> Any:
    """The newest MLflow run of `run_dir` in the experiment `experiment`, or None. The newest: a
    folder made again at the same path (runs deleted and started over) starts a new MLflow run."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key(run_dir)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def param_text(value: Any) -> str:
    """A config value as config.yaml spells it (true, null, 0.1, [..]); strings as they are."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def row_metrics(rows: list[dict[str, Any]]) -> list[Any]:
    """MLflow metrics of history rows: every figure but the epoch, at step = epoch (an empty cell,
    e.g. val_loss without a validation part, is left out)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, int(row["epoch"]))
        for row in rows
        for key, value in row.items()
        if key != "epoch" and value != "" and value is not None
    ]


class MlflowTracker(Callback):
    """Logs a fit to one MLflow run, on rank 0: the params and the history rows not logged yet at the
    fit's start (all of them on a new run; on a resume, the MLflow run of the same folder goes on),
    then each history row at its epoch's end. A failure during the fit warns once in log.txt and ends
    the logging; training goes on. A fit stopped by Ctrl-C or divergence marks the MLflow run KILLED
    or FAILED; finish_mlflow_run closes one that ended well."""

    def __init__(self, run_dir: Path, config: dict[str, Any], log: Callable[[str], None]) -> None:
        self.run_dir, self.config, self.log = Path(run_dir), config, log
        self.client = open_client()
        self.run_id: str | None = None
        self.logged_epochs = 0  # the history rows the MLflow run holds

    def on_fit_start(self, state: FitState) -> None:
        try:
            self._open_run(resumed=state.sessions > 1)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001  before the first epoch: nothing is lost by stopping here
            raise ConfigError(
                f"train.mlflow could not start the MLflow run ({_first_line(e)}); check MLFLOW_TRACKING_URI, or set "
                "train.mlflow=false"
            ) from None
        self._log_rows([r for r in state.history if int(r["epoch"]) > self.logged_epochs])

    def _open_run(self, resumed: bool) -> None:
        """Create the MLflow run of this folder, or on a resume reopen it; log the params it lacks."""
        from mlflow.entities import Param

        params = {k: param_text(v) for k, v in flatten(self.config).items()}
        run = find_run(self.client, self.config["name"], self.run_dir) if resumed else None
        if run is None:
            tags = {RUN_DIR_TAG: str(self.run_dir.resolve()), RUN_KEY_TAG: run_key(self.run_dir)}
            experiment = experiment_id(self.client, self.config["name"])
            run = self.client.create_run(experiment, run_name=self.run_dir.name, tags=tags)
            held: dict[str, str] = {}
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            held = dict(run.data.params)
            history = self.client.get_metric_history(run.info.run_id, "train_loss")
            self.logged_epochs = max((m.step for m in history), default=0)
        self.run_id = run.info.run_id
        changed = sorted(k for k in params if k in held and held[k] != params[k])
        if changed:  # MLflow's params never change once logged
            self.log(
                f"mlflow: the MLflow run's params keep the first values of {', '.join(changed)} "
                "(config.yaml, logged at the end, has the new ones)"
            )
        new = [Param(k, v) for k, v in params.items() if k not in held]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        self._log_rows([row])

    def _log_rows(self, rows: list[dict[str, Any]]) -> None:
        if self.run_id is None or not rows:
            return
        try:
            self.client.log_batch(self.run_id, metrics=row_metrics(rows))
            self.logged_epochs = max(self.logged_epochs, *(int(r["epoch"]) for r in rows))
        except Exception as e:  # noqa: BLE001  tracking must not stop a training run
            self.log(
                f"warning: MLflow logging stopped at epoch {rows[-1]['epoch']} ({_first_line(e)}); training goes on, "
                "and history.csv has every epoch"
            )
            self.run_id = None

    def on_fit_end(self, state: FitState) -> None:
        if self.run_id is None or not (state.interrupted or state.diverged):
            return
        try:
            self.client.set_terminated(self.run_id, status="KILLED" if state.interrupted else "FAILED")
        except Exception as e:  # noqa: BLE001  the run's own error is the one to report
            self.log(f"warning: the MLflow run was not marked stopped ({_first_line(e)})")


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's figures under their path in it (test.accuracy, val.macro.f1, test.top_k_accuracy.5,
    ...; not per class nor the confusion matrix, which metrics.json has), and the run's counts. The
    history's per-epoch figures keep their own names (val_accuracy is the validation curve, in the
    training precision; val.accuracy is metrics.json's, in fp32, of the tested weights)."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        block = {k: v for k, v in metrics.get(split, {}).items() if k not in ("per_class", "confusion_matrix")}
        for key, value in flatten(block, f"{split}.").items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                out[key] = float(value)
    for key in ("best_epoch", "tested_epoch", "epochs_run", "train_seconds", "total_seconds", "num_parameters"):
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def finish_mlflow_run(run_dir: Path, experiment: str, metrics: dict[str, Any], log: Callable[[str], None]) -> None:
    """After metrics.json and the report: metrics.json's figures, the run folder's files (config.yaml,
    history.csv, metrics.json, report.html, plots/*.png, log.txt) and the checkpoint the test figures
    come from (checkpoints/<test_weights>.pt) to the folder's MLflow run, which is then FINISHED. A
    failure warns in log.txt: the run's results are all in its folder already."""
    run_dir = Path(run_dir)
    try:
        from mlflow.entities import Metric

        client = open_client()
        run = find_run(client, experiment, run_dir)
        if run is None:
            log(f"warning: no MLflow run of {run_dir} in experiment {experiment!r}; the run folder has every result")
            return
        run_id, now = run.info.run_id, int(time.time() * 1000)
        step = int(metrics.get("epochs_run") or 0)
        figures = [Metric(k, v, now, step) for k, v in final_metrics(metrics).items()]
        client.log_batch(run_id, metrics=figures)
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        for png in sorted((run_dir / "plots").glob("*.png")):
            client.log_artifact(run_id, str(png), "plots")
        tested = run_dir / "checkpoints" / f"{metrics.get('test_weights', 'best')}.pt"
        if tested.is_file():
            client.log_artifact(run_id, str(tested), "checkpoints")
        log(f"mlflow: run {run_id} in experiment {experiment!r} at {client.tracking_uri}")
        client.log_artifact(run_id, str(run_dir / "log.txt"))  # last: it holds the line above
        client.set_terminated(run_id, status="FINISHED")
    except Exception as e:  # noqa: BLE001  after metrics.json: a tracking failure must not fail the run
        log(f"warning: the MLflow run was not completed ({_first_line(e)}); the run folder {run_dir} has every result")
