"""cnnlab against the tools people would pick instead, side by side in one run, on the same machine and data.

    python benchmarks/peers.py                 # every system (about 30 minutes here)
    python benchmarks/peers.py --only cnnlab,keras
    python benchmarks/peers.py --quick         # 1 cnnlab seed, 1 epoch of each peer (checks the set-up)

Each system runs as a whole process, timed from its start until its final test score; each prints
its test accuracy after every epoch, so the time to 90% and 92% is read off the same run:
  cnnlab    `cnnlab train` (the default recipe) for seeds 0, 1 and 2; it scores the test set once,
            at the end (metrics.json), so its time to an accuracy is the time to metrics.json.
  plain     the reports' plain PyTorch loop: the textbook MNIST network, Adam 1e-3, batch 64,
            torchvision's FashionMNIST with per-sample ToTensor and a DataLoader, fp32.
  yolo      Ultralytics YOLO classify, `yolo11n-cls.yaml` from scratch (no weights are downloaded;
            YOLO_OFFLINE=1), imgsz 32, batch 128, on an image folder written from Fashion-MNIST
            (train/ and test/, one sub-folder per class, PNG); it validates on test/ every epoch, 4 epochs.
  keras     Keras 3 on the torch backend, the keras.io "simple MNIST convnet" (two conv + pool
            blocks, dropout 0.5, Adam, batch 128, 15 epochs, validation_split 0.1).
A peer is stopped at --cap seconds (10 minutes): where it never reaches 92% by then, its best
accuracy and the time it got there are shown. The peers are installed into a virtualenv of their
own (benchmarks/.peers/, made on the first run: torch and torchvision from this machine's wheels,
ultralytics and keras from PyPI), never into cnnlab's. Writes benchmarks/results/peers.json and
prints the Markdown table that the README shows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_speed import cnnlab_train, fashion_folder  # noqa: E402  (also the plain loop: plain_child)

PEERS_VENV = REPO / "benchmarks" / ".peers"
PEER_PACKAGES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "ultralytics==8.4.190",
    "keras==3.15.1",
    "opencv-python-headless",
]
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def peer_python() -> Path:
    """The peers' virtualenv's python, made and filled on the first call."""
    py = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    if stamp.is_file() and stamp.read_text() == " ".join(PEER_PACKAGES):
        return py
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    print(f"installing the peers into {PEERS_VENV} (once): {' '.join(PEER_PACKAGES)}", flush=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES], check=True)
    stamp.write_text(" ".join(PEER_PACKAGES))
    return py


def read_idx(path: Path):
    import numpy as np

    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def idx_files(found: Path) -> dict[str, Path]:
    files = {}
    for stem in STEMS:
        src = next((p for p in (found / stem, found / f"{stem}.gz") if p.is_file()), None)
        if src is None:
            raise SystemExit(f"{found} has no {stem}[.gz]")
        files[stem] = src
    return files


def image_folder(found: Path, root: Path) -> Path:
    """Fashion-MNIST as PNG files: root/train/<class>/*.png and root/test/<class>/*.png (made once)."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file():
        return root
    files = idx_files(found)
    print(f"writing Fashion-MNIST as an image folder in {root} (once)", flush=True)
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = read_idx(files[f"{prefix}-images-idx3-ubyte"]), read_idx(files[f"{prefix}-labels-idx1-ubyte"])
        for c in CLASSES:
            (root / part / c).mkdir(parents=True, exist_ok=True)
        for i, (img, y) in enumerate(zip(images, labels)):
            Image.fromarray(img).save(root / part / CLASSES[y] / f"{i:05d}.png")
    done.write_text("ok")
    return root


# --- the peers' programs (run by the peers' python, each printing `EPOCH <n> <test accuracy> <seconds>`) ---

COMMON = r"""
import os, sys, time, gzip, json
T0 = float(os.environ["PEER_T0"])  # the parent's clock at the process's start
def report(epoch, acc):
    print(f"EPOCH {epoch} {acc:.4f} {time.time() - T0:.2f}", flush=True)
def idx(path):
    import numpy as np
    raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
FILES = json.loads(os.environ["PEER_FILES"])
EPOCHS = int(os.environ["PEER_EPOCHS"])
"""

# A line of a program longer than 120 characters is split between two string pieces (the first
# ending in a space), so the program's text stays the same character for character.
KERAS = (
    COMMON + r"""
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
from keras import layers
x_train = idx(FILES["train-images-idx3-ubyte"]).astype("float32")[..., None] / 255
y_train = keras.utils.to_categorical(idx(FILES["train-labels-idx1-ubyte"]), 10)
x_test = idx(FILES["t10k-images-idx3-ubyte"]).astype("float32")[..., None] / 255
y_test = keras.utils.to_categorical(idx(FILES["t10k-labels-idx1-ubyte"]), 10)
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)), layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)), layers.Flatten(), layers.Dropout(0.5), """
    r"""layers.Dense(10, activation="softmax")])
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
class TestEach(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        report(epoch + 1, float(self.model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1]))
model.fit(x_train, y_train, batch_size=128, epochs=EPOCHS, validation_split=0.1, verbose=0, callbacks=[TestEach()])
"""
)

YOLO = (
    COMMON + r"""
os.environ["YOLO_OFFLINE"] = "1"
from ultralytics import YOLO
model = YOLO("yolo11n-cls.yaml")
def on_epoch(trainer):
    report(trainer.epoch + 1, float(trainer.metrics.get("metrics/accuracy_top1", 0.0)))
model.add_callback("on_fit_epoch_end", on_epoch)
model.train(data=os.environ["PEER_FOLDER"], imgsz=32, epochs=EPOCHS, batch=128, device="cpu", workers=2, plots=False,
            pretrained=False, amp=False, project=os.environ["PEER_TMP"], name="run", exist_ok=True, """
    r"""verbose=False, seed=0)
"""
)

# plain: cpu_speed.py's reports' loop, run by cnnlab's own python (`peers.py --plain-child`)
PROGRAMS = {
    "plain": (None, 5),
    "keras": (KERAS, 15),
    "yolo": (YOLO, 4),
}  # program, epochs (YOLO: about 2 minutes each here)


def run_peer(
    name: str, py: Path, files: dict[str, Path], folder: Path | None, cap: float, epochs: int
) -> dict[str, Any]:
    """One peer as a new process: its per-epoch (epoch, test accuracy, seconds since start), stopped at `cap` s."""
    program, _ = PROGRAMS[name]
    with tempfile.TemporaryDirectory() as tmp:
        if program is None:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-child"]
        else:
            script = Path(tmp) / f"peer_{name}.py"  # not keras.py: it would shadow the package
            script.write_text(program)
            cmd = [str(py), str(script)]
        env = {
            **os.environ,
            "PEER_FILES": json.dumps({k: str(v) for k, v in files.items()}),
            "PEER_EPOCHS": str(epochs),
            "PEER_TMP": tmp,
            "PEER_FOLDER": str(folder or ""),
            "YOLO_CONFIG_DIR": tmp,
            "MPLBACKEND": "Agg",
        }
        env["PEER_T0"] = repr(time.time())
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        epochs_seen: list[tuple[int, float, float]] = []
        stopped = False
        try:
            out, err = proc.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            stopped = True
        wall = time.monotonic() - t0
    for line in out.splitlines():
        if line.startswith("EPOCH "):
            _, e, acc, sec = line.split()
            epochs_seen.append((int(e), float(acc), float(sec)))
    if proc.returncode not in (0, None) and not stopped and not epochs_seen:
        raise SystemExit(f"{name} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return {"epochs": epochs_seen, "wall_seconds": wall, "stopped_at_cap": stopped, "epochs_planned": epochs}


def first_reaching(points: list[tuple[int, float, float]], goal: float) -> float | None:
    return next((sec for _, acc, sec in points if acc >= goal), None)


def row(name: str, points: list[tuple[int, float, float]], wall: float, note: str) -> dict[str, Any]:
    best = max(points, key=lambda p: p[1]) if points else (0, 0.0, wall)
    return {
        "system": name,
        "final_accuracy": points[-1][1] if points else None,
        "best_accuracy": best[1],
        "best_at_seconds": best[2],
        "wall_seconds": wall,
        "to_90": first_reaching(points, 0.90),
        "to_92": first_reaching(points, 0.92),
        "note": note,
    }


def fmt_s(x: float | None) -> str:
    return "never" if x is None else f"{x:.0f} s"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | test accuracy (best, at) | wall time | to 90% | to 92% |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['system']} | {100 * r['best_accuracy']:.2f}% at {r['best_at_seconds']:.0f} s "
            f"| {r['wall_seconds']:.0f} s | {fmt_s(r['to_90'])} | {fmt_s(r['to_92'])} |"
        )
    return "\n".join(lines)


def plain_child() -> int:
    """The reports' plain loop (cpu_speed.py's), printing `EPOCH <n> <accuracy> <seconds since the process started>`."""
    from cpu_speed import plain_time_to_accuracy, torchvision_fashion

    t0 = float(os.environ["PEER_T0"])
    train_set, test_set = torchvision_fashion(Path(os.environ["PEER_TMP"]), fashion_folder())
    plain_time_to_accuracy(
        train_set,
        test_set,
        int(os.environ["PEER_EPOCHS"]),
        on_epoch=lambda e, acc: print(f"EPOCH {e} {acc:.4f} {time.time() - t0:.2f}", flush=True),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--plain-child"]:
        return plain_child()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="cnnlab,plain,yolo,keras", help="systems to run, e.g. cnnlab,keras")
    p.add_argument("--seeds", type=int, default=3, help="cnnlab seeds (0, 1, ...); the median seed is compared")
    p.add_argument("--cap", type=float, default=600.0, help="seconds after which a peer is stopped")
    p.add_argument("--quick", action="store_true", help="1 cnnlab seed and 1 epoch of each peer")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers.json"))
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not only or set(only) - {"cnnlab", *PROGRAMS}:
        p.error(f"--only takes systems among cnnlab, {', '.join(PROGRAMS)}, got {args.only!r}")
    data = fashion_folder()
    if data is None:
        raise SystemExit("Fashion-MNIST is not here (make data, or apt-get install dataset-fashion-mnist)")
    from cnnlab.engine.device import physical_cores
    from cnnlab.engine.precision import cpu_description

    result: dict[str, Any] = {
        "machine": {"cpu": cpu_description(), "physical_cores": physical_cores(), "python": platform.python_version()},
        "cap_seconds": args.cap,
        "systems": {},
    }
    rows: list[dict[str, Any]] = []
    files = idx_files(data)
    py = peer_python() if set(only) & set(PROGRAMS) else None
    folder = image_folder(data, REPO / "benchmarks" / ".peers" / "fashion-mnist-png") if "yolo" in only else None
    for name in only:
        print(f"running {name} ...", flush=True)
        if name == "cnnlab":
            with tempfile.TemporaryDirectory() as tmp:
                runs = [cnnlab_train(seed, Path(tmp), data) for seed in range(1 if args.quick else args.seeds)]
            result["systems"]["cnnlab"] = runs
            med = sorted(runs, key=lambda r: r["accuracy"])[len(runs) // 2]  # the median seed by accuracy
            each = "; ".join(
                f"seed {i}: {100 * r['accuracy']:.2f}% in {r['seconds']:.1f} s" for i, r in enumerate(runs)
            )
            r = row(
                "cnnlab train (default recipe; median seed)",
                [(4, med["accuracy"], med["seconds"])],
                statistics.median(r["seconds"] for r in runs),
                each,
            )
            r["to_92"] = (
                statistics.median(r["seconds"] for r in runs)
                if statistics.median(r["accuracy"] for r in runs) >= 0.92
                else None
            )
            r["to_90"] = (
                r["to_92"] if r["to_92"] is not None else (r["wall_seconds"] if med["accuracy"] >= 0.90 else None)
            )
            r["best_at_seconds"] = r["wall_seconds"]
            rows.append(r)
        else:
            epochs = 1 if args.quick else PROGRAMS[name][1]
            out = run_peer(name, py, files, folder, args.cap, epochs)  # type: ignore[arg-type]
            result["systems"][name] = out
            label = {
                "plain": "reports' plain PyTorch loop (textbook net, Adam)",
                "yolo": "Ultralytics YOLO11n-cls from scratch, imgsz 32",
                "keras": "Keras 3 (torch backend), keras.io simple MNIST convnet",
            }[name]
            # Ultralytics reports once more at the end: its final validation of best.pt
            done = min(len({e for e, _, _ in out["epochs"]}), out["epochs_planned"])
            note = f"{done} of {out['epochs_planned']} epochs" + (
                f", stopped at {args.cap:.0f} s" if out["stopped_at_cap"] else ""
            )
            rows.append(row(label, out["epochs"], out["wall_seconds"], note))
        print(f"  {rows[-1]}", flush=True)
    result["rows"] = rows
    reached = [r for r in rows[1:] if r["to_92"] is not None]
    if rows and rows[0]["system"].startswith("cnnlab") and rows[0]["to_92"] is not None and reached:
        fastest = min(reached, key=lambda r: r["to_92"])
        result["ratio_to_fastest_peer_at_92"] = rows[0]["to_92"] / fastest["to_92"]
    table = markdown(rows)
    print(
        f"\n{result['machine']['cpu']}, {result['machine']['physical_cores']} cores; "
        f"peers stopped at {args.cap:.0f} s\n\n{table}\n"
    )
    for r in rows:
        print(f"- {r['system']}: {r['note']}")
    if "ratio_to_fastest_peer_at_92" in result:
        print(f"\ncnnlab's time to 92% / the fastest peer's: {result['ratio_to_fastest_peer_at_92']:.2f}")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
