"""Rules of the data pipeline that a user relies on: bad keys refused early, nothing silently ignored,
subsets and carved parts that keep every class, float arrays kept on their own scale."""

import numpy as np
import pytest
import torch
import yaml
from conftest import QUICK, run_main, write_image_folder, write_npy_pairs

from cnnlab.cli import main
from cnnlab.config import DataConfig, RunConfig, apply_overrides
from cnnlab.data import load_dataset
from cnnlab.data.base import ArraySplit
from cnnlab.data.images import open_image
from cnnlab.data.pipeline import build_loaders, normalization_stats
from cnnlab.data.splits import carve
from cnnlab.errors import DataError


@pytest.mark.parametrize(
    "steps",
    [
        "[{resize: -1}]",
        "[resize]",
        "[{resize: 8, center_crop: 8}]",
        "[{resize: abc}]",
        "[{resize: 8.5}]",
        "{resize: 8}",
        "[{resize: [1, 2, 3]}]",
    ],
)
def test_bad_preprocess_is_one_line_before_any_work(tmp_path, steps):
    write_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    r = run_main(
        "train",
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "run"),
        *QUICK,
        "--set",
        f"data.preprocess={steps}",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "data.preprocess" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_one_number_list_resizes_the_shorter_side(tmp_path):
    write_image_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(20, 16))  # (width, height)
    ds = load_dataset(DataConfig(root=str(tmp_path / "d"), val_size=0, test_size=2, preprocess=[{"resize": [8]}]), 0)
    assert ds.input_shape == (3, 8, 10) and tuple(ds.train.images.shape[1:]) == (3, 8, 10)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("data.attributes", "Smiling", "data.attributes"),
        ("data.jitter", "1.5", "data.jitter"),
        ("data.workers", "-1", "data.workers"),
    ],
)
def test_keys_the_dataset_would_ignore_are_refused(fashion_dir, tmp_path, key, value, needle):
    r = run_main("train", "--data", str(fashion_dir), "--out", str(tmp_path / "run"), *QUICK, "--set", f"{key}={value}")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_preprocess_pads_or_resizes_arrays_and_is_recorded(fashion_dir, tmp_path):
    """[{center_crop: 32}] pads 28x28 arrays with zeros (LeNet's geometry, what the KTH study's 7x7
    kernels need); a resize interpolates. The steps go into the checkpoint for new images."""
    plain = load_dataset(DataConfig(root=str(fashion_dir), val_size=8), 0)
    padded = load_dataset(DataConfig(root=str(fashion_dir), val_size=8, preprocess=[{"center_crop": 32}]), 0)
    assert padded.input_shape == (1, 32, 32) and tuple(padded.test.images.shape[1:]) == (1, 32, 32)
    assert torch.equal(padded.train.images[:, :, 2:30, 2:30], plain.train.images)
    assert padded.train.images[:, :, :2].sum() == 0 and padded.train.images[:, :, :, 30:].sum() == 0
    resized = load_dataset(DataConfig(root=str(fashion_dir), val_size=8, preprocess=[{"resize": 20}]), 0)
    assert tuple(resized.val.images.shape[1:]) == (1, 20, 20) and resized.val.images.dtype == torch.uint8
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                *QUICK,
                "--model",
                "kth-default",
                "--set",
                "data.preprocess=[{center_crop: 32}]",
            ]
        )
        == 0
    )
    ckpt = torch.load(out / "checkpoints/best.pt", weights_only=True)
    assert ckpt["input_shape"] == [1, 32, 32] and ckpt["preprocess"] == [{"center_crop": 32}]


def test_a_folder_held_in_memory_is_preprocessed_once(tmp_path):
    """Files are resized as they are decoded; the array pass is for arrays only (twice would zoom in)."""
    from cnnlab.data.images import preprocess_transform, to_uint8_tensor

    write_image_folder(tmp_path / "d", {"a": 3, "b": 3}, size=(20, 16))
    steps = [{"resize": 16}, {"center_crop": 12}]
    ds = load_dataset(DataConfig(root=str(tmp_path / "d"), val_size=0, test_size=2, preprocess=steps, split="first"), 0)
    assert isinstance(ds.train, ArraySplit) and ds.input_shape == (3, 12, 12)
    path = sorted((tmp_path / "d" / "a").iterdir())[0]
    want = to_uint8_tensor(open_image(path, 3, 10**8), preprocess_transform(steps))
    assert any(torch.equal(want, img) for img in ds.train.images) or any(
        torch.equal(want, img) for img in ds.test.images
    )


def test_channels_converts_arrays_and_is_recorded(fashion_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "data.channels=3"]) == 0
    ckpt = torch.load(out / "checkpoints/best.pt", weights_only=True)
    assert ckpt["input_shape"] == [3, 28, 28] and len(ckpt["normalization"]["mean"]) == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["channels"] == 3
    ds = load_dataset(DataConfig(root=str(fashion_dir), val_size=8, channels=3), 0)
    assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 2])  # gray repeated


def test_config_yaml_records_the_inferred_preprocess(tmp_path):
    write_image_folder(tmp_path / "d", {"a": 12, "b": 12}, size=(80, 70))  # over 64 px: resized and cropped
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "d"),
                "--out",
                str(out),
                *QUICK,
                "--set",
                "data.val_size=4",
                "--set",
                "train.batch_size=8",
            ]
        )
        == 0
    )
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (
        data["preprocess"] == [{"resize": 64}, {"center_crop": 64}]
        and data["channels"] == 3
        and data["name"] == "folder"
    )


def test_stats_failing_leaves_no_run_folder(tmp_path):
    write_image_folder(tmp_path / "d", {"a": 6, "b": 6})
    r = run_main(
        "train",
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "run"),
        *QUICK,
        "--set",
        "data.val_size=2",
        "--set",
        "data.normalize=standard-scaler",
        "--set",
        "data.in_memory=false",
        "--set",
        "data.workers=0",
    )
    assert r.returncode == 2 and "standard-scaler" in r.stderr and not (tmp_path / "run").exists()


def test_limits_draw_from_every_class_of_a_sorted_folder(tmp_path):
    write_image_folder(tmp_path / "d", {"a": 10, "b": 10, "c": 10})
    ds = load_dataset(DataConfig(root=str(tmp_path / "d"), val_size=0, test_size=3, train_limit=9), 0)
    assert len(ds.train) == 9 and set(ds.train.labels.tolist()) == {0, 1, 2}
    first = load_dataset(DataConfig(root=str(tmp_path / "d"), val_size=0, test_size=3, train_limit=9, split="first"), 0)
    assert first.train.labels.tolist() == [0] * 7 + [1] * 2  # the first 3 went to test


@pytest.mark.parametrize("size", [0.05, 0.5, 7])
def test_stratified_part_has_exactly_the_asked_count(size):
    split = ArraySplit(torch.zeros(30, 1, 2, 2, dtype=torch.uint8), torch.arange(30) % 10)
    rest, part = carve(split, size, 30, 0, "stratified")
    want = int(size) if size >= 1 else round(size * 30)
    assert len(part) == want and len(rest) == 30 - want


def test_float_arrays_keep_their_scale_through_jitter(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 64)).astype(np.float32)  # standardised already: negative values
    write_npy_pairs(tmp_path, {"train": (x, np.arange(40) % 2), "test": (x[:6], np.arange(6) % 2)})
    cfg = apply_overrides(
        RunConfig(),
        {
            "data.root": str(tmp_path),
            "data.name": "npy",
            "data.val_size": 0,
            "data.augment": "jitter",
            "data.normalize": "none",
        },
    )
    ds = load_dataset(cfg.data, 0)
    assert ds.train.images.dtype == torch.float32
    mean, std = normalization_stats(ds, cfg.data)
    loaders = build_loaders(ds, cfg.data, cfg.train, torch.device("cpu"), mean, std)
    batch = next(iter(loaders["train"]))[0]
    assert batch.min() < -1 and batch.max() > 1  # not clamped to [0, 1]


def test_npy_with_nan_is_refused(tmp_path):
    x = np.ones((10, 16), np.float32) * 0.5
    x[3, 4] = np.nan
    write_npy_pairs(tmp_path, {"train": (x, np.arange(10) % 2)})
    with pytest.raises(DataError, match="NaN"):
        load_dataset(DataConfig(root=str(tmp_path), name="npy", val_size=0, test_size=2), 0)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    a = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(a).save(tmp_path / "g.png")
    out = np.asarray(open_image(tmp_path / "g.png", 1, 10**8))
    assert out.max() == 255 and (out == 255).mean() < 0.01 and out[32, 0] == round(32 * 64 * 16 * 255 / 65535)


def test_data_check_validates_its_keys(tmp_path):
    write_image_folder(tmp_path / "d", {"a": 2})
    r = run_main("data", "check", str(tmp_path / "d"), "--set", "data.max_pixels=-5")
    assert r.returncode == 2 and "data.max_pixels" in r.stderr and "Traceback" not in r.stderr
