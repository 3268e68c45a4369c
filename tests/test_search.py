"""cnnlab sweep --search optuna: the space flags and what is refused, trials left RUNNING, pruned and failed
trials, and a search killed mid-way that resumes to its trial count (acceptance 4 of issue 22)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import QUICK, run_main

from cnnlab.errors import ConfigError
from cnnlab.search import Dimension, parse_space

pytest.importorskip("optuna", reason="optuna is not installed (make test installs it)")


def test_space_flags_give_ints_floats_log_ranges_and_choices():
    assert parse_space(
        ["train.epochs=1:4", "optim.lr=1e-3:0.5:log", "train.label_smoothing=0:0.2", "model.kwargs.widths=[8,8],[8,16]"]
    ) == [
        Dimension("train.epochs", 1, 4),
        Dimension("optim.lr", 1e-3, 0.5, log=True),
        Dimension("train.label_smoothing", 0, 0.2),
        Dimension("model.kwargs.widths", choices=([8, 8], [8, 16])),
    ]
    for bad in ("optim.lr=0.5:0.01", "optim.lr=0:0.5:log", "optim.lr=0.1", "optim.lr=a:b", "optim.lr=1:2:ln"):
        with pytest.raises(ConfigError, match="--space expects"):
            parse_space([bad])


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--search", "optuna", "--space", "optim.lr=0.5:0.01"], "low < high"),
        (["--search", "optuna", "--space", "optim.nope=0.1:0.5"], "unknown key 'optim.nope'"),
        (["--search", "optuna"], "at least one --space"),
        (["--space", "optim.lr=0.01:0.5"], "add --search optuna"),
        (["--search", "optuna", "--space", "optim.lr=0.01:0.5", "--grid", "optim.momentum=0.9"], "no --grid"),
    ],
)
def test_a_bad_search_is_one_line_before_any_run(tmp_path, flags, says):
    r = run_main("sweep", "fashion-mnist-fast", *flags, "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_a_search_under_torchrun_is_refused_before_any_run(tmp_path, monkeypatch):
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    r = run_main(
        "sweep",
        "fashion-mnist-fast",
        "--search",
        "optuna",
        "--space",
        "optim.lr=0.01:0.5",
        "--out",
        str(tmp_path / "s"),
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "without torchrun" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_a_second_search_in_the_same_folder_is_refused_while_one_runs(tmp_path):
    import fcntl

    out = tmp_path / "s"
    out.mkdir()
    with open(out / ".search.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running search holds it
        r = run_main(
            "sweep", "fashion-mnist-fast", "--search", "optuna", "--space", "optim.lr=0.01:0.5", "--out", str(out)
        )
    assert r.returncode == 2 and "another search is running" in r.stderr, r.stderr


def _fake_train(calls: list[int]):
    """A stand-in for train_run: each epoch's validation accuracy grows with the learning rate (so the
    pruner has something to compare), the third run diverges, and metrics.json is written as a run's is."""
    from types import SimpleNamespace

    from cnnlab.engine.state import FitState
    from cnnlab.run import RunDiverged
    from cnnlab.run_folder import write_json

    def train(cfg, *, out=None, resume=None, callbacks=(), **_):
        calls.append(len(calls))
        if len(calls) == 3:
            raise RunDiverged("the training loss became nan at epoch 1, step 2")
        state = FitState(epochs=3, steps_per_epoch=1)
        for epoch in (1, 2, 3):
            state.epoch = epoch
            for cb in callbacks:
                cb.on_epoch_end(state, {"val_accuracy": min(1.0, cfg.optim.lr * epoch)})
            if state.stop_reason:
                break
        acc = min(1.0, cfg.optim.lr * state.epoch)
        m = {"val": {"accuracy": acc}, "test": {"accuracy": acc / 2}, "epochs_run": state.epoch}
        m |= {"stop_reason": state.stop_reason, "train_seconds": 0.1}
        Path(out).mkdir(parents=True)
        write_json(Path(out) / "metrics.json", m)
        return SimpleNamespace(metrics=m)

    return train


def test_a_trial_left_running_before_its_run_began_trains_with_its_values_and_pruned_and_failed_trials_count(
    tmp_path,
):
    from cnnlab.config import load_recipe
    from cnnlab.search import open_study, run_search

    out, space = tmp_path / "s", parse_space(["optim.lr=0.01:0.5:log"])
    out.mkdir()
    study = open_study(out, seed=0)
    left = study.ask()  # as a process killed between Optuna's ask and the trial's first checkpoint leaves it
    asked = space[0].suggest(left)
    calls: list[int] = []
    rows = run_search(load_recipe(None), space, trials=12, out=out, train=_fake_train(calls), log=lambda _: None)
    assert len(calls) == 12 and [r.number for r in rows] == list(range(12))
    assert rows[0].state == "COMPLETE" and rows[0].params == {"optim.lr": asked}
    assert rows[2].state == "FAIL" and "nan" in rows[2].stop_reason and rows[2].val_accuracy is None
    pruned = [r for r in rows if r.state == "PRUNED"]
    assert pruned and all(r.epochs_run < 3 and r.stop_reason.startswith("pruned by the median pruner") for r in pruned)
    assert {r.state for r in rows} == {"COMPLETE", "PRUNED", "FAIL"}
    done = [r.val_accuracy for r in rows if r.state == "COMPLETE"]
    assert rows[-1].best_so_far == max(done) and json.loads((out / "sweep.json").read_text())["best_trial"] in {
        r.number for r in rows if r.val_accuracy == max(done) and r.state == "COMPLETE"
    }


FLAGS = [*QUICK, "--epochs", "2", "--set", "model.kwargs.widths=[8,8,8]"]
# One torch thread: the 8-channel model's convolutions are too small to share, and on 2 busy cores a
# second thread made this test a third slower.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_search_killed_after_five_trials_resumes_and_ends_with_twelve(fashion_dir, tmp_path):
    out = tmp_path / "search"
    command = [
        "sweep",
        "fashion-mnist-fast",
        "--search",
        "optuna",
        "--trials",
        "12",
        "--space",
        "optim.lr=0.01:0.5:log",
        "--space",
        "train.label_smoothing=0:0.2",
        "--data",
        str(fashion_dir),
        "--out",
        str(out),
        *FLAGS,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ONE_THREAD,
    )
    # Killed once trial 5 has written the checkpoint of its first epoch (looked for at each line the
    # search prints, the epoch's among them): trials 0-4 have ended, and trial 5 is left RUNNING in
    # study.db with a run to resume.
    started, seen, deadline = False, [], time.time() + 90
    try:
        for line in proc.stdout:
            seen.append(line)
            started = started or line.startswith("search: trial 5 (")
            if started and (out / "trial-005" / "checkpoints" / "last.pt").is_file():
                proc.send_signal(signal.SIGKILL)
                break
            assert time.time() < deadline, "".join(seen[-20:])
    finally:
        proc.kill()
        proc.wait()
    assert started, "".join(seen[-20:])
    assert not (out / "sweep.md").exists()
    lr_before_kill = yaml.safe_load((out / "trial-005" / "config.yaml").read_text())["optim"]["lr"]

    r = run_main(*command, env=ONE_THREAD)  # the same command, in this process
    assert r.returncode == 0, r.stderr[-2000:]
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["number"] for t in trials] == list(range(12))
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{i:03d}" for i in range(12)]
    for t in trials:
        metrics = json.loads((out / f"trial-{t['number']:03d}" / "metrics.json").read_text())
        assert (t["val_accuracy"], t["test_accuracy"]) == (metrics["val"]["accuracy"], metrics["test"]["accuracy"])
        assert 0.01 <= t["params"]["optim.lr"] <= 0.5 and 0 <= t["params"]["train.label_smoothing"] <= 0.2
    resumed = json.loads((out / "trial-005" / "metrics.json").read_text())
    assert resumed["sessions"] == 2 and trials[5]["params"]["optim.lr"] == pytest.approx(lr_before_kill)  # carried on
    assert len(set(t["params"]["optim.lr"] for t in trials)) == 12  # the resumed sampler drew no trial again
    table = (out / "sweep.md").read_text()
    assert table.count("\n") == 14 and (out / "search.png").stat().st_size > 0
    assert run_main(*command, env=ONE_THREAD).returncode == 0  # a finished search is read back: no new trial
    assert len(json.loads((out / "sweep.json").read_text())["trials"]) == 12
