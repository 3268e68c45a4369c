"""A one-epoch train on a fixture: every file of the run folder and every metrics key."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import QUICK, run_cli

from cnnlab.cli import main
from cnnlab.config import load_recipe
from cnnlab.data import load_dataset
from cnnlab.data.loader import TensorLoader
from cnnlab.engine.loop import evaluate
from cnnlab.engine.state import HISTORY_COLUMNS
from cnnlab.models import create_model

METRIC_KEYS = {"test", "val", "best_epoch", "epochs_run", "train_seconds", "num_parameters", "model", "data", "seed"}
SPLIT_KEYS = {"accuracy", "loss", "num_samples", "per_class", "macro", "weighted", "confusion_matrix", "worst_class"}


@pytest.fixture(scope="module")
def run_dir(fashion_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "one"
    assert main(["train", "--data", str(fashion_dir), "--out", str(out), *QUICK]) == 0
    return out


def test_run_folder_has_every_file(run_dir):
    for name in [
        "config.yaml",
        "history.csv",
        "steps.csv",
        "metrics.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "plots/curves.png",
    ]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plots/curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"


def test_metrics_has_every_key(run_dir, fashion_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    for split in ("test", "val"):
        assert SPLIT_KEYS <= set(m[split])
        assert set(m[split]["per_class"]) == set(load_recipe(None) and m[split]["per_class"])
        for stats in m[split]["per_class"].values():
            assert set(stats) == {"precision", "recall", "f1", "support"}
        assert m[split]["worst_class"] in m[split]["per_class"]
    assert m["test"]["num_samples"] == 120 and m["val"]["num_samples"] == 64
    assert sum(map(sum, m["test"]["confusion_matrix"])) == 120
    assert m["epochs_run"] == 1 and m["best_epoch"] == 1 and m["num_parameters"] > 0
    assert m["model"] == "fastnet" and m["data"] == "fashion-mnist" and m["seed"] == 0


def test_history_has_one_row_per_epoch(run_dir):
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == HISTORY_COLUMNS
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert 0 <= float(rows[0]["val_accuracy"]) <= 1 and float(rows[0]["train_loss"]) > 0


def test_config_yaml_reruns_the_same_run(run_dir):
    cfg = load_recipe(str(run_dir / "config.yaml"))
    assert cfg.train.epochs == 1 and cfg.data.val_size == 64
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == "fashion-mnist-fast"


def test_best_checkpoint_restores_the_reported_model(run_dir):
    ckpt = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    cfg = load_recipe(str(run_dir / "config.yaml"))
    model = create_model(
        cfg.model.name, num_classes=len(ckpt["classes"]), in_channels=ckpt["input_shape"][0], **cfg.model.kwargs
    )
    model.load_state_dict(ckpt["model"])
    ds = load_dataset(cfg.data, cfg.train.seed)
    norm = ckpt["normalization"]
    result = evaluate(
        model, TensorLoader(ds.test, 100, mean=norm["mean"], std=norm["std"]), len(ckpt["classes"]), tta=cfg.train.tta
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert result.accuracy == m["test"]["accuracy"]
    assert result.confusion.tolist() == m["test"]["confusion_matrix"]
    for key in ("optimizer", "scheduler", "epoch", "rng", "config"):
        assert key in ckpt


def test_learns_the_fixture(fashion_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        "--epochs",
        "6",
        "--lr",
        "0.05",
        "--set",
        "data.val_size=64",
        "--set",
        "train.batch_size=32",
        "--set",
        "data.augment=none",
    ]
    assert main(["train", "--data", str(fashion_dir), "--out", str(out), *args]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["accuracy"] > 0.5  # ten classes: chance is 0.1


def test_runs_are_numbered_and_never_overwritten(fashion_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["train", "--data", str(fashion_dir), *QUICK]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fashion-mnist-fast-1", "fashion-mnist-fast-2"]


def test_same_seed_same_metrics(fashion_dir, tmp_path):
    metrics = []
    for name in ("a", "b"):
        assert main(["train", "--data", str(fashion_dir), "--out", str(tmp_path / name), *QUICK]) == 0
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics.append({k: v for k, v in m.items() if "seconds" not in k})
    assert metrics[0] == metrics[1]


def test_time_limit_stops_evaluates_and_writes_everything(fashion_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(fashion_dir), "--out", str(out), "--epochs", "50", "--time-limit", "0.5"]
    assert main(args + ["--set", "data.val_size=64", "--set", "train.batch_size=16"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_run"] < 50 and "time limit" in m["stop_reason"]
    assert (out / "checkpoints/best.pt").is_file() and "accuracy" in m["test"]


def test_ctrl_c_leaves_readable_files(fashion_dir, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cnnlab", "train", "--data", str(fashion_dir), "--out", str(out), "--epochs", "500"]
    proc = subprocess.Popen(
        args + ["--set", "data.val_size=64", "--set", "train.batch_size=16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 90
    while not (out / "history.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(subprocess.signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted" in err and len(err.strip().splitlines()) == 1
    torch.load(out / "checkpoints/last.pt", weights_only=True)
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) >= 1
    load_recipe(str(out / "config.yaml"))


def test_cli_subprocess_end_to_end(fashion_dir, tmp_path):
    r = run_cli("train", "--data", str(fashion_dir), "--out", str(tmp_path / "r"), *QUICK)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "worst class" in r.stdout and str(tmp_path / "r") in r.stdout


def test_class_weights_and_balanced_sampler_train(fashion_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(fashion_dir),
        "--out",
        str(out),
        *QUICK,
        "--class-weights",
        "auto",
        "--set",
        "data.sampler=balanced",
    ]
    assert main(args) == 0
    cfg = load_recipe(str(out / "config.yaml"))
    assert cfg.train.class_weights == "auto" and cfg.data.sampler == "balanced"


def test_min_steps_adds_epochs_unless_epochs_is_given(fashion_dir, tmp_path):
    base = [
        "train",
        "--data",
        str(fashion_dir),
        "--set",
        "data.val_size=64",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.min_steps=40",
    ]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0  # 256 images / 64 = 4 steps an epoch -> 10 epochs
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["epochs_run"] == 10
    assert "train.min_steps=40" in (tmp_path / "a" / "log.txt").read_text()
    assert main([*base, "--out", str(tmp_path / "b"), "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["epochs_run"] == 1
