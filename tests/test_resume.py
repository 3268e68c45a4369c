"""Exact resume: a training process killed with SIGKILL (or stopped with Ctrl-C) at several points and
resumed with `cnnlab train --resume` ends with the same weights, history and metrics as a run that
was never interrupted. Also periods (--epochs N on a finished run) and the refusals of --resume."""

import csv
import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import run_cli, run_main, write_image_folder

# 256 training images in batches of 32: 8 steps an epoch, 3 epochs. last.pt is also saved every 3
# steps inside epochs. Augmentation (flip+translate), mixup (global RNG) and an EMA are on, so every
# saved stream matters.
ARGS = [
    "--epochs",
    "3",
    "--lr",
    "0.05",
    "--set",
    "data.val_size=64",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.eval_batch_size=128",
    "--set",
    "train.checkpoint_steps=3",
    "--set",
    "data.augment=flip-translate",
    "--set",
    "data.translate=1",
    "--set",
    "train.mixup=0.2",
    "--set",
    "train.ema=0.9",
    "--set",
    "train.report=false",
    "--set",
    "model.kwargs.widths=[16, 32]",
]

# Runs cnnlab train in-process with one extra callback that kills this process at a chosen point:
# `batch N` after optimizer step N (before that step's checkpoint), `epoch N` after epoch N's
# validation (before its checkpoints), `sigint N` sends Ctrl-C at step N.
DRIVER = r"""
import os, signal, sys
from cnnlab.cli import _train_overrides, build_parser
from cnnlab.config import apply_overrides, load_recipe, parse_set
from cnnlab.engine.callbacks import Callback
from cnnlab.errors import CnnlabError
from cnnlab.run import train_run

where, at = sys.argv[1], int(sys.argv[2])
args = build_parser().parse_args(["train", *sys.argv[3:]])

class Kill(Callback):
    def on_batch_end(self, state, loss):
        if where == "batch" and state.step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        if where == "sigint" and state.step == at:
            os.kill(os.getpid(), signal.SIGINT)
    def on_epoch_end(self, state, row):
        if where == "epoch" and state.epoch == at:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = apply_overrides(load_recipe(None), {**parse_set(args.set), **_train_overrides(args)})
try:
    train_run(cfg, out=args.out, callbacks=[Kill()])
except CnnlabError as e:  # as cnnlab.cli.main reports it
    print(f"cnnlab train: error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""

TIMING = {"train_seconds", "total_seconds", "sessions"}  # sessions: 2 after a resume, 1 straight


def _drive(where: str, at: int, data, out, args=ARGS) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", DRIVER, where, str(at), "--data", str(data), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _history(run) -> list[dict]:
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def _metrics(run) -> dict:
    m = {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in TIMING}
    m.get("precision_policy", {}).pop(
        "cached", None
    )  # the first run of a session measured it, the others read the cache
    return m


def _weights(run, ema: bool) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    raw = {f"raw.{k}": v for k, v in ckpt["raw_model"].items()} if ema else {}
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **raw}


def _assert_same_run(a, b, ema: bool = True) -> None:
    wa, wb = _weights(a, ema), _weights(b, ema)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ: {different[:3]}"
    assert _history(a) == _history(b)
    assert (a / "steps.csv").read_text() == (b / "steps.csv").read_text()
    assert _metrics(a) == _metrics(b)


@pytest.fixture(scope="module")
def straight(fashion_dir, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    r = run_cli("train", "--data", str(fashion_dir), "--out", str(out), *ARGS, timeout=180)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize(
    "where, at, resumed_inside_epoch",
    [
        ("batch", 5, True),  # mid-epoch 1: back to the save at step 3
        ("epoch", 1, True),  # after epoch 1's validation, before its checkpoint: back to step 6
        ("batch", 13, True),  # mid-epoch 2, one step after the save at step 12
    ],
)
def test_sigkill_then_resume_gives_the_uninterrupted_run(
    where, at, resumed_inside_epoch, straight, fashion_dir, tmp_path
):
    out = tmp_path / "run"
    r = _drive(where, at, fashion_dir, out)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "metrics.json").exists()
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["fit"]["progress"] is not None) == resumed_inside_epoch
    r = run_cli("train", "--resume", str(out), timeout=180)
    assert r.returncode == 0, r.stderr
    assert "resumed" in (out / "log.txt").read_text()
    assert json.loads((out / "metrics.json").read_text())["sessions"] == 2
    _assert_same_run(out, straight)


def test_sigkill_inside_an_epoch_read_from_files_by_workers(tmp_path):
    """Images decoded from disk by two DataLoader workers (not held in memory): the same exactness. The
    first run computes the normalisation statistics from the files and the killed one reads them from
    the cache, so this also checks that reading files leaves the random streams alone."""
    folder = write_image_folder(tmp_path / "pets", {"cat": 30, "dog": 30, "fox": 30}, size=(16, 16))
    args = [
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--set",
        "data.in_memory=false",
        "--set",
        "data.workers=2",
        "--set",
        "data.val_size=9",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.checkpoint_steps=2",
        "--set",
        "data.augment=flip-translate",
        "--set",
        "data.translate=1",
        "--set",
        "train.report=false",
    ]
    straight = tmp_path / "straight"
    assert run_cli("train", "--data", str(folder), "--out", str(straight), *args, timeout=180).returncode == 0
    out = tmp_path / "run"
    assert _drive("batch", 5, folder, out, args).returncode == -signal.SIGKILL
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["loader"]["batches"] == 4
    assert run_cli("train", "--resume", str(out), timeout=180).returncode == 0
    _assert_same_run(out, straight, ema=False)


def test_ctrl_c_saves_the_position_and_exits_cleanly(straight, fashion_dir, tmp_path):
    out = tmp_path / "run"
    r = _drive("sigint", 10, fashion_dir, out)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    # the signal arrives during step 10's callbacks; the run stops cleanly after the next step
    assert saved["fit"]["step"] == 11 and saved["loader"]["batches"] == 3 and saved["fit"]["epoch"] == 2
    assert run_cli("train", "--resume", str(out), timeout=180).returncode == 0
    _assert_same_run(out, straight)


def test_periods_continue_a_finished_run(fashion_dir, tmp_path):
    """Three epochs, then --resume --epochs 5: two more, history continued, the schedule stretched."""
    out = tmp_path / "run"
    base = [
        "--data",
        str(fashion_dir),
        "--set",
        "data.val_size=64",
        "--set",
        "train.batch_size=64",
        "--set",
        "schedule.name=constant",
        "--set",
        "train.report=false",
        "--set",
        "model.kwargs={widths: [8, 16]}",
    ]  # the model is not the point
    assert run_cli("train", "--out", str(out), "--epochs", "3", *base).returncode == 0
    r = run_cli("train", "--resume", str(out), "--epochs", "5")
    assert r.returncode == 0, r.stderr
    rows = _history(out)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 5
    # a finished run without more epochs is refused, saying how to train more
    r = run_cli("train", "--resume", str(out))
    assert r.returncode == 2 and "--epochs" in r.stderr


@pytest.fixture(scope="module")
def finished(fashion_dir, tmp_path_factory):
    """A finished 2-epoch run; each refusal test works on a copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert (
        run_cli(
            "train",
            "--out",
            str(out),
            "--data",
            str(fashion_dir),
            "--epochs",
            "2",
            "--set",
            "data.val_size=64",
            "--set",
            "train.batch_size=64",
            "--set",
            "train.report=false",
        ).returncode
        == 0
    )
    return out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "model.kwargs.width=16"], "model.kwargs"),
        (["--set", "data.val_size=32"], "data.val_size"),
        (["--optimizer", "adam"], "optim.name"),
        (["--lr", "0.01"], "optim.lr"),  # the restored optimizer state would silently keep the old one
        (["--epochs", "1", "--set", "train.min_steps=null"], None),  # fewer epochs than done: refused too
    ],
)
def test_resume_refuses_a_different_model_or_data_saying_what_differs(extra, needle, finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = (out / "checkpoints" / "last.pt").read_bytes()
    r = run_main("train", "--resume", str(out), *extra)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (needle or "epoch") in r.stderr
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # nothing touched


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    r = run_main("train", "--resume", str(tmp_path))
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_fused_adam_resumes_exactly(fashion_dir, tmp_path):
    """Adam runs fused on the CPU (engine/optim.py); its saved state, step count included, resumes exactly."""
    args = [*ARGS, "--optimizer", "adam", "--lr", "0.001"]
    straight = tmp_path / "straight"
    r = run_cli("train", "--data", str(fashion_dir), "--out", str(straight), *args, timeout=180)
    assert r.returncode == 0, r.stderr
    saved = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert saved["optimizer"]["param_groups"][0].get("fused") is True
    out = tmp_path / "run"
    assert _drive("batch", 5, fashion_dir, out, args).returncode == -signal.SIGKILL
    assert run_cli("train", "--resume", str(out), timeout=180).returncode == 0
    _assert_same_run(out, straight)
