"""train.mlflow (engine/tracking.py): a run logged to MLflow, read back with MLflow's own client.

The store of these tests is MLflow's file store in tmp_path (MLFLOW_ALLOW_FILE_STORE=true): creating
a new SQLite store, MLflow's default, costs about 2.5 s of CPU in table migrations, and the code under
test is the same for both (it never names a store; MLflow picks it). mlflow-skinny is pinned in
requirements-dev.txt, so these tests run rather than skip; it is imported inside them, as its import
(about 1.5 s) would otherwise be paid by every collection of the suite.
"""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import QUICK, run_main

from cnnlab.cli import main
from cnnlab.config import flatten, load_recipe
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.tracking import RUN_KEY_TAG, finish_mlflow_run, param_text, run_key
from cnnlab.run import RunInterrupted, train_run


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def the_runs(uri: str, experiment: str = "fashion-mnist-fast") -> list:
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id])


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, folder):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_a_run_with_mlflow_on_is_listed_with_its_metrics_params_and_files(fashion_dir, tmp_path, store):
    """Acceptance 5: after `cnnlab train --set train.mlflow=true`, MLflow's client lists the run under
    the recipe's experiment with metrics.json's figures, the history at step = epoch, the config as
    params and the run folder's files; a resume goes on in the same MLflow run."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "train.mlflow=true"]) == 0
    (run,) = the_runs(store)
    client = mlflow_client(store)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.metrics["test.accuracy"] == metrics["test"]["accuracy"]
    assert run.data.metrics["test.loss"] == metrics["test"]["loss"]
    assert run.data.metrics["val.macro.f1"] == metrics["val"]["macro"]["f1"]
    assert run.data.metrics["best_epoch"] == metrics["best_epoch"]
    history = list(csv.DictReader((out / "history.csv").open()))
    logged = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), float(r["val_accuracy"])) for r in history]
    config = flatten(yaml.safe_load((out / "config.yaml").read_text()))
    assert run.data.params == {k: param_text(v) for k, v in config.items()}
    assert run.data.params["train.mlflow"] == "true" and run.data.params["name"] == "fashion-mnist-fast"
    files = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "history.csv", "metrics.json", "log.txt", "plots/curves.png"} <= files
    assert f"checkpoints/{metrics['test_weights']}.pt" in files
    assert f"mlflow: run {run.info.run_id}" in (out / "log.txt").read_text()

    # a resume with more epochs (which MLflow's params cannot take), stopped as Ctrl-C stops it, marks
    # the MLflow run KILLED; the next resume goes on in the same MLflow run and finishes it
    with pytest.raises(RunInterrupted):
        train_run(load_recipe(), resume=out, overrides={"train.epochs": 2}, callbacks=[StopAtStep(5)])
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert main(["train", "--resume", str(out)]) == 0
    (again,) = the_runs(store)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    logged = client.get_metric_history(run.info.run_id, "val_accuracy")
    history = list(csv.DictReader((out / "history.csv").open()))
    assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), float(r["val_accuracy"])) for r in history]
    assert [m.step for m in logged] == [1, 2]
    assert again.data.params["train.epochs"] == "1"  # kept, and said in log.txt
    assert "keep the first values of train.epochs" in (out / "log.txt").read_text()
    assert again.data.metrics["test.accuracy"] == json.loads((out / "metrics.json").read_text())["test"]["accuracy"]


class StopAtStep(Callback):
    """Stops the fit after optimizer step `step` as a first Ctrl-C does (fit's _after_batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, state, loss: float) -> None:
        if state.step == self.step:
            state.interrupted, state.stop_reason = True, "interrupted"


def test_a_missing_mlflow_is_one_line_before_anything_runs(fashion_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "run"
    r = run_main("train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "train.mlflow=true")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "pip install mlflow-skinny" in r.stderr
    assert not out.exists()  # refused before the run folder is made


def test_a_store_that_cannot_be_opened_stops_the_run_before_its_first_epoch(fashion_dir, tmp_path, monkeypatch):
    """MLflow 3 refuses its file store without MLFLOW_ALLOW_FILE_STORE: one line naming what to change."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "run"
    r = run_main("train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "train.mlflow=true")
    assert r.returncode == 2, r.stderr
    assert "MLFLOW_ALLOW_FILE_STORE=true" in r.stderr and "MLFLOW_TRACKING_URI=sqlite:///mlflow.db" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (out / "history.csv").exists()  # no epoch ran


def test_a_tracking_failure_after_the_results_warns_and_keeps_the_results(tmp_path, store, monkeypatch):
    """finish_mlflow_run runs after metrics.json: an MLflow error there is a warning in the log."""
    run_dir = tmp_path / "run"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "log.txt").write_text("")
    (run_dir / "config.yaml").write_text("name: fashion-mnist-fast\n")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiment = client.create_experiment("fashion-mnist-fast")
    mlrun = client.create_run(experiment, run_name="run", tags={RUN_KEY_TAG: run_key(run_dir)})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifact", broken)
    lines: list[str] = []
    finish_mlflow_run(run_dir, "fashion-mnist-fast", {"test": {"accuracy": 0.5}, "epochs_run": 1}, lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: the MLflow run was not completed (OSError: disk full)")
    assert client.get_run(mlrun.info.run_id).data.metrics["test.accuracy"] == 0.5  # logged before the failure
