"""Scratch against pretrained, offline: the fourth report's point (a fine-tuned ImageNet backbone beats a
CNN trained from scratch) measured on a small image folder built from Fashion-MNIST.

    python benchmarks/transfer.py                       # 100 training images per class, seeds 0, 1, 2
    python benchmarks/transfer.py --per-class 100,1000  # and the same at 1,000 per class (hours on 2 cores)
    python benchmarks/transfer.py --only finetune,fastnet --seeds 1

The folder (benchmarks/.transfer/fmnist-<N>/, gitignored) has train/<class>/*.png with N images per class
(the first N of each class in the training file) and test/<class>/*.png with the same 50 test images
per class for every row and size, RGB PNGs of 28x28. Each row is `cnnlab train` as a new process, timed
from its start to its exit, its test accuracy read from metrics.json:
  fastnet         the default recipe (cnnlab train --data DIR), from scratch;
  hanoi-scratch   the Hanoi report's scratch CNN and recipe (cnnlab train hanoi-animals), from scratch;
  effnet-random   efficientnet_lite0 from random weights, with the input the finetune recipe picks for these
                  28 px images (112 px, ImageNet statistics) and its schedule, none of it frozen;
  finetune        cnnlab train finetune: efficientnet_lite0 from its packaged ImageNet weights, the recipe
                  as it is (input 112 px: 4x the images' side).
Prints the table (test accuracy mean ± std over the seeds, median wall time) and writes
benchmarks/results/transfer.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".transfer"
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
TEST_PER_CLASS = 50
ROW_NAMES = ("fastnet", "hanoi-scratch", "effnet-random", "finetune")


def finetune_input() -> list[str]:
    """What cnnlab train finetune feeds the pretrained weights on these 28 px images (run.weights_input_side:
    112 px) and their statistics, for the random-weights row, which has no pretrained config to take it from."""
    from cnnlab.models.timm_zoo import data_defaults
    from cnnlab.run import weights_input_side

    side = weights_input_side(data_defaults("efficientnet_lite0", {"pretrained": "imagenet"}), 28)
    steps = f"[{{resize: {side}}}, {{center_crop: {side}}}]"
    return ["--set", f"data.preprocess={steps}", "--set", "data.normalize=imagenet"]


def rows() -> dict[str, tuple[str, list[str]]]:
    """Each row's label and the arguments of its cnnlab train, by name (ROW_NAMES)."""
    return {
        "fastnet": ("fastnet from scratch (default recipe)", []),
        "hanoi-scratch": ("hanoi-scratch from scratch (the Hanoi recipe)", ["hanoi-animals"]),
        "effnet-random": (
            "efficientnet_lite0 from random weights",
            [
                "finetune",
                "--set",
                "model.kwargs={}",
                "--set",
                "train.freeze_epochs=0",
                "--set",
                "optim.body_lr_scale=1.0",
                *finetune_input(),
            ],
        ),
        "finetune": ("efficientnet_lite0 fine-tuned from ImageNet (finetune recipe)", ["finetune"]),
    }


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_folder(per_class: int) -> Path:
    """benchmarks/.transfer/fmnist-N: N training and 50 test images per class, RGB PNG."""
    from PIL import Image

    root = CACHE / f"fmnist-{per_class}"
    if (root / ".done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    parts = {"train": ("train", per_class), "test": ("t10k", TEST_PER_CLASS)}
    for part, (stem, n) in parts.items():
        x, y = _idx(FASHION / f"{stem}-images-idx3-ubyte.gz"), _idx(FASHION / f"{stem}-labels-idx1-ubyte.gz")
        for c, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(np.flatnonzero(y == c)[:n]):
                Image.fromarray(x[j]).convert("RGB").save(folder / f"{i:04d}.png")
    (root / ".done").write_text("ok\n")
    return root


def run_row(args: list[str], data: Path, seed: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="transfer-"))
    cmd = [
        sys.executable,
        "-m",
        "cnnlab",
        "train",
        *args[:1],
        "--data",
        str(data),
        "--seed",
        str(seed),
        "--out",
        str(out / "run"),
        "--set",
        "train.report=false",
        *args[1:],
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    m = json.loads((out / "run" / "metrics.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seed": seed,
        "accuracy": m["test"]["accuracy"],
        "test_images": m["test"]["num_samples"],
        "wall_seconds": round(wall, 1),
        "train_seconds": m["train_seconds"],
        "epochs": m["epochs_run"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", default="100", help="training images per class, e.g. 100,1000 (default 100)")
    p.add_argument(
        "--seeds", default="3", help="N: seeds 0..N-1 (default 3); or a list, e.g. 1,2 (to add seeds to a table)"
    )
    p.add_argument("--only", help=f"rows to run, of {', '.join(ROW_NAMES)}")
    p.add_argument("--out", default=str(HERE / "results" / "transfer.json"))
    a = p.parse_args(argv)
    seeds = [int(v) for v in a.seeds.split(",")] if "," in a.seeds else list(range(int(a.seeds)))
    chosen = a.only.split(",") if a.only else list(ROW_NAMES)
    unknown = [r for r in chosen if r not in ROW_NAMES]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}; rows: {', '.join(ROW_NAMES)}")
    from cnnlab.engine.device import physical_cores
    from cnnlab.engine.precision import cpu_description

    table = rows()

    results: dict = {
        "machine": {"cpu": cpu_description(), "physical_cores": physical_cores(), "python": platform.python_version()},
        "test_images_per_class": TEST_PER_CLASS,
        "sizes": {},
    }
    lines = []
    for n in [int(v) for v in a.per_class.split(",")]:
        data = build_folder(n)
        results["sizes"][n] = {}
        lines += [
            (
                f"\n{n} training images per class ({10 * n} in all), {10 * TEST_PER_CLASS} test images; "
                f"seeds {', '.join(map(str, seeds))}\n"
            ),
            "| row | test accuracy (mean ± std) | wall time (median) |",
            "|---|---|---|",
        ]
        for key in chosen:
            label, args = table[key]
            runs = []
            for s in seeds:
                runs.append(run_row(args, data, s))
                print(
                    f"{n}/class {key} seed {s}: {100 * runs[-1]['accuracy']:.2f}% in {runs[-1]['wall_seconds']:.0f} s",
                    flush=True,
                )
            accs = [r["accuracy"] for r in runs]
            mean, std = statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
            results["sizes"][n][key] = {"label": label, "runs": runs, "mean": mean, "std": std}
            lines.append(
                f"| {label} | {100 * mean:.2f} ± {100 * std:.2f}% "
                f"| {statistics.median(r['wall_seconds'] for r in runs):.0f} s |"
            )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
