"""Fuzzing the readers of untrusted bytes, with Hypothesis: the image decoder (behind folders, `predict`
and `serve`), the IDX, CIFAR-batch and .npy readers, and checkpoint loading with its field checks.

Each target takes a valid file, mutates it (bytes overwritten, cut out, put in) and feeds it to the
reader, which must either read it or refuse it with cnnlab's own one-line error. Anything else is a
crash: the input is saved in tests/corpus/<target>/ (commit it; a regression test reads every file
there) and the test fails.

In the suite each target runs a fixed, seeded set of examples (a few seconds). `make fuzz` runs them
for longer with fresh seeds: CNNLAB_FUZZ_SECONDS per target, printing how many inputs each tried.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.errors import CnnlabError

CORPUS = Path(__file__).parent / "corpus"
SECONDS = float(os.environ.get("CNNLAB_FUZZ_SECONDS", "0"))  # 0: the suite's short, seeded run
EXAMPLES = int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "200"))


# --- valid inputs to mutate -------------------------------------------------------------------------


def _image_seeds() -> list[bytes]:
    img = Image.new("RGB", (16, 12), (120, 30, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the EXIF orientation path is exercised
    exif[0x010F] = "cam"
    out = []
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP"):
        buf = io.BytesIO()
        img.save(buf, fmt, **({"exif": exif.tobytes()} if fmt in ("PNG", "JPEG", "WEBP", "TIFF") else {}))
        out.append(buf.getvalue())
    return out


def _idx_seeds() -> list[bytes]:
    data = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (3, 4, 4)) + bytes(range(48))
    return [data, gzip.compress(data)]


def _npy_seeds() -> list[bytes]:
    out = []
    for a in (
        np.arange(48, dtype=np.uint8).reshape(3, 4, 4),
        np.arange(3, dtype=np.int64),
        np.ones((2, 16), np.float32),
    ):
        buf = io.BytesIO()
        np.save(buf, a)
        out.append(buf.getvalue())
    return out


def _cifar_seeds() -> list[bytes]:
    batch = {
        b"batch_label": b"x",
        b"labels": [1, 2],
        b"data": np.zeros((2, 3072), np.uint8),
        b"filenames": [b"a.png", b"b.png"],
    }
    return [pickle.dumps(batch, protocol=2), pickle.dumps({"label_names": [b"cat", b"dog"]}, protocol=2)]


def _checkpoint_seeds() -> list[bytes]:
    import torch

    from cnnlab.config import RunConfig
    from cnnlab.engine.checkpoint import save_checkpoint
    from cnnlab.models import create_model

    model = create_model("lenet5", num_classes=3, in_channels=1, input_size=(28, 28))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        save_checkpoint(
            path,
            model=model.state_dict(),
            config=dict(RunConfig(model=type(RunConfig().model)(name="lenet5")).to_dict()),
            classes=["a", "b", "c"],
            input_shape=[1, 28, 28],
            preprocess=[],
            normalization={"mean": [0.5], "std": [0.25]},
            objective="cross-entropy",
        )
        data = path.read_bytes()
    del torch
    return [data]


# --- the targets: bytes in, read or refused ---------------------------------------------------------


def _open_image(data: bytes, tmp: Path) -> None:
    from cnnlab.data.images import open_image

    open_image(data, 3, 10**6)


def _read_idx(data: bytes, tmp: Path) -> None:
    from cnnlab.data.idx import read_idx

    (tmp / "x-idx3-ubyte").write_bytes(data)
    read_idx(tmp / "x-idx3-ubyte")


def _read_npy(data: bytes, tmp: Path) -> None:
    from cnnlab.data.numpy_pairs import _load

    (tmp / "x.npy").write_bytes(data)
    _load(tmp / "x.npy")


def _read_cifar(data: bytes, tmp: Path) -> None:
    from cnnlab.data.cifar import _split, read_batch

    (tmp / "data_batch_1").write_bytes(data)
    batch = read_batch(tmp / "data_batch_1")
    if "data" in batch and "labels" in batch:
        _split([tmp / "data_batch_1"])


def _load_checkpoint(data: bytes, tmp: Path) -> None:
    from cnnlab.evaluation import load_run

    (tmp / "c.pt").write_bytes(data)
    load_run(tmp / "c.pt")


from cnnlab.data.images import BadImage  # noqa: E402  (TooManyPixels is one)

TARGETS: dict[str, tuple[Callable[[bytes, Path], None], Callable[[], list[bytes]], tuple[type[BaseException], ...]]] = {
    "images": (
        _open_image,
        _image_seeds,
        (BadImage,),
    ),  # what predict, serve and the folder loaders turn into their one line
    "idx": (_read_idx, _idx_seeds, (CnnlabError,)),
    "npy": (_read_npy, _npy_seeds, (CnnlabError,)),
    "cifar": (_read_cifar, _cifar_seeds, (CnnlabError,)),
    "checkpoints": (_load_checkpoint, _checkpoint_seeds, (CnnlabError,)),
}


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    d = bytearray(data)
    for op, pos, chunk in edits:
        pos = pos % (len(d) + 1)
        if op == 0:
            d[pos : pos + len(chunk)] = chunk  # overwrite
        elif op == 1:
            del d[pos : pos + len(chunk)]  # cut out as many bytes
        else:
            d[pos:pos] = chunk  # put in
    return bytes(d)


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6
)


def _check(name: str, data: bytes, tmp: Path, crashed: list[bytes] | None = None, record: bool = False) -> None:
    """Feed `data` to the target: read, or refused with its own error. Anything else is re-raised,
    the input kept in `crashed` (the last one kept is the example Hypothesis shrank to)."""
    target, _, allowed = TARGETS[name]
    if record:  # make fuzz: a crash that kills the process (a segfault) leaves its input here
        (CORPUS / name).mkdir(parents=True, exist_ok=True)
        (CORPUS / name / LAST).write_bytes(data)
    try:
        target(data, tmp)
    except allowed:
        pass
    except (Exception, MemoryError):  # MemoryError too: these inputs are small, so it means a size field was believed
        if crashed is not None:
            crashed[:] = [data]
        raise


def _keep(name: str, data: bytes) -> Path:
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha1(data).hexdigest()[:12]}.bin"
    path.write_bytes(data)
    return path


def _fuzz(name: str, examples: int, rng_seed: int | None) -> int:
    seeds = TARGETS[name][1]()
    count, crashed = [0], []
    with tempfile.TemporaryDirectory() as tmp:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=rng_seed is None,
            report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
        @given(st.sampled_from(seeds), EDITS)
        def run(original: bytes, edits) -> None:
            count[0] += 1
            _check(name, mutate(original, edits), Path(tmp), crashed, record=rng_seed is not None)

        try:
            (seed(rng_seed)(run) if rng_seed is not None else run)()
        except (Exception, MemoryError):
            if crashed:
                print(
                    f"fuzz {name}: a crash, kept as {_keep(name, crashed[0])} "
                    "(commit it: test_corpus_regressions reads it)"
                )
            raise
    return count[0]


LAST = ".last-input"  # the input a long run is on; after a run that died, kept as a crash


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name, capsys):
    """Seeded and short in the suite; CNNLAB_FUZZ_SECONDS=N (make fuzz) keeps going with fresh seeds."""
    last = CORPUS / name / LAST
    if SECONDS > 0 and last.is_file():  # the previous long run died on this input (no Python exception to catch)
        kept = _keep(name, last.read_bytes())
        last.unlink()
        pytest.fail(
            f"the last make fuzz died on an input of {name}: kept as {kept}; run it with test_corpus_regressions"
        )
    if SECONDS <= 0:
        assert _fuzz(name, EXAMPLES, None) >= EXAMPLES // 2
        return
    start, total, rounds = time.monotonic(), 0, 0
    while time.monotonic() - start < SECONDS:
        total += _fuzz(name, 500, int.from_bytes(os.urandom(4), "big"))
        rounds += 1
    last.unlink(missing_ok=True)
    with capsys.disabled():
        print(f"\nfuzz {name}: {total:,} inputs in {time.monotonic() - start:.0f} s ({rounds} rounds of 500), no crash")


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CORPUS.glob("*/*") if p.parent.name in TARGETS and not p.name.startswith(".")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_corpus_regressions(path, tmp_path):
    """Every input a target ever crashed on is read or refused with cnnlab's own error now."""
    _check(path.parent.name, path.read_bytes(), tmp_path)


def test_no_command_prints_a_traceback_for_the_corpus(tmp_path):
    """`cnnlab data check` over the corpus laid out as each kind of dataset, and `predict` with each
    corpus checkpoint: one line or a report, never a traceback."""
    from conftest import run_main

    outputs = []
    for path in sorted((CORPUS / "npy").glob("*")):
        folder = tmp_path / f"npy-{path.stem}"
        folder.mkdir()
        (folder / "mnist_train_features.npy").write_bytes(path.read_bytes())
        np.save(folder / "mnist_train_targets.npy", np.arange(3))
        outputs.append(run_main("data", "check", str(folder)))
    for path in sorted((CORPUS / "idx").glob("*")):
        folder = tmp_path / f"idx-{path.stem}"
        folder.mkdir()
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            (folder / name).write_bytes(path.read_bytes())
        outputs.append(run_main("data", "check", str(folder)))
    for path in sorted((CORPUS / "cifar").glob("*")):
        folder = tmp_path / f"cifar-{path.stem}" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
            (folder / name).write_bytes(path.read_bytes())
        outputs.append(run_main("data", "check", str(folder.parent)))
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    for path in sorted((CORPUS / "checkpoints").glob("*")):
        outputs.append(run_main("predict", str(path), str(image)))
    assert outputs
    for r in outputs:
        assert "Traceback" not in r.stderr + r.stdout and r.returncode in (0, 1, 2), r.stderr[-1500:]
