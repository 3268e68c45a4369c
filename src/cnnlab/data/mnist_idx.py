"""MNIST and Fashion-MNIST from their four IDX files, found in the usual places.

Search order for a dataset: `data.root` (the --data PATH); the folder in $CNNLAB_DATA; the
torchvision layout under ./data; the Debian package's folder (Fashion-MNIST only); torchvision's
download into ./data where a network exists. In each folder the files may sit directly, under
raw/, or under <Name>/raw/ (torchvision's layout), gzipped or not.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.config import DataConfig
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import ArraySplit, Dataset, DataSource
from cnnlab.data.idx import read_idx
from cnnlab.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
LOCAL_ROOT = Path("data")  # torchvision's download goes to ./data/<Name>/raw/

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


class IdxSource(DataSource):
    """Four IDX files: train/t10k images and labels, 28x28 grayscale."""

    def __init__(self, name: str, folder: str, classes: list[str], apt_package: str | None = None) -> None:
        self.name = name
        self.folder = folder  # torchvision's folder name: <root>/<folder>/raw/
        self.classes = classes
        self.apt_package = apt_package  # a Debian package that installs the files in DEBIAN_FASHION_MNIST
        # a mirrored digit is another glyph (or none); a mirrored shoe is still a shoe
        self.default_augment = "flip-translate" if apt_package else "translate"
        self.layout = (
            f"the four {folder} IDX files ({FILES['train'][0]}[.gz], ...) directly, in raw/ or in {folder}/raw/"
        )

    def matches(self, root: Path) -> Path | None:
        """The folder under `root` that holds the training images: root, root/raw or root/<Name>/raw."""
        for folder in (root, root / "raw", root / self.folder / "raw", root / self.folder):
            if _find_file(folder, FILES["train"][0]) is not None:
                return folder
        return None

    def _candidates(self) -> list[Path]:
        roots = [Path(p) for p in [os.environ.get("CNNLAB_DATA")] if p] + [LOCAL_ROOT]
        return roots + ([DEBIAN_FASHION_MNIST] if self.apt_package else [])

    def find(self, cfg: DataConfig) -> Path | None:
        if cfg.root:
            return super().find(cfg)
        return next((f for f in map(self.matches, self._candidates()) if f is not None), None)

    def _read(self, folder: Path) -> Dataset:
        splits = {}
        for part, stems in FILES.items():
            paths = [_find_file(folder, stem) for stem in stems]
            missing = [stem for stem, p in zip(stems, paths) if p is None]
            if missing:
                raise DataError(f"{folder} has no {missing[0]}(.gz); the {self.folder} folder needs all four IDX files")
            images, labels = (read_idx(p) for p in paths)  # type: ignore[arg-type]
            if images.ndim != 3 or labels.ndim != 1:
                raise DataError(
                    f"{paths[0]} holds shape {tuple(images.shape)} and {paths[1]} {tuple(labels.shape)}; "
                    "expected (N, H, W) images and (N,) labels"
                )
            splits[part] = ArraySplit(images, labels)
        return Dataset(splits["train"], splits["test"], list(self.classes), source=str(folder))

    def _download(self) -> Path | None:
        """torchvision's download into ./data; None where there is no network (or it fails)."""
        try:
            import torchvision.datasets as tvd

            for train in (True, False):
                getattr(tvd, self.folder)(str(LOCAL_ROOT), train=train, download=True)
        except Exception:  # any failure means "not downloadable here"; the caller says what to do
            return None
        return self.matches(LOCAL_ROOT)

    def load(self, cfg: DataConfig) -> Dataset:
        if cfg.root is not None:
            return self._read(self.root_folder(cfg))
        folder = self.find(cfg)
        if folder is None and cfg.download:
            folder = self._download()
        if folder is not None:
            return self._read(folder)
        looked = ", ".join(["$CNNLAB_DATA", "./data"] + ([str(DEBIAN_FASHION_MNIST)] if self.apt_package else []))
        download = "the download failed" if cfg.download else "download is off"
        install = (
            f"install it with 'apt-get install {self.apt_package}' (as root), or "
            if self.apt_package
            else f"put its IDX files in ./data/{self.folder}/raw/ or $CNNLAB_DATA, or "
        )
        raise DataError(f"{self.folder} not found (looked in {looked}; {download}); {install}pass --data PATH")


DATASETS.register("fashion-mnist")(
    IdxSource("fashion-mnist", "FashionMNIST", FASHION_MNIST_CLASSES, apt_package="dataset-fashion-mnist")
)
DATASETS.register("mnist")(IdxSource("mnist", "MNIST", MNIST_CLASSES))
