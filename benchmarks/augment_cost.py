"""What each augmentation policy costs: images/s of the default model's training step with each data.augment.

    flock /tmp/cnnlab-bench.lock python benchmarks/augment_cost.py              # 5 repeats of 30 steps (~4 min)
    flock /tmp/cnnlab-bench.lock python benchmarks/augment_cost.py --repeats 3 --steps 15

Every figure is a median over --repeats; the settings alternate inside each repeat (none, flip, ...,
none, flip, ...), so a slower or faster spell of the machine hits all of them. A step is what
`cnnlab train` does per batch: slice 256 uint8 images from memory, augment them, normalise, and train
the default recipe's model on them (SGD, in the precision and layout cnnlab picks here). "alone" is
the loader without the model: the augmentation's own rate. Prints a table and writes JSON (default
benchmarks/results/augment_cost.json). Fashion-MNIST must be here (make data, or the Debian package
dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_speed import default_model, default_policy, engine_parts, fashion_folder  # noqa: E402

from cnnlab.config import DataConfig, load_recipe  # noqa: E402
from cnnlab.data import load_dataset  # noqa: E402
from cnnlab.data.augment import AugmentParams  # noqa: E402
from cnnlab.data.base import ArraySplit  # noqa: E402
from cnnlab.data.loader import TensorLoader  # noqa: E402
from cnnlab.engine.device import set_threads  # noqa: E402
from cnnlab.engine.precision import Choice, cpu_description  # noqa: E402

BATCH = 256
# (label, data.augment, the AugmentParams fields it sets): torchvision's defaults where none are given
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("none", "none", {}),
    ("flip (the default recipe's)", "flip", {}),
    ("trivialaugment", "trivialaugment", {}),
    ("randaugment (n 2, m 9)", "randaugment", {"randaugment_n": 2, "randaugment_m": 9}),
    ("autoaugment (imagenet)", "autoaugment", {"autoaugment_policy": "imagenet"}),
    ("autoaugment (cifar10)", "autoaugment", {"autoaugment_policy": "cifar10"}),
    ("random-erasing", "random-erasing", {}),
    ("flip+trivialaugment+random-erasing", "flip+trivialaugment+random-erasing", {}),
]


def make_loader(train: ArraySplit, augment: str, params: dict, policy: Choice) -> TensorLoader:
    """The training loader `cnnlab train` builds for `augment` (normalised by the part's own mean and std)."""
    pixels = train.images.float() / 255  # (N, 1, 28, 28)
    mean, std = float(pixels.mean()), float(pixels.std())
    loader = TensorLoader(
        train,
        BATCH,
        shuffle=True,
        drop_last=True,
        augment=augment,
        augment_params=AugmentParams(**params),
        seed=0,
        mean=[mean],
        std=[std],
        channels_last=policy.channels_last,
    )
    loader.set_epoch(1)
    return loader


def step_rate(loader: TensorLoader, policy: Choice, steps: int, warmup: int = 5) -> float:
    """images/s of fetch + augment + normalise + one training step, over `steps` steps after `warmup`."""
    torch.manual_seed(0)
    lr = load_recipe(None).optim.lr
    model, step = engine_parts(default_model(), lr, "sgd", policy)
    model.train()
    it = iter(loader)
    for _ in range(warmup):
        step(*next(it))
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    return steps * BATCH / (time.perf_counter() - t0)


def loader_rate(loader: TensorLoader, steps: int) -> float:
    """images/s of the loader alone: slicing, augmenting and normalising `steps` batches."""
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * BATCH / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="repeats per figure (the median is reported)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps of batch 256 per figure")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "augment_cost.json"))
    args = p.parse_args(argv)
    folder = fashion_folder()
    if folder is None:
        print("Fashion-MNIST is not here (make data, or apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 1
    threads = set_threads(None)  # as cnnlab train: the physical cores
    policy = default_policy()
    ds = load_dataset(DataConfig(name="fashion-mnist", root=str(folder), val_size=0, normalize="none"), 0)
    loaders = [make_loader(ds.train, augment, params, policy) for _, augment, params in SETTINGS]  # 60,000 uint8
    train: list[list[float]] = [[] for _ in SETTINGS]
    alone: list[list[float]] = [[] for _ in SETTINGS]
    for r in range(args.repeats):
        for i, loader in enumerate(loaders):
            loader.set_epoch(1 + r)
            train[i].append(step_rate(loader, policy, args.steps))
            alone[i].append(loader_rate(loader, args.steps))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    base = statistics.median(train[0])
    rows = []
    for (label, augment, params), tr, al in zip(SETTINGS, train, alone):
        rows.append(
            {
                "setting": label,
                "augment": augment,
                "params": params,
                "train_img_s": statistics.median(tr),
                "train_vs_none": statistics.median(tr) / base,
                "augment_alone_img_s": statistics.median(al),
                "train_img_s_runs": tr,
                "augment_alone_img_s_runs": al,
            }
        )
    import torchvision

    result = {
        "machine": {"cpu": cpu_description(), "torch_threads": threads, "torch": torch.__version__},
        "torchvision": torchvision.__version__,
        "precision": {"dtype": policy.dtype, "channels_last": policy.channels_last},
        "batch": BATCH,
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    layout = "channels_last" if policy.channels_last else "NCHW"
    print(f"{cpu_description()}, {threads} threads, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"default model, batch {BATCH}, {policy.dtype} {layout}; medians of {args.repeats} x {args.steps} steps")
    print("| data.augment | training img/s | vs none | augmentation alone, img/s |\n|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| `{row['setting']}` | {row['train_img_s']:,.0f} | {row['train_vs_none']:.2f}x "
            f"| {row['augment_alone_img_s']:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
