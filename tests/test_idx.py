import gzip

import numpy as np
import pytest
import torch
from conftest import write_fashion_fixture

from cnnlab.config import DataConfig
from cnnlab.data import DATASETS, load_dataset
from cnnlab.data.idx import read_idx, write_idx
from cnnlab.data.mnist_idx import FASHION_MNIST_CLASSES
from cnnlab.errors import DataError


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_round_trip(tmp_path, name, dtype):
    a = (np.arange(2 * 3 * 4) % 97).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, a)
    t = read_idx(tmp_path / name)
    assert t.shape == (2, 3, 4)
    assert np.array_equal(t.numpy(), a)


def test_header_is_big_endian_as_the_format_says(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 28, 28), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert int.from_bytes(raw[4:8], "big") == 5 and int.from_bytes(raw[8:12], "big") == 28


def test_truncated_file_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 28, 28), np.uint8))
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "x")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x01\x02\x03\x04garbage", gzip.compress(b"\x00\x00\x08", mtime=0)],
    ids=["empty", "garbage", "gzip-of-a-short-header"],
)  # fixed ids: every xdist worker collects the same tests
def test_not_idx_is_a_clear_error(tmp_path, content):
    (tmp_path / "x.gz").write_bytes(content)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "x.gz")


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    # an IDX header and data, gzipped, then cut: the header decompresses, the rest of the stream does not
    (tmp_path / "x.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 1]) + (5000).to_bytes(4, "big") + bytes(range(256)) * 20)[:60]
    )
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "x.gz")


@pytest.mark.parametrize("piece", [7, 4096, 1 << 20])
def test_gzip_of_several_members_and_a_bad_checksum(tmp_path, monkeypatch, piece):
    """gzip's own rules, as GzipFile keeps them: concatenated members (one ending where the header
    does) and zero padding read as one stream, a member whose CRC does not match is corrupt, and data
    after the array is refused; read from the file in pieces of `piece` bytes."""
    from cnnlab.data import idx

    monkeypatch.setattr(idx._Gunzip, "PIECE", piece)
    a = np.random.default_rng(0).integers(0, 256, (3, 40, 50), dtype=np.uint8)  # incompressible: many pieces
    raw = bytes([0, 0, 8, 3]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape) + a.tobytes()
    members = gzip.compress(raw[:16]) + bytes(5) + gzip.compress(raw[16:2_001]) + gzip.compress(raw[2_001:])
    (tmp_path / "two.gz").write_bytes(members + bytes(9))
    assert gzip.decompress(members) == raw and np.array_equal(read_idx(tmp_path / "two.gz").numpy(), a)
    crc = bytearray(gzip.compress(raw))
    crc[-6] ^= 1  # the CRC32 in the member's trailer
    (tmp_path / "crc.gz").write_bytes(bytes(crc))
    with pytest.raises(DataError, match="cannot read IDX file .*incorrect data check"):
        read_idx(tmp_path / "crc.gz")
    (tmp_path / "more.gz").write_bytes(gzip.compress(raw) + gzip.compress(b"extra"))
    with pytest.raises(DataError, match="truncated or corrupt: more bytes"):
        read_idx(tmp_path / "more.gz")


@pytest.mark.parametrize("layout", ["plain", "torchvision", "raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_layouts(tmp_path, layout, gz):
    folder = {"plain": tmp_path, "torchvision": tmp_path / "FashionMNIST" / "raw", "raw": tmp_path / "raw"}[layout]
    write_fashion_fixture(folder, n_train=50, n_test=20, gz=gz)
    ds = load_dataset(DataConfig(root=str(tmp_path), val_size=10, download=False), seed=0)
    assert ds.train.images.shape == (40, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert len(ds.val) == 10 and len(ds.test) == 20
    assert ds.classes == FASHION_MNIST_CLASSES


def test_validation_split_is_seeded_and_disjoint(fashion_dir):
    cfg = DataConfig(root=str(fashion_dir), val_size=0.25, download=False)
    a, b, c = load_dataset(cfg, 0), load_dataset(cfg, 0), load_dataset(cfg, 1)
    assert len(a.val) == 80 and len(a.train) == 240
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    # every training image lands in exactly one of the two parts
    full = torch.cat([a.train.images, a.val.images]).flatten(1)
    assert (
        torch.unique(full, dim=0).shape[0]
        == torch.unique(DATASETS.get("fashion-mnist")(cfg).train.images.flatten(1), dim=0).shape[0]
    )


def test_env_folder_is_searched(tmp_path, fashion_dir, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(fashion_dir))
    monkeypatch.chdir(tmp_path)
    ds = DATASETS.get("fashion-mnist")(DataConfig(download=False))
    assert ds.source == str(fashion_dir)


def test_missing_everywhere_names_the_apt_package_and_the_flag(tmp_path, monkeypatch):
    from cnnlab.data import mnist_idx

    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mnist_idx, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data PATH"):
        DATASETS.get("fashion-mnist")(DataConfig(download=False))


def test_class_names_match_torchvision():
    torchvision = pytest.importorskip("torchvision")
    assert FASHION_MNIST_CLASSES == list(torchvision.datasets.FashionMNIST.classes)


def test_labels_outside_the_classes_are_refused(tmp_path):
    write_fashion_fixture(tmp_path, n_train=30, n_test=10)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, np.uint8))
    with pytest.raises(DataError, match="outside the 10 classes"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=5, download=False), seed=0)


def test_images_and_labels_of_different_counts_are_refused(tmp_path):
    write_fashion_fixture(tmp_path, n_train=30, n_test=10)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="10 images but"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=5, download=False), seed=0)


def test_a_missing_label_file_is_named(tmp_path):
    write_fashion_fixture(tmp_path, n_train=30, n_test=10)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=5, download=False), seed=0)


@pytest.mark.parametrize("val_size", [30, 0.99, 45])
def test_validation_that_leaves_no_training_is_refused(tmp_path, val_size):
    write_fashion_fixture(tmp_path, n_train=30, n_test=10)
    with pytest.raises(DataError, match="leaves no training images"):
        load_dataset(DataConfig(root=str(tmp_path), val_size=val_size, download=False), seed=0)


def test_no_validation_and_limits(fashion_dir):
    ds = load_dataset(
        DataConfig(root=str(fashion_dir), val_size=0, train_limit=100, test_limit=7, download=False), seed=0
    )
    assert ds.val is None and len(ds.train) == 100 and len(ds.test) == 7
    assert ds.input_shape == (1, 28, 28)


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n in ("mnist", "fashion-mnist")])
def test_idx_datasets_read_the_torchvision_layout(tmp_path, name):
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    write_fashion_fixture(tmp_path / folder / "raw", n_train=40, n_test=10)
    ds = load_dataset(DataConfig(name=name, root=str(tmp_path), val_size=8, download=False), seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 10)
    assert ds.classes == list(getattr(pytest.importorskip("torchvision").datasets, folder).classes)
