"""Several processes under torchrun: the data each process sees, and a real 2-process run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.data.base import ArraySplit
from cnnlab.data.loader import TensorLoader

TORCHRUN = Path(sys.executable).parent / "torchrun"  # installed beside python by the torch wheel
# --standalone: each run its own free rendezvous port, not 29500 again while the last run's socket may linger


def _split(n: int) -> ArraySplit:
    # label i for image i: the labels of a batch say which samples it holds
    return ArraySplit(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))


def _labels(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


@pytest.mark.parametrize("world", [2, 3])
def test_each_training_batch_is_split_among_the_processes(world):
    """Rank r gets piece r of every global batch: together they train on the single process's batches."""
    split, batch = _split(100), 12
    single = TensorLoader(split, batch, mean=[0.0], std=[1.0], shuffle=True, drop_last=True, seed=5)
    single.set_epoch(2)
    ranks = []
    for r in range(world):
        ld = TensorLoader(
            split, batch // world, mean=[0.0], std=[1.0], shuffle=True, drop_last=True, seed=5, shard=(r, world)
        )
        ld.set_epoch(2)
        ranks.append(_labels(ld))
    assert len({len(b) for b in ranks}) == 1  # every process steps the same number of times
    together = [sum((ranks[r][i] for r in range(world)), []) for i in range(len(ranks[0]))]
    assert together == _labels(single)


def test_evaluation_chunks_cover_the_split_once():
    split = _split(101)
    seen = []
    for r in range(3):
        seen += sum(_labels(TensorLoader(split, 16, mean=[0.0], std=[1.0], shard=(r, 3))), [])
    assert sorted(seen) == list(range(101))


def test_torchrun_two_processes_write_one_run_folder(fashion_dir, tmp_path):
    out = tmp_path / "runs" / "ddp"
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cnnlab",
        "train",
        "--data",
        str(fashion_dir),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--set",
        "data.val_size=64",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.report=false",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # one folder, written by rank 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == 2
    assert m["test"]["num_samples"] == 120 and m["val"]["num_samples"] == 64  # reduced over both processes
    assert sum(map(sum, m["test"]["confusion_matrix"])) == 120
    assert r.stdout.count("test accuracy") == 1  # only rank 0 prints
    log = (out / "log.txt").read_text()
    assert "2 processes" in log and "global batch 64" in log
    steps = (out / "steps.csv").read_text().strip().splitlines()
    assert len(steps) == 1 + 2 * (256 // 64)  # the global batch: 4 steps an epoch, as one process would take
    torch.load(out / "checkpoints" / "best.pt", weights_only=True)


def test_a_global_batch_that_does_not_divide_is_refused(fashion_dir):
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.errors import ConfigError
    from cnnlab.run import prepare

    cfg = apply_overrides(RunConfig(), {"data.root": str(fashion_dir), "train.batch_size": 65})
    with pytest.raises(ConfigError, match="multiple of 2"):
        prepare(cfg, world=2)
    cfg = apply_overrides(RunConfig(), {"data.root": str(fashion_dir), "train.freeze_epochs": 1})
    with pytest.raises(ConfigError, match="freeze_epochs"):
        prepare(cfg, world=2)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m cnnlab train ARGS`, which must succeed (its stderr's end shows why not)."""
    r = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "cnnlab", "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _history(run: Path) -> list[list[str]]:
    return [line.split(",")[:-1] for line in (run / "history.csv").read_text().splitlines()]  # without epoch_seconds


def test_torchrun_resume_from_an_epoch_end_is_exact(fashion_dir, tmp_path):
    common = [
        "--data",
        str(fashion_dir),
        "--set",
        "data.val_size=64",
        "--set",
        "train.batch_size=64",
        "--set",
        "schedule.name=constant",
        "--lr",
        "0.05",
        "--set",
        "train.report=false",
        "--set",
        "model.kwargs={widths: [8, 16]}",
    ]
    _torchrun(*common, "--out", str(tmp_path / "a"), "--epochs", "2")
    _torchrun("--resume", str(tmp_path / "a"), "--epochs", "3")
    _torchrun(*common, "--out", str(tmp_path / "b"), "--epochs", "3")
    assert _history(tmp_path / "a") == _history(tmp_path / "b") and len(_history(tmp_path / "a")) == 4
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
