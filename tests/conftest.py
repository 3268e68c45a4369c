"""Shared fixtures: small datasets written in their exact on-disk formats, and CLI runners."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]

# The precision probe's answers (engine/precision.py) go to a cache of this test session's own, which
# every CLI subprocess inherits: a test never reads or writes the user's ~/.cache/cnnlab, and each
# model and input shape is measured once per session.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every xdist worker of one run: one cache for all
os.environ["CNNLAB_CACHE"] = (
    os.path.join(tempfile.gettempdir(), f"cnnlab-test-cache-{_run}")
    if _run
    else tempfile.mkdtemp(prefix="cnnlab-test-cache-")
)

# Under pytest-xdist (`make test` runs `-n auto`) the workers share the cores: each worker, and every
# process it starts, gets its share of torch threads (cnnlab's set_threads honours OMP_NUM_THREADS), as
# more threads than cores slow small convolutions down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit() and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def make_pattern_images(n: int, num_classes: int = 10, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 images: class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    band = size // num_classes
    for i, k in enumerate(labels):
        if k % 2:
            images[i, k * band : (k + 1) * band + 2, :] = 230
        else:
            images[i, :, k * band : (k + 1) * band + 2] = 230
    return images, labels


def write_fashion_fixture(folder: Path, n_train: int = 320, n_test: int = 120, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files (28x28 uint8 images, uint8 labels) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_pattern_images(n, seed=seed)
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    return write_fashion_fixture(tmp_path_factory.mktemp("fashion"))


# Keys a quick train on the fixture overrides, so a test run takes about a second (the report's
# figures, two seconds more, are drawn by the tests that look at them: tests/test_report.py).
QUICK = [
    "--epochs",
    "1",
    "--set",
    "data.val_size=64",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.eval_batch_size=128",
    "--set",
    "train.report=false",
]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m cnnlab ARGS` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def run_main(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `main()` that `cnnlab ARGS` runs, in this process, with its stdout, stderr and exit code as
    run_cli gives them. For commands that stop before training (a refused flag, a listing, `--help`):
    it saves the ~2.5 s a subprocess spends importing torch and cnnlab. An exception that escapes
    main() is printed as the interpreter would print it (a "Traceback" the tests look for), with
    exit code 1. The command's own way out (`cli.entry`) and every run that trains are tested
    through run_cli."""
    import contextlib
    import io
    import traceback

    import torch

    from cnnlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads, old_cwd, old_env = torch.get_num_threads(), os.getcwd(), dict(os.environ)
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help (0) and refused flags (2), after printing
                code = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1) if e.code else 0
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["cnnlab", *args], int(code or 0), out.getvalue(), err.getvalue())


@contextlib.contextmanager
def serving(run: Path, *flags: str):
    """`cnnlab serve RUN --port 0 FLAGS` in a subprocess: (host, port) once it listens (a first request
    waits in the backlog until uvicorn takes it); stopped at the end."""
    import select

    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "serve", str(run), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line, deadline = "", time.time() + 60
        while "http://" not in line:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"cnnlab serve did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
                )
            if select.select([proc.stdout], [], [], 1)[0]:
                line = proc.stdout.readline()
        host, port = line.split("http://")[1].split("/")[0].rsplit(":", 1)
        yield host, int(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def deploy_run(tmp_path_factory) -> Path:
    """A quick run on the Fashion-MNIST fixture with 1,000 test images (predict, export, serve)."""
    root = tmp_path_factory.mktemp("deploy")
    data = write_fashion_fixture(root / "fashion", n_train=320, n_test=1000)
    out = root / "run"
    r = run_cli("train", "--data", str(data), "--out", str(out), *QUICK, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    return out


# --- fixture writers for the other on-disk formats (tests/test_formats.py) --------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male "
    "Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


def _py2_pickle(obj, path: Path) -> None:
    """Pickle protocol 2 as Python 2's cPickle wrote it: every str and bytes as a BINSTRING, which
    is how the real cifar-10-batches-py files store their keys, names and the arrays' raw bytes."""
    import pickle
    import struct

    class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be changed
        dispatch = pickle._Pickler.dispatch.copy()

        def save_py2_string(self, s):
            data = s if isinstance(s, bytes) else s.encode("latin1")
            if len(data) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
            self.memoize(s)

        dispatch[bytes] = save_py2_string
        dispatch[str] = save_py2_string

    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_cifar_fixture(root: Path, n_per_batch: int = 4, n_test: int = 5, keys: str = "bytes", seed: int = 0) -> dict:
    """cifar-10-batches-py/ under `root`: data_batch_1..5, test_batch and batches.meta.

    keys: "bytes" (b'data', as the Python-2 files read with encoding='bytes'), "str" ('data'), or
    "py2" (the keys and raw array bytes written as Python 2 strings). Returns the arrays written:
    {"folder", "train_data" (N, 3072) uint8, "train_labels", "test_data", "test_labels"}.
    """
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = (lambda s: s.encode()) if keys in ("bytes", "py2") else (lambda s: s)

    def dump(obj, name):
        if keys == "py2":
            _py2_pickle(obj, folder / name)
        else:
            with open(folder / name, "wb") as f:
                pickle.dump(obj, f, protocol=2)

    out: dict = {"folder": folder}
    parts = [(f"data_batch_{i}", n_per_batch, f"training batch {i} of 5") for i in range(1, 6)] + [
        ("test_batch", n_test, "testing batch 1 of 1")
    ]
    train_data, train_labels = [], []
    for name, n, label in parts:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {
            k("batch_label"): label.encode(),
            k("labels"): labels,
            k("data"): data,
            k("filenames"): [f"img_{name}_{i}.png".encode() for i in range(n)],
        }
        dump(batch, name)
        if name == "test_batch":
            out["test_data"], out["test_labels"] = data, np.array(labels)
        else:
            train_data.append(data)
            train_labels += labels
    out["train_data"], out["train_labels"] = np.concatenate(train_data), np.array(train_labels)
    dump(
        {
            k("label_names"): [c.encode() for c in CIFAR10_CLASSES],
            k("num_cases_per_batch"): n_per_batch,
            k("num_vis"): 3072,
        },
        "batches.meta",
    )
    return out


def write_celeba_fixture(
    root: Path, partition: list[int], size: tuple[int, int] = (178, 218), seed: int = 0
) -> tuple[Path, np.ndarray]:
    """A CelebA folder (img_align_celeba/000001.jpg ..., list_attr_celeba.txt, list_eval_partition.txt)
    with one image per entry of `partition` (0 train, 1 valid, 2 test). Returns (folder, the (N, 40)
    table of +1/-1 attribute values written)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    attrs = rng.choice([-1, 1], size=(len(partition), len(CELEBA_ATTRIBUTES)))
    names = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / name, quality=90)
    # The real files: a count, the names (with a trailing space), then rows padded to 2 characters.
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attrs)]
    (root / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n" + "\n".join(rows) + "\n"
    )
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {p}\n" for name, p in zip(names, partition)))
    return root, attrs


def write_image(path: Path, size: tuple[int, int] = (12, 12), mode: str = "RGB", seed: int = 0, **save) -> Path:
    """A small random image of (width, height) `size` in Pillow `mode`, saved by suffix."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "RGBA":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    elif mode == "P":  # 4 palette entries; entry 0 (black) is transparent
        im = Image.fromarray(rng.integers(0, 4, (h, w), dtype=np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
        save.setdefault("transparency", 0)
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **save)
    return path


def write_image_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (12, 12),
    mode: str = "RGB",
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """root/<class>/<i>.png: counts[class] images per class."""
    for c, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / cls / f"{i:03d}{suffix}", size, mode, seed=seed * 1000 + c * 100 + i)
    return root


def write_corrupt_files(folder: Path, size: tuple[int, int] = (24, 24)) -> list[str]:
    """Three files that will not decode, in `folder`: a JPEG cut to half its bytes (from 24x24 up,
    its header survives the cut: only the image data is truncated), a zero-byte .jpg and a text
    file named .png. Returns their paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    full = write_image(folder / "truncated.jpg", size, quality=95)
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not a PNG\n")
    return sorted(str(folder / n) for n in ("truncated.jpg", "empty.jpg", "notes.png"))


def write_npy_pairs(root: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], prefix: str = "mnist") -> Path:
    """root/<prefix>_<part>_features.npy and root/<prefix>_<part>_targets.npy for each part."""
    root.mkdir(parents=True, exist_ok=True)
    for part, (x, y) in parts.items():
        np.save(root / f"{prefix}_{part}_features.npy", x)
        np.save(root / f"{prefix}_{part}_targets.npy", y)
    return root


# --- a real browser: Debian's chromium driven through its chromedriver (scripts/get-chromium.sh) ---


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through selenium; skipped (saying how to get it) where it is not installed."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make test installs it)")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver are not installed: bash scripts/get-chromium.sh (needs root or sudo)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
