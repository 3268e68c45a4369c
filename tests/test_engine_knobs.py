"""Schedule shapes, plateau, clipping, early stopping, the NaN guard (every component from YAML and
--set: tests/test_objectives.py)."""

import json

import pytest
import torch
from conftest import QUICK, run_cli, run_main

from cnnlab.cli import main
from cnnlab.config import ScheduleConfig
from cnnlab.engine.optim import create_scheduler

TWO_STEPS = [
    "--epochs",
    "1",
    "--set",
    "data.val_size=64",
    "--set",
    "train.batch_size=128",
    "--set",
    "data.train_limit=320",
    "--set",
    "train.report=false",
]  # 256 images: 2 steps


def _lrs(cfg, steps_per_epoch=10, epochs=6):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = create_scheduler(opt, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_and_cosine_restarts_and_one_cycle_shapes():
    step = _lrs(ScheduleConfig(name="step", step_epochs=2, gamma=0.5))
    assert step[0] == 1.0 and step[19] == 1.0 and step[20] == 0.5 and step[40] == 0.25
    cos = _lrs(ScheduleConfig(name="cosine-restarts", restart_epochs=2, restart_mult=2))
    assert (
        cos[0] == 1.0 and cos[10] == pytest.approx(0.5) and cos[20] == 1.0 and cos[40] == pytest.approx(0.5)
    )  # restart at 2, cycle of 4
    one = _lrs(ScheduleConfig(name="one-cycle", pct_start=0.25))
    assert (
        one[0] == pytest.approx(1 / 25)
        and max(one) == pytest.approx(1.0)
        and one.index(max(one)) == 15
        and one[-1] < 0.01
    )


def test_plateau_lowers_the_lr_when_validation_stalls():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = create_scheduler(opt, ScheduleConfig(name="plateau", factor=0.5, patience=1, min_lr=0.2), 10, 5)
    assert sched.monitor == "val_loss"
    for loss in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == 0.2  # halved twice... and never below min_lr


def test_plateau_without_validation_is_refused_up_front(fashion_dir, tmp_path):
    r = run_cli(
        "train",
        "--data",
        str(fashion_dir),
        "--out",
        str(tmp_path / "r"),
        *QUICK,
        "--set",
        "schedule.name=plateau",
        "--set",
        "data.val_size=0",
    )
    assert r.returncode == 2 and "plateau" in r.stderr and not (tmp_path / "r").exists()


def test_gradient_clipping_bounds_the_update():
    from cnnlab.engine.loop import TrainStep, train_one_epoch
    from cnnlab.engine.losses import cross_entropy

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = [(torch.randn(8, 4) * 1000, torch.zeros(8, dtype=torch.long))]
    train_one_epoch(batch, TrainStep(model, opt, cross_entropy(2), clip_grad_norm=0.01))
    assert (model.weight.detach() - before).norm() <= 0.01 + 1e-6


def test_early_stopping_keeps_the_best(fashion_dir, tmp_path):
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                "--epochs",
                "30",
                "--lr",
                "0.3",
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=64",
                "--set",
                "train.early_stopping=2",
                "--set",
                "train.min_steps=null",
                "--set",
                "train.report=false",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_run"] < 30 and "early stopping" in m["stop_reason"] and m["epochs_run"] - m["best_epoch"] == 2


def test_early_stopping_on_validation_loss_keeps_the_lowest(fashion_dir, tmp_path):
    import csv

    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                "--epochs",
                "30",
                "--lr",
                "0.3",
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=64",
                "--set",
                "train.early_stopping=2",
                "--set",
                "train.monitor=val_loss",
                "--set",
                "train.report=false",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "history.csv")))
    losses = [float(r["val_loss"]) for r in rows]
    assert m["best_epoch"] == 1 + losses.index(min(losses)) and "val loss" in m["stop_reason"]
    # best.pt is the lowest-loss epoch (above); history.csv's validation ran in the training precision, metrics.json's
    # in fp32 from best.pt
    assert m["val"]["loss"] == pytest.approx(min(losses), abs=1e-6 if m["precision"] == "float32" else 2e-2)


def test_a_loss_that_explodes_stops_after_the_recoveries_with_one_line_and_keeps_the_last_good_epoch(
    fashion_dir, tmp_path
):
    out = tmp_path / "r"
    r = run_cli(
        "train",
        "--data",
        str(fashion_dir),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--lr",
        "1e6",
        "--set",
        "data.val_size=64",
        "--set",
        "train.batch_size=32",
        "--set",
        "schedule.name=one-cycle",
        "--set",
        "schedule.pct_start=0.5",
        "--optimizer",
        "sgd",
        "--set",
        "train.min_steps=null",
    )
    assert r.returncode == 3 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # the divergence guard rolls back and lowers the rate three times (lr 1e6 stays far too high), then stops
    assert "became nan" in r.stderr or "became inf" in r.stderr or "the training loss rose to" in r.stderr
    assert "after 3 recoveries" in r.stderr and (out / "log.txt").read_text().count("recovery ") == 3
    assert "at epoch" in r.stderr and "step" in r.stderr
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)  # loadable, and finite
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "last good weights" in r.stderr and str(out / "checkpoints" / "last.pt") in r.stderr


def test_threads_are_the_physical_cores_shared_by_local_processes(tmp_path, monkeypatch):
    from cnnlab.engine import device

    for cpu, siblings in enumerate(["0,2", "1,3", "0,2", "1,3"]):  # 2 cores with 2 hyperthreads each
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    monkeypatch.setattr(device, "CPU_SYS", tmp_path)
    monkeypatch.setattr(device, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(device.os, "cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        assert device.physical_cores() == 2
        assert device.set_threads(None) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this machine: a core each
        assert device.set_threads(None) == 1 and torch.get_num_threads() == 1
        assert device.set_threads(3) == 3 and torch.get_num_threads() == 3  # train.threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's (or torchrun's) choice is kept
        assert device.set_threads(None) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        (tmp_path / "cpu.max").write_text("100000 100000\n")  # a container limited to one CPU
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert device.physical_cores() == 1
    finally:
        torch.set_num_threads(before)


def test_train_threads_is_applied_and_recorded(fashion_dir, tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "run"
    try:
        assert main(["train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "train.threads=1"]) == 0
    finally:
        torch.set_num_threads(before)
    assert json.loads((out / "metrics.json").read_text())["threads"] == 1
    r = run_main(
        "train", "--data", str(fashion_dir), "--out", str(tmp_path / "bad"), *QUICK, "--set", "train.threads=0"
    )
    assert r.returncode == 2 and "train.threads" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "augment, data, expected",
    [
        ("auto", "fashion", True),
        ("translate", "fashion", False),
        ("flip+rotate", "fashion", True),
        ("auto", "mnist-5k", False),
        ("flip-translate", "mnist-5k", False),
    ],
)
def test_tta_auto_mirrors_at_test_time_only_where_training_flips(fashion_dir, augment, data, expected):
    from cnnlab.config import apply_overrides, load_recipe
    from cnnlab.run import prepare

    source = {"data.root": str(fashion_dir)} if data == "fashion" else {"data.name": "mnist-5k"}
    cfg = apply_overrides(
        load_recipe(None), {**source, "data.augment": augment, "data.val_size": 64, "train.tta": "auto"}
    )
    assert prepare(cfg).cfg.train.tta is expected


def test_tta_takes_true_false_or_auto(fashion_dir, tmp_path):
    r = run_main("train", "--data", str(fashion_dir), "--out", str(tmp_path / "r"), "--set", "train.tta=sometimes")
    assert (
        r.returncode == 2
        and "train.tta is 'sometimes'; it must be true, false or auto" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )
    r = run_main("train", "--data", "mnist-5k", "--out", str(tmp_path / "m"), "--set", "train.tta=true")
    assert r.returncode == 2 and "changes digits" in r.stderr
