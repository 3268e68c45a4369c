"""MNIST and Fashion-MNIST from their four IDX files, found in the usual places.

Search order for a dataset: `data.root` (the --data PATH); the folder in $CNNLAB_DATA; the
torchvision layout under ./data; the Debian package's folder (Fashion-MNIST only); torchvision's
download into ./data where a network exists. In each folder the files may sit directly, under
raw/, or under <Name>/raw/ (torchvision's layout), gzipped or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnlab.config import DataConfig
from cnnlab.data.base import ArraySplit, Dataset
from cnnlab.data.idx import read_idx
from cnnlab.data import DATASETS
from cnnlab.errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
LOCAL_ROOT = Path("data")  # torchvision's download goes to ./data/<Name>/raw/

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSpec:
    name: str  # the registry name
    folder: str  # torchvision's folder name: <root>/<folder>/raw/
    classes: list[str]
    apt_package: str | None = None  # a Debian package that installs the files in DEBIAN_FASHION_MNIST


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _layout_in(root: Path, spec: IdxSpec) -> Path | None:
    """The folder under `root` that holds the training images: root, root/raw or root/<Name>/raw."""
    for folder in (root, root / "raw", root / spec.folder / "raw", root / spec.folder):
        if _find_file(folder, FILES["train"][0]) is not None:
            return folder
    return None


def _read(folder: Path, spec: IdxSpec) -> Dataset:
    splits = {}
    for part, stems in FILES.items():
        paths = [_find_file(folder, stem) for stem in stems]
        missing = [stem for stem, p in zip(stems, paths) if p is None]
        if missing:
            raise DataError(f"{folder} has no {missing[0]}(.gz); the {spec.folder} folder needs all four IDX files")
        images, labels = (read_idx(p) for p in paths)  # type: ignore[arg-type]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{paths[0]} holds shape {tuple(images.shape)} and {paths[1]} {tuple(labels.shape)}; expected (N, H, W) images and (N,) labels")
        splits[part] = ArraySplit(images, labels)
    return Dataset(splits["train"], splits["test"], list(spec.classes), source=str(folder))


def _download(spec: IdxSpec) -> Path | None:
    """torchvision's download into ./data; None where there is no network (or it fails)."""
    try:
        import torchvision.datasets as tvd

        getattr(tvd, spec.folder)(str(LOCAL_ROOT), train=True, download=True)
        getattr(tvd, spec.folder)(str(LOCAL_ROOT), train=False, download=True)
    except Exception:  # any failure means "not downloadable here"; the caller says what to do
        return None
    return _layout_in(LOCAL_ROOT, spec)


def load_idx_dataset(spec: IdxSpec, cfg: DataConfig) -> Dataset:
    if cfg.root is not None:
        root = Path(cfg.root).expanduser()
        if not root.exists():
            raise DataError(f"--data {cfg.root} does not exist; give --data a folder holding the four {spec.folder} IDX files, or a dataset name like {spec.name}")
        if not root.is_dir():
            raise DataError(f"--data {cfg.root} is a file; give --data the folder that holds the four {spec.folder} IDX files")
        folder = _layout_in(root, spec)
        if folder is None:
            raise DataError(f"no {spec.folder} IDX files in {root} (looked for {FILES['train'][0]}[.gz] there, in raw/ and in {spec.folder}/raw/)")
        return _read(folder, spec)

    candidates = [Path(p) for p in [os.environ.get("CNNLAB_DATA")] if p] + [LOCAL_ROOT]
    if spec.apt_package:
        candidates.append(DEBIAN_FASHION_MNIST)
    for root in candidates:
        folder = _layout_in(root, spec)
        if folder is not None:
            return _read(folder, spec)
    if cfg.download:
        folder = _download(spec)
        if folder is not None:
            return _read(folder, spec)
    looked = ", ".join(["$CNNLAB_DATA", "./data"] + ([str(DEBIAN_FASHION_MNIST)] if spec.apt_package else []))
    download = "the download failed" if cfg.download else "download is off"
    install = f"install it with 'apt-get install {spec.apt_package}' (as root), or " if spec.apt_package else f"put its IDX files in ./data/{spec.folder}/raw/ or $CNNLAB_DATA, or "
    raise DataError(f"{spec.folder} not found (looked in {looked}; {download}); {install}pass --data PATH")


def _register(spec: IdxSpec) -> None:
    @DATASETS.register(spec.name)
    def build(cfg: DataConfig) -> Dataset:
        return load_idx_dataset(spec, cfg)

    build.__doc__ = f"{spec.folder}: four IDX files (.gz or raw), 28x28 grayscale, {len(spec.classes)} classes"


_register(IdxSpec("fashion-mnist", "FashionMNIST", FASHION_MNIST_CLASSES, apt_package="dataset-fashion-mnist"))
_register(IdxSpec("mnist", "MNIST", MNIST_CLASSES))
