"""The report recipes against the raw report text (../shared/seeds/): splits, targets, subsets, model
listings, learning rates, the weights tested, precision and seeds. Each test names the report line it
holds the recipe to."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn
from conftest import write_celeba_fixture, write_fashion_fixture, write_image_folder

from cnnlab.cli import main
from cnnlab.config import apply_overrides, load_recipe
from cnnlab.data import load_dataset, part_sizes
from cnnlab.data.base import ArraySplit
from cnnlab.data.splits import carve
from cnnlab.models import create_model, num_parameters
from cnnlab.reproduce import study_names


def _split_counts(data_cfg, n: int) -> tuple[int, int, int]:
    """(train, val, test) of a single folder of n images under `data_cfg`, carved as load_dataset does."""
    split = ArraySplit(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.long))
    test_size, val_size = part_sizes(data_cfg, n, carve_test=True)
    train, test = carve(split, test_size, n, data_cfg.split_seed, data_cfg.split)
    train, val = carve(train, val_size, n, 0, data_cfg.split)
    return len(train), len(val), len(test)


def test_hanoi_split_is_70_10_20_with_the_reports_arithmetic(tmp_path):
    """Report 004: "proportion 70:10:20"; its test part is 12,183 of 60,907 images (train int(0.7 n),
    val int(0.1 n), test the rest); "resized images to 256x256"."""
    cfg = load_recipe("hanoi-animals").data
    assert _split_counts(cfg, 60_907) == (42_634, 6_090, 12_183)
    assert cfg.preprocess[0] == {"resize": [256, 256]} and cfg.preprocess[1] == {"center_crop": 224}
    # the same arithmetic through load_dataset on a real folder: 97 images -> 67 / 9 / 21
    folder = write_image_folder(tmp_path / "animals", {"cat": 49, "dog": 48}, size=(8, 8))
    ds = load_dataset(
        dataclasses.replace(cfg, root=str(folder), preprocess=[{"resize": [8, 8]}], in_memory=True), seed=0
    )
    assert (len(ds.train), len(ds.val), len(ds.test)) == (67, 9, 21)


def test_celeba_recipe_is_the_books_code(tmp_path):
    """Report 000 B: get_smile = lambda attr: attr[18]; Subset(..., torch.arange(16000)) and
    torch.arange(1000); torch.manual_seed(1); the model listing has no dropout (388,673 parameters)."""
    recipe = load_recipe("textbook-celeba-smile")
    assert recipe.data.attributes == 18 and recipe.data.split == "first"
    assert (recipe.data.train_limit, recipe.data.val_limit) == (16_000, 1_000) and recipe.train.seed == 1
    root, attrs = write_celeba_fixture(tmp_path / "celeba", [0] * 10 + [1] * 6 + [2] * 4, size=(20, 24))
    cfg = dataclasses.replace(
        recipe.data,
        root=str(root),
        train_limit=7,
        val_limit=4,
        preprocess=[{"center_crop": 20}, {"resize": 8}],
        in_memory=True,
    )
    ds = load_dataset(cfg, seed=recipe.train.seed)
    # the first 7 train and first 4 valid entries of the files, with column 18 of the attribute table as the target
    assert ds.train.labels.tolist() == [int(v > 0) for v in attrs[:7, 18]]
    assert ds.val.labels.tolist() == [int(v > 0) for v in attrs[10:14, 18]]
    model = create_model(recipe.model.name, num_classes=2, in_channels=3, input_size=(64, 64))
    assert num_parameters(model) == 388_673 and not any(isinstance(m, nn.Dropout) for m in model.modules())
    variant = create_model("textbook-celeba-smile-dropout", num_classes=2, in_channels=3, input_size=(64, 64))
    assert num_parameters(variant) == 388_673 and sum(isinstance(m, nn.Dropout) for m in variant.modules()) == 2


def test_uw_lab_fashion_splits_the_labs_10000_and_takes_its_learning_rate(tmp_path):
    """Report 001: "10000 training samples, 1000 testing samples", split into train/validation/test;
    "Adam with lr = 3e-4 as baseline"."""
    recipe = load_recipe("uw-lab-fashion")
    d = recipe.data
    assert (d.given_limit, d.val_size, d.test_limit, d.train_limit) == (10_000, 1_000, 1_000, None)
    assert recipe.optim.name == "adam" and recipe.optim.lr == pytest.approx(3e-4)
    data = write_fashion_fixture(tmp_path / "idx", n_train=300, n_test=50)
    cfg = apply_overrides(
        recipe, {"data.root": str(data), "data.given_limit": 100, "data.val_size": 10, "data.test_limit": 10}
    ).data
    ds = load_dataset(cfg, seed=recipe.train.seed)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 10)  # the 100 given, split: not 100 train + 10 more


TESTED = {  # what each report scored: the model at the end, except report 002's "best model kept"
    "textbook-mnist": "last",
    "textbook-celeba-smile": "last",
    "uw-lab-mnist": "last",
    "uw-lab-fashion": "last",
    "kth-cifar10": "last",
    "hanoi-animals": "last",
    "cifar10-comprehensive": "best",
}


def test_each_report_recipe_tests_the_weights_its_report_tested():
    assert set(TESTED) == set(study_names())
    assert {name: load_recipe(name).train.test_weights for name in TESTED} == TESTED


def test_last_weights_and_no_validation_part_test_the_end_of_training(fashion_dir, tmp_path, capsys):
    """test_weights last scores last.pt, and evaluate reads the same file; with no validation part,
    best is not chosen by training accuracy: the last weights are tested, and log.txt says so."""
    quick = [
        "--epochs",
        "2",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.report=false",
        "--set",
        "model.kwargs={widths: [8, 16]}",
        "--lr",
        "0.05",
    ]
    out = tmp_path / "last"
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                "--set",
                "data.val_size=64",
                "--set",
                "train.test_weights=last",
                *quick,
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert (m["test_weights"], m["tested_epoch"]) == ("last", 2)
    assert main(["evaluate", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == m["test"]["accuracy"]
    none = tmp_path / "noval"
    assert main(["train", "--data", str(fashion_dir), "--out", str(none), "--set", "data.val_size=0", *quick]) == 0
    m = json.loads((none / "metrics.json").read_text())
    assert (m["test_weights"], m["tested_epoch"]) == ("last", 2) and "val" not in m
    assert "there is no validation part" in (none / "log.txt").read_text()


def test_report_recipes_train_in_fp32():
    """No report trained under bf16 autocast (report 002 names mixed precision only as an option)."""
    assert {name: load_recipe(name).train.precision for name in study_names()} == {
        name: "fp32" for name in study_names()
    }


def test_comprehensive_cifar10_fixes_seed_42_and_determinism():
    """Report 002: torch.manual_seed(42) and cudnn.deterministic = True."""
    t = load_recipe("cifar10-comprehensive").train
    assert (t.seed, t.deterministic) == (42, True)
