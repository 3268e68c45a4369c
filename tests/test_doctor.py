"""The dataset doctor (`cnnlab data check`) and `cnnlab data list`, through the CLI as a user runs them."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_main, write_corrupt_files, write_fashion_fixture, write_image_folder, write_npy_pairs

from cnnlab.config import DataConfig
from cnnlab.data import DATASETS
from cnnlab.data.doctor import check, list_datasets


def _check_json(*args):
    r = run_main("data", "check", *args, "--json")
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_lists_exactly_the_corrupt_files(tmp_path):
    data = tmp_path / "pets"
    write_image_folder(data, {"cat": 6, "dog": 6}, size=(24, 24))
    bad = write_corrupt_files(data / "cat")
    code, report = _check_json(str(data))
    assert code == 1
    assert sorted(c["path"] for c in report["corrupt"]) == bad
    assert all(c["reason"] for c in report["corrupt"])
    assert report["class_counts"]["train"] == {"cat": 6, "dog": 6}
    assert "3 file(s) that will not decode" in report["verdict"]
    text = run_main("data", "check", str(data)).stdout
    for path in bad:
        assert path in text
    assert text.strip().splitlines()[-1].startswith("verdict: 1 problem(s)")


def test_reports_test_images_copied_from_train_as_leakage(tmp_path):
    data = tmp_path / "split"
    for part, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_image_folder(data / part, {"a": 8, "b": 8}, seed=seed)
    copies = []
    for i in range(5):  # five test images that are byte copies of training images
        cls = "ab"[i % 2]
        dst = data / "test" / cls / f"copy{i}.png"
        shutil.copy(data / "train" / cls / f"{i:03d}.png", dst)
        copies.append(str(dst))
    code, report = _check_json(str(data))
    assert code == 1
    assert sorted(x["image"] for x in report["leakage"]) == sorted(copies)
    assert all(x["split"] == "test" and "/train/" in x["copy_of"] for x in report["leakage"])
    assert "5 val/test image(s) that are copies of training images (leakage)" in report["verdict"]
    assert report["splits"] == {"train": 16, "val": 16, "test": 21}


def test_duplicates_within_a_split_and_a_clean_folder(tmp_path):
    data = tmp_path / "d"
    write_image_folder(data, {"a": 4, "b": 4})
    code, report = _check_json(str(data))
    assert code == 0 and report["verdict"].startswith("OK") and report["test_and_val_carved_at_train_time"]
    assert report["image_sizes"] == {"12x12": 8} and report["image_modes"] == {"RGB": 8}
    shutil.copy(data / "a" / "000.png", data / "a" / "again.png")
    code, report = _check_json(str(data))
    assert code == 1 and report["duplicates_within_split"]["train"] == [
        [str(data / "a" / "000.png"), str(data / "a" / "again.png")]
    ]


def test_arrays_are_hashed_by_pixels(tmp_path):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (20, 784)).astype(np.uint8)
    train_y = np.arange(20) % 4
    test_x = train_x[:3].copy()  # three test rows equal three training rows
    write_npy_pairs(tmp_path, {"train": (train_x, train_y), "test": (test_x, train_y[:3])})
    report = check(DataConfig(root=str(tmp_path)))
    assert report["dataset"] == "npy"
    assert sorted(x["image"] for x in report["leakage"]) == ["test[0]", "test[1]", "test[2]"]
    assert report["imbalance_ratio"] == 1.0


def test_imbalance_is_measured_and_flagged(tmp_path):
    data = tmp_path / "d"
    write_image_folder(data, {"many": 22, "few": 2})
    report = check(DataConfig(root=str(data)))
    assert report["imbalance_ratio"] == 11.0
    assert any("imbalance 11.0:1" in p for p in report["problems"])


def test_idx_dataset_by_path(tmp_path):
    write_fashion_fixture(tmp_path, n_train=30, n_test=10)
    report = check(DataConfig(root=str(tmp_path)))
    assert report["splits"] == {"train": 30, "test": 10}
    assert report["image_sizes"] == {"28x28": 40} and report["image_modes"] == {"L": 40}


def test_bad_input_is_one_line(tmp_path):
    for args in (["/nonexistent"], [str(tmp_path)], ["fashion-mnist", "--set", "train.epochs=3"]):
        r = run_main("data", "check", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_data_list_names_every_registered_dataset():
    r = run_main("data", "list")
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()[1:] if line.strip() and not line.startswith("Any")]
    assert names == DATASETS.names()
    rows = {row["name"]: row for row in list_datasets()}
    assert rows["folder"]["found"] == "needs --data PATH"
    assert all(row["layout"] for row in rows.values())


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_source_describes_itself(name):
    source = DATASETS.get(name)
    assert source.layout and source.default_augment
    assert (
        source.find(DataConfig(name=name, download=False)) is None
        or source.find(DataConfig(name=name, download=False)).exists()
    )
