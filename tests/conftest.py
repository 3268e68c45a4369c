"""Shared fixtures: small datasets written in their exact on-disk formats, and CLI runners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]


def make_pattern_images(n: int, num_classes: int = 10, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 images: class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    band = size // num_classes
    for i, k in enumerate(labels):
        if k % 2:
            images[i, k * band : (k + 1) * band + 2, :] = 230
        else:
            images[i, :, k * band : (k + 1) * band + 2] = 230
    return images, labels


def write_fashion_fixture(folder: Path, n_train: int = 320, n_test: int = 120, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files (28x28 uint8 images, uint8 labels) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_pattern_images(n, seed=seed)
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    return write_fashion_fixture(tmp_path_factory.mktemp("fashion"))


# Keys a quick train on the fixture overrides, so a test run takes about a second.
QUICK = ["--epochs", "1", "--set", "data.val_size=64", "--set", "train.batch_size=64", "--set", "train.eval_batch_size=128"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m cnnlab ARGS` in a subprocess, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
