"""Defaults that follow the dataset (plan.py, folder.auto_side): the rules, and runs on small folders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli

from cnnlab.config import ADAPT_PARTS, apply_overrides, load_recipe
from cnnlab.data.base import ArraySplit, Dataset
from cnnlab.data.folder import auto_side
from cnnlab.plan import (
    MIN_BATCH,
    MIN_STEPS_PER_EPOCH,
    MIN_TOTAL_STEPS,
    MIN_WARMUP_STEPS,
    adapt,
    adapted_batch,
    flips_keep_class,
    warmup_epochs_for,
)


@pytest.mark.parametrize("n", [40, 200, 480, 4_000, 12_000, 55_000, 1_000_000])
def test_batch_leaves_enough_steps_an_epoch(n):
    b = adapted_batch(n, 256, epochs=100)
    assert b <= 256 and (n // b >= MIN_STEPS_PER_EPOCH or b == MIN_BATCH)
    assert b == 256 or n // (2 * b) < MIN_STEPS_PER_EPOCH  # halved no further than needed
    assert adapted_batch(n, 256, epochs=1) <= b and (
        n // adapted_batch(n, 256, 1) >= MIN_TOTAL_STEPS or adapted_batch(n, 256, 1) == MIN_BATCH
    )


def test_warmup_is_the_recipes_with_a_floor_in_steps_and_a_ceiling_in_share():
    assert warmup_epochs_for(0.5, 214, 4) == 0.5  # Fashion-MNIST: the recipe's own 107 steps
    assert warmup_epochs_for(0.5, 15, 57) * 15 == pytest.approx(MIN_WARMUP_STEPS, abs=0.01)  # 7.5 steps -> 50
    assert warmup_epochs_for(0.5, 3, 3) * 3 == pytest.approx(0.2 * 9, abs=0.01)  # a 9-step run: a fifth of it


def _recipe():
    """The default recipe with data.augment resolved as prepare() resolves it for an image folder."""
    cfg = load_recipe(None)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment="flip-translate"))


def _dataset(images: torch.Tensor, labels: torch.Tensor, classes: int) -> Dataset:
    split = ArraySplit(images, labels)
    return Dataset(split, split, [str(i) for i in range(classes)], source="test", input_shape=tuple(images.shape[1:]))


def _bars(n: int, mirror_safe: bool, size: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes. mirror_safe: each class is a horizontal bar at its own height (a mirror image keeps it);
    else a vertical bar at its own column left of the middle, or right of it (a mirror image swaps the classes)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 4, n)
    x = g.integers(0, 50, (n, 1, size, size)).astype(np.uint8)
    cols = [2, 7, size - 9, size - 4]
    for i, k in enumerate(y):
        if mirror_safe:
            x[i, 0, 3 + 6 * k : 6 + 6 * k, :] = 220
        else:
            x[i, 0, :, cols[k] : cols[k] + 3] = 220
    return torch.from_numpy(x), torch.from_numpy(y).long()


@pytest.mark.parametrize("mirror_safe", [True, False])
def test_flips_are_measured_on_the_images(mirror_safe):
    x, y = _bars(400, mirror_safe)
    flips, why = flips_keep_class(ArraySplit(x, y), 4)
    assert flips is mirror_safe and "mirror images" in why


def test_flips_not_measured_on_noise_or_tiny_data():
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (400, 1, 12, 12), generator=g, dtype=torch.uint8)
    assert flips_keep_class(ArraySplit(noise, torch.arange(400) % 4), 4)[0] is None
    assert flips_keep_class(ArraySplit(noise[:8], torch.arange(8) % 4), 4)[0] is None


def test_the_default_recipe_is_unchanged_on_fashion_mnist_sized_data():
    """55,000 training images: the recipe's own batch, lr, warm-up and epochs (it was tuned there)."""
    cfg = _recipe()
    x, y = _bars(55_000, mirror_safe=True)
    out, notes = adapt(cfg, _dataset(x, y, 4), augment_auto=True)
    assert (out.train.batch_size, out.optim.lr, out.schedule.warmup_epochs, out.train.epochs) == (256, 0.2, 0.5, 4)
    assert out.data.translate == cfg.data.translate and out.data.augment == "flip-translate"
    assert (
        out.train.adapt is False and out.train.reference_images is None
    )  # config.yaml holds the results, not the rules
    assert notes[0].startswith("batch 256 for 55,000 training images: 214 steps an epoch")


def test_a_small_dataset_gets_a_smaller_batch_a_scaled_lr_a_longer_warmup_and_more_epochs():
    cfg = _recipe()
    x, y = _bars(480, mirror_safe=False)
    out, notes = adapt(cfg, _dataset(x, y, 4), augment_auto=True)
    tc = out.train
    assert tc.batch_size == 32 and out.optim.lr == pytest.approx(0.2 * 32 / 256)
    assert 4 < tc.epochs <= 100 and out.schedule.warmup_epochs * (480 // 32) == pytest.approx(
        MIN_WARMUP_STEPS, abs=0.01
    )
    assert out.data.augment == "translate" and out.data.translate >= 1  # mirror images would swap these classes
    assert any(n.startswith("batch 32 for 480 training images: 15 steps an epoch") for n in notes)
    assert any("no mirror images" in n for n in notes) and any("epochs" in n and "sqrt" in n for n in notes)


def test_keys_the_user_sets_are_not_adapted():
    cfg = _recipe()
    for keys, gone in [
        ({"optim.lr": 0.05}, "lr"),
        ({"train.epochs": 3, "train.min_steps": None}, "epochs"),
        ({"train.batch_size": 64}, "batch"),
    ]:
        assert apply_overrides(cfg, keys).train.adapt == [p for p in ADAPT_PARTS if p != gone]
    assert apply_overrides(cfg, {"data.root": "x", "train.seed": 2}).train.adapt is True
    x, y = _bars(480, mirror_safe=True)
    fixed = apply_overrides(cfg, {"optim.lr": 0.05, "train.epochs": 3})
    out, _ = adapt(fixed, _dataset(x, y, 4), augment_auto=True)
    assert (out.optim.lr, out.train.epochs, out.train.batch_size) == (0.05, 3, 32)
    searched = apply_overrides(
        cfg, {"optim.lr": 0.2213691468878238}
    )  # as a search trial sets it: kept to the last digit
    assert adapt(searched, _dataset(x, y, 4), augment_auto=True)[0].optim.lr == 0.2213691468878238
    tiny = apply_overrides(cfg, {"optim.lr": 1.0e-7, "train.adapt": ["batch", "lr"]})  # scaled, not rounded to zero
    assert adapt(tiny, _dataset(x, y, 4), augment_auto=True)[0].optim.lr == pytest.approx(1.0e-7 * 32 / 256, rel=1e-12)
    assert adapt(apply_overrides(cfg, {"train.adapt": False}), _dataset(x, y, 4), True)[0].train.batch_size == 256


@pytest.mark.parametrize(
    ("sides", "count", "want"),
    [
        ([28] * 9, 500, 28),
        ([30, 41, 45], 500, 40),
        (list(range(40, 201)), 600, 64),
        ([500] * 5, 60_000, 96),
        ([8, 8, 9], 100, 8),
        ([13, 14, 15], 100, 14),
        ([5], 10, 8),
    ],
)
def test_input_side_follows_the_images(sides, count, want):
    assert auto_side(sides, count) == want


# --- small versions of the defaults suite: whole runs, as a user types them ---------------------------


def _flat_folder(root, n_per_class: int, size: int, mode: str = "RGB", suffix: str = ".png"):
    """4 classes of bars (horizontal, so mirror images keep their class) with noise, as image files."""
    from PIL import Image

    x, y = _bars(4 * n_per_class, mirror_safe=True, size=size, seed=1)
    for i, (img, k) in enumerate(zip(x[:, 0].numpy(), y.tolist())):
        path = root / f"class_{k}" / f"{i:04d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert(mode).save(path)
    return root


def _split_folder(root, sizes=(20, 33, 47)):
    """train/val/test, 3 classes, JPEG of mixed sizes."""
    from PIL import Image

    x, y = _bars(360, mirror_safe=True, size=48, seed=2)
    for i, (img, k) in enumerate(zip(x[:, 0].numpy(), y.tolist())):
        if k == 3:
            continue
        part = "train" if i < 240 else "val" if i < 290 else "test"
        side = sizes[i % len(sizes)]
        path = root / part / f"c{k}" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("RGB").resize((side, side)).save(path, quality=92)
    return root


SUITE = {"split-jpeg-mixed-rgb": _split_folder, "flat-png-gray-12px": lambda root: _flat_folder(root, 50, 12, "L")}


@pytest.mark.parametrize("name", SUITE)
def test_small_suite_trains_far_above_chance_with_epochs_3_and_never_diverges(name, tmp_path):
    data = SUITE[name](tmp_path / "data")
    out = tmp_path / "run"
    r = run_cli(
        "train", "--data", str(data), "--epochs", "3", "--out", str(out), "--set", "train.report=false", timeout=300
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    chance = 1 / len(m["test"]["per_class"]) if "per_class" in m["test"] else 1 / 4
    assert m["epochs_run"] == 3 and m["test"]["accuracy"] >= max(0.7, 2 * chance), m["test"]["accuracy"]
    losses = [float(line.split(",")[1]) for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert max(losses) <= 3 * losses[0] or m["recoveries"]  # a rise gets a recovery, logged
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    log = (out / "log.txt").read_text()
    assert f"batch {cfg['train']['batch_size']} for " in log and "steps an epoch" in log and "warm-up" in log
    assert (
        cfg["train"]["adapt"] is False and cfg["train"]["epochs"] == 3
    )  # the resolved values: rerunning config.yaml repeats the run
