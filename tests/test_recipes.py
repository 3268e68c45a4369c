"""Every recipe in recipes/ runs end to end on a fixture in its dataset's exact on-disk format.

A new recipe is tested by adding its fixture line to FIXTURES (a missing line fails
test_every_recipe_has_a_fixture). Sizes are overridden to fit the fixtures; everything else is the
recipe's own."""

import json

import numpy as np
import pytest
import yaml
from conftest import (
    make_pattern_images,
    write_celeba_fixture,
    write_cifar_fixture,
    write_fashion_fixture,
    write_image_folder,
    write_npy_pairs,
)

from cnnlab.cli import main
from cnnlab.config import load_recipe, recipe_names
from cnnlab.plan import parts_of


def _idx(tmp_path):
    return write_fashion_fixture(tmp_path / "idx")


def _celeba(tmp_path):
    root, _ = write_celeba_fixture(tmp_path / "celeba", [0] * 12 + [1] * 4 + [2] * 4)
    return root


def _npy(tmp_path):
    x, y = make_pattern_images(140)
    return write_npy_pairs(
        tmp_path / "npy", {"train": (x[:120].reshape(120, -1), y[:120]), "test": (x[120:].reshape(20, -1), y[120:])}
    )


def _cifar(tmp_path):
    write_cifar_fixture(tmp_path / "cifar", n_per_batch=8, n_test=10)
    return tmp_path / "cifar"


def _folder(tmp_path):
    return write_image_folder(tmp_path / "animals", {f"animal{i}": 5 for i in range(4)}, size=(40, 30))


# recipe -> (fixture writer, overrides that fit the recipe's sizes to the fixture)
FIXTURES = {
    "fashion-mnist-fast": (_idx, []),
    "fashion-mnist-best": (_idx, []),
    "textbook-mnist": (_idx, ["data.name=mnist", "data.val_size=64"]),
    "textbook-celeba-smile": (_celeba, ["train.batch_size=4"]),
    "uw-lab-mnist": (_npy, ["data.val_size=20", "train.batch_size=20"]),
    "uw-lab-fashion": (_idx, ["data.val_size=64", "train.batch_size=64"]),
    "cifar10-comprehensive": (_cifar, ["data.val_size=8", "train.batch_size=8"]),
    "kth-cifar10": (_cifar, ["train.batch_size=8"]),
    "hanoi-animals": (_folder, ["train.batch_size=4", "data.workers=0"]),
    "finetune": (
        _folder,
        ["train.batch_size=4", "data.workers=0", "data.preprocess=[{resize: 64}, {center_crop: 64}]"],
    ),
}


def test_every_recipe_has_a_fixture():
    assert set(FIXTURES) == set(recipe_names())


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_runs_on_its_fixture(name, tmp_path):
    write, sets = FIXTURES[name]
    data = write(tmp_path)
    out = tmp_path / "run"
    args = ["train", name, "--data", str(data), "--out", str(out), "--epochs", "1", "--set", "train.report=false"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    recipe = load_recipe(name)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["name"] == recipe.model.name and saved["optim"]["name"] == recipe.optim.name
    lr = (
        recipe.optim.lr * saved["train"]["batch_size"] / recipe.train.batch_size
        if "lr" in parts_of(recipe.train.adapt)
        else recipe.optim.lr
    )  # adapt scales it with the batch (where it adapts the lr)
    assert saved["optim"]["lr"] == pytest.approx(lr) and saved["train"]["seed"] == recipe.train.seed
    assert 0 <= m["test"]["accuracy"] <= 1 and np.isfinite(m["test"]["loss"])
