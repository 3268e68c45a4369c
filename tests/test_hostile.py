"""Hostile files (issue 20): each finding's case, refused or skipped with a reason, never a traceback.

Files that once crashed a reader are kept in tests/corpus/ (how each was found is in its README);
every command that reads images is run over them here."""

import gzip
import io
import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK, run_main, serving, write_image_folder, write_npy_pairs
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data import load_dataset
from cnnlab.data.folder import scan_folder
from cnnlab.data.idx import read_idx
from cnnlab.data.images import BadImage, open_image
from cnnlab.errors import CnnlabError, DataError

CORPUS = Path(__file__).parent / "corpus"
CORPUS_IMAGES = sorted(p for p in (CORPUS / "images").iterdir() if not p.name.startswith("."))


def no_traceback(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]


# --- 1. a crafted image escapes the decoder's error handling ----------------------------------------


@pytest.mark.parametrize("path", CORPUS_IMAGES, ids=lambda p: p.name)
def test_every_corpus_image_is_refused_with_a_reason(path):
    with pytest.raises(BadImage):
        open_image(path, 3, 10**7)
    with pytest.raises(BadImage):
        open_image(path.read_bytes(), 1, 10**7)


def test_any_error_while_decoding_is_the_files_not_the_programs(tmp_path, monkeypatch):
    """Pillow's EXIF code raising TypeError (the issue's mutated WEBP) is a BadImage like any other."""
    import cnnlab.data.images as images

    def broken(im):
        raise TypeError("'<' not supported between instances of 'tuple' and 'int'")

    Image.new("RGB", (8, 8)).save(tmp_path / "x.webp")
    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    with pytest.raises(BadImage, match="TypeError"):
        open_image(tmp_path / "x.webp", 3, 10**7)
    monkeypatch.undo()
    assert open_image(tmp_path / "x.webp", 3, 10**7).size == (8, 8)


def test_corpus_images_in_a_folder_are_skipped_by_training_and_listed_by_check(tmp_path):
    data = write_image_folder(tmp_path / "d", {"a": 6, "b": 6})
    for p in CORPUS_IMAGES:
        shutil.copy(p, data / "a" / p.name)
    ds = load_dataset(DataConfig(root=str(data), val_size=0, test_size=2), 0)
    skipped = dict(ds.skipped)
    assert all(any(p.name in s for s in skipped) for p in CORPUS_IMAGES), skipped
    r = run_main("data", "check", str(data), "--json")
    no_traceback(r)
    corrupt = {Path(c["path"]).name for c in json.loads(r.stdout)["corrupt"]}
    assert {p.name for p in CORPUS_IMAGES} <= corrupt


def test_predict_over_the_corpus_names_each_file(deploy_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in CORPUS_IMAGES:
        shutil.copy(p, folder / p.name)
    Image.new("L", (28, 28), 128).save(folder / "good.png")
    r = run_main("predict", str(deploy_run), str(folder), "--format", "json")
    no_traceback(r)
    for p in CORPUS_IMAGES:
        assert p.name in r.stdout + r.stderr


# --- 3. IDX readers trust the header ---------------------------------------------------------------


def test_a_gzip_that_is_not_idx_is_refused_from_its_first_bytes(tmp_path):
    """32 MiB of zeros, 32 KiB gzipped: refused after its header, not after gunzipping all of it."""
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x01" * (32 << 20), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="not an IDX file"):
            read_idx(tmp_path / "x.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_a_header_whose_sizes_overflow_64_bits_is_one_line(tmp_path):
    """Four dimensions of 65,536 (2**64 elements): np.prod wrapped to 0 and the 20-byte file passed."""
    (tmp_path / "x").write_bytes(bytes([0, 0, 8, 4]) + (65536).to_bytes(4, "big") * 4)
    with pytest.raises(DataError, match="claims a 65536x65536x65536x65536 array"):
        read_idx(tmp_path / "x")


# --- 4. .npy pairs with a huge claimed shape, complex numbers, classes.txt not UTF-8 --------------


def _pairs(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (12, 8, 8)).astype(np.uint8), np.arange(12) % 3
    return write_npy_pairs(tmp_path / "d", {"train": (x, y), "test": (x[:6], y[:6])})


def test_npy_claiming_a_terabyte_is_refused_from_its_header(tmp_path):
    folder = _pairs(tmp_path)
    with open(folder / "mnist_train_features.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 9, 1 << 9)}
        )
    assert (folder / "mnist_train_features.npy").stat().st_size <= 128
    with pytest.raises(DataError, match="claims a 1048576x512x512 float32 array"):
        load_dataset(DataConfig(root=str(folder)), 0)


def test_complex_features_and_a_latin1_classes_file_are_one_line(tmp_path):
    folder = _pairs(tmp_path)
    x = np.load(folder / "mnist_train_features.npy")
    np.save(folder / "mnist_train_features.npy", x.astype(np.complex64) * (1 + 1j))
    with pytest.raises(DataError, match="complex64 is not real numbers"):
        load_dataset(DataConfig(root=str(folder)), 0)
    np.save(folder / "mnist_train_features.npy", x)
    (folder / "classes.txt").write_bytes("caf\xe9\nth\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="classes.txt is not UTF-8"):
        load_dataset(DataConfig(root=str(folder)), 0)


# --- 5. file and class names that are not UTF-8 ----------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX file names are bytes")
def test_a_run_on_files_and_classes_named_in_latin1(tmp_path):
    data = write_image_folder(tmp_path / "d", {"a": 8, "b": 8})
    os.rename(os.fsencode(data / "b"), os.fsencode(data) + b"/caf\xe9")  # a class folder named in Latin-1
    (data / "a" / "notes.txt").write_text("x")
    os.rename(os.fsencode(data / "a" / "notes.txt"), os.fsencode(data / "a") + b"/r\xe9sum\xe9.txt")
    out = tmp_path / "run"
    r = run_main(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *QUICK,
        "--set",
        "data.val_size=2",
        "--set",
        "train.batch_size=4",
    )
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))  # strict UTF-8
    assert "caf\\xe9" in metrics["test"]["per_class"] and any(
        "r\\xe9sum\\xe9.txt" in f["path"] for f in metrics["skipped_files"]
    )
    assert "r\\xe9sum\\xe9.txt" in (out / "log.txt").read_text(encoding="utf-8")
    r = run_main("predict", str(out), str(data / "a" / "000.png"), "--format", "json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


# --- 6. symlinks that lead out of the dataset -----------------------------------------------------


def test_links_out_of_the_dataset_are_not_followed_and_are_listed(tmp_path):
    outside = write_image_folder(tmp_path / "outside", {"x": 3})
    data = write_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    (data / "c").symlink_to(outside / "x", target_is_directory=True)  # a class folder that is a link out
    (data / "a" / "host.png").symlink_to(outside / "x" / "000.png")  # a file that is a link out
    (data / "b" / "again.png").symlink_to(data / "a" / "000.png")  # a link inside the dataset: kept
    (data / "a" / "loop").symlink_to(data / "a", target_is_directory=True)  # a loop inside it: walked once
    scan = scan_folder(data)
    assert scan.classes == ["a", "b"]
    files = [p for entries in scan.files.values() for p, _ in entries]
    assert all(p.resolve().is_relative_to(data.resolve()) for p in files)
    assert data / "b" / "again.png" in files and len(files) == 9
    reasons = dict(scan.skipped)
    assert (
        "outside the dataset" in reasons[str(data / "c")]
        and "outside the dataset" in reasons[str(data / "a" / "host.png")]
    )


# --- 10. the run name becomes a path --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", ".hidden", ""])
def test_a_run_name_is_one_folder_name(fashion_dir, tmp_path, name):
    r = run_main("train", "--data", str(fashion_dir), *QUICK, "--set", f"name={name}", cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 2 and "name" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped-1").exists()


# --- 9. non-finite numbers past the loss check ----------------------------------------------------


def test_a_finite_loss_with_non_finite_gradients_never_reaches_the_weights():
    import torch

    from cnnlab.engine.loop import TrainStep
    from cnnlab.engine.losses import Target, create_objective

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, optimizer, create_objective("cross-entropy", model, Target(3, False), 3))
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % 3
    before = [p.detach().clone() for p in model.parameters()]
    hook = model[1].weight.register_hook(lambda g: g * float("nan"))  # the loss stays finite
    loss, _ = step(x, y)
    assert loss != loss  # NaN: what the divergence guard answers
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not optimizer.state  # no momentum was taken from the bad gradients either
    hook.remove()
    loss, _ = step(x, y)
    assert loss == loss and not torch.equal(before[0], model[1].weight)


def test_json_files_and_answers_are_strict_json(tmp_path):
    from cnnlab.run_folder import json_text, write_json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    write_json(tmp_path / "m.json", {"loss": float("nan"), "rows": [1.5, float("inf"), {"x": -float("inf")}]})
    assert strict((tmp_path / "m.json").read_text()) == {"loss": None, "rows": [1.5, None, {"x": None}]}
    assert strict(json_text({"p": [float("nan")]}, indent=None)) == {"p": [None]}


# --- 11. temporary files after a kill ---------------------------------------------------------------


def test_resume_removes_the_temp_file_a_kill_left_and_renames_are_fsynced(fashion_dir, tmp_path, monkeypatch):
    import stat

    import cnnlab.run_folder as runs

    out = tmp_path / "run"
    assert run_main("train", "--data", str(fashion_dir), "--out", str(out), *QUICK).returncode == 0
    stale = out / "checkpoints" / ".last.pt.k1ll3d.tmp"  # what a SIGKILL between mkstemp and rename leaves
    stale.write_bytes(b"\0" * 4096)
    synced = []
    real = os.fsync
    monkeypatch.setattr(runs.os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd))[1])
    r = run_main("train", "--resume", str(out), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and ".last.pt.k1ll3d.tmp" in (out / "log.txt").read_text()
    assert True in synced and False in synced  # each file, then the folder that holds its new name


# --- 7. CIFAR batches with bad values -------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, needle",
    [
        (
            "data",
            lambda d: d.astype(np.int64) + np.eye(1, d.size, 5, dtype=np.int64).reshape(d.shape) * 300,
            "outside the pixel range",
        ),
        ("labels", lambda y: ["cat"] * len(y), "not whole numbers"),
        ("labels", lambda y: [0] * (len(y) - 1), "labels for"),
        ("labels", lambda y: [10] * len(y), "names 10 classes"),
    ],
)
def test_cifar_batches_with_bad_values_are_one_line(tmp_path, key, value, needle):
    import pickle

    from conftest import write_cifar_fixture

    folder = write_cifar_fixture(tmp_path, keys="str")["folder"]
    path = folder / "data_batch_2"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    batch[key] = value(np.asarray(batch[key]))
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=needle):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)), 0)
    r = run_main("data", "check", str(tmp_path))
    no_traceback(r)


# --- 8. --resume with other data ------------------------------------------------------------------


def test_resume_on_other_data_is_refused_saying_what_differs(tmp_path):
    a = write_image_folder(tmp_path / "a", {"cat": 6, "dog": 6})
    out = tmp_path / "run"
    assert (
        run_main(
            "train",
            "--data",
            str(a),
            "--out",
            str(out),
            *QUICK,
            "--set",
            "data.val_size=2",
            "--set",
            "train.batch_size=4",
        ).returncode
        == 0
    )
    before = (out / "checkpoints" / "last.pt").read_bytes(), (out / "config.yaml").read_text()
    renamed = write_image_folder(tmp_path / "b", {"ant": 6, "bee": 6})  # the same count, other names
    more = write_image_folder(tmp_path / "c", {"cat": 6, "dog": 6, "eel": 6})
    for data, needle in (
        (renamed, "class names 2 (cat, dog) there, 2 (ant, bee) here"),
        (more, "3 (cat, dog, eel) here"),
    ):
        r = run_main("train", "--resume", str(out), "--data", str(data), "--epochs", "2")
        no_traceback(r)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert ((out / "checkpoints" / "last.pt").read_bytes(), (out / "config.yaml").read_text()) == before
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)  # the same data somewhere else still resumes
    assert run_main("train", "--resume", str(out), "--data", str(moved), "--epochs", "2").returncode == 0


# --- 2. the server bounds what a client holds -----------------------------------------------------


def _trickle(port, head: bytes, body: bytes, until: float) -> tuple[float, bytes]:
    """Send `head` at once, then `body` a byte every 0.2 s: (seconds until the server answered or
    closed, what it said)."""
    import select
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    try:
        s.sendall(head)
        for i in range(len(body)):
            if time.monotonic() - t0 > until:
                return float("inf"), b""
            try:
                s.send(body[i : i + 1])
            except OSError:
                break
            if select.select([s], [], [], 0.2)[0]:
                break
        try:
            said = s.recv(4096)
        except OSError:
            said = b""
        return time.monotonic() - t0, said
    finally:
        s.close()


def test_slow_clients_are_cut_off_and_ordinary_uploads_still_get_answers(deploy_run):
    import http.client
    import threading

    with serving(deploy_run, "--header-seconds", "1", "--upload-seconds", "1.5") as (_, port):
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
        slow = {}
        threads = [
            threading.Thread(
                target=lambda i=i: slow.__setitem__(
                    i, _trickle(port, b"" if i % 2 else head, head if i % 2 else b"\x89" * 5000, 15)
                )
            )
            for i in range(20)
        ]  # odd: a slowloris trickling its headers; even: headers, then the body trickled
        for t in threads:
            t.start()
        buf = io.BytesIO()
        Image.new("L", (28, 28), 90).save(buf, "PNG")

        def ordinary(_):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/predict", body=buf.getvalue(), headers={"Content-Type": "image/png"})
            status = conn.getresponse().status
            conn.close()
            return status

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(ordinary, range(20)))
        for t in threads:
            t.join(20)
    assert statuses == [200] * 20
    for i, (held, said) in slow.items():
        if i % 2:
            assert held < 1 + 2 and not said.startswith(b"HTTP/1.1 5"), (
                i,
                held,
                said[:40],
            )  # closed at the header deadline
        else:
            assert held < 1.5 + 2 and said.startswith(b"HTTP/1.1 408"), (i, held, said[:40])


def test_uploads_in_hand_are_bounded_by_the_queue(deploy_run):
    """--queue 1 with a 1 MB limit holds about 2 MB of uploads: a second client that sends 0.9 MB
    while the first holds its 0.9 MB is answered 503 at once, not queued without bound."""
    import socket

    with serving(deploy_run, "--queue", "1", "--max-upload-mb", "1", "--upload-seconds", "20") as (_, port):
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        first.sendall(head + b"\0" * 900_000)  # and holds the connection, 100,000 bytes short
        time.sleep(0.5)
        t0 = time.monotonic()
        second = socket.create_connection(("127.0.0.1", port), timeout=10)
        second.sendall(head + b"\0" * 900_000)
        said = b""
        while b"busy" not in said and time.monotonic() - t0 < 5:
            chunk = second.recv(4096)
            if not chunk:
                break
            said += chunk
        assert said.startswith(b"HTTP/1.1 503") and b"busy" in said and time.monotonic() - t0 < 5, said[:200]
        second.close()
        first.close()
        from PIL import Image as _Image  # the budget is given back: an ordinary upload is answered again

        buf = io.BytesIO()
        _Image.new("L", (28, 28), 90).save(buf, "PNG")
        import http.client

        time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", body=buf.getvalue(), headers={"Content-Type": "image/png"})
        assert conn.getresponse().status == 200


# --- 12. smaller findings -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[3, 100_000, 100_000], [100_000, 28, 28]])
def test_a_checkpoint_claiming_a_huge_input_is_refused_before_the_dry_run(deploy_run, tmp_path, shape):
    import torch

    from cnnlab.engine.checkpoint import save_checkpoint
    from cnnlab.evaluation import load_run

    ckpt = torch.load(deploy_run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["input_shape"] = shape
    save_checkpoint(tmp_path / "c.pt", **{k: v for k, v in ckpt.items() if k not in ("format", "version", "rng")})
    with pytest.raises(CnnlabError, match="input_shape"):
        load_run(tmp_path / "c.pt")


def test_a_chunked_upload_over_the_limit_is_413(deploy_run):
    import http.client

    with serving(deploy_run, "--max-upload-mb", "1") as (_, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/predict",
            body=iter([b"\0" * 65536] * 20),
            headers={"Content-Type": "image/png"},
            encode_chunked=True,
        )  # 1.25 MB, no Content-Length
        r = conn.getresponse()
        assert r.status == 413 and b"this server takes images of at most" in r.read()


def test_celeba_names_that_lead_outside_the_images_folder_are_not_read(tmp_path):
    from conftest import write_celeba_fixture

    folder, _ = write_celeba_fixture(tmp_path / "celeba", [0, 0, 0, 0, 2, 2], size=(20, 24))
    secret = write_image_folder(tmp_path / "outside", {"x": 1})
    attr, part = folder / "list_attr_celeba.txt", folder / "list_eval_partition.txt"
    lines = attr.read_text().splitlines()
    first = lines[2].split(" ", 1)[1]
    escapes = [str(secret / "x" / "000.png"), "../../outside/x/000.png"]
    attr.write_text(
        "\n".join([str(len(lines) - 2 + len(escapes)), lines[1], *lines[2:], *(f"{e} {first}" for e in escapes)]) + "\n"
    )
    part.write_text(part.read_text() + "".join(f"{e} 0\n" for e in escapes))
    scan = scan_celeba = (
        __import__("cnnlab.data.celeba", fromlist=["CelebASource"])
        .CelebASource()
        .scan(DataConfig(name="celeba", root=str(folder)))
    )
    read = [p for entries in scan_celeba.files.values() for p, _ in entries]
    assert len(read) == 6 and all(p.resolve().is_relative_to((folder / "img_align_celeba").resolve()) for p in read)
    assert sum("leads outside img_align_celeba" in reason for _, reason in scan.skipped) == 2


def test_a_model_gone_nan_is_served_as_null_not_500(deploy_run, tmp_path):
    import http.client

    import torch

    from cnnlab.engine.checkpoint import save_checkpoint

    ckpt = torch.load(deploy_run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["model"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(tmp_path / "nan.pt", **{k: v for k, v in ckpt.items() if k not in ("format", "version", "rng")})
    with serving(tmp_path / "nan.pt") as (_, port):
        buf = io.BytesIO()
        Image.new("L", (28, 28), 90).save(buf, "PNG")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", body=buf.getvalue(), headers={"Content-Type": "image/png"})
        r = conn.getresponse()
        body = json.loads(r.read(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
        assert r.status == 200 and body["top"][0]["probability"] is None, body


def test_pillows_process_wide_pixel_limit_is_left_as_it_was(tmp_path):
    """A user's larger data.max_pixels is honoured for cnnlab's own opens only."""
    from cnnlab.data.images import _open, _pillow_limit

    default = Image.MAX_IMAGE_PIXELS
    Image.new("1", (10_000, 9_500)).save(tmp_path / "big.png")  # 95 M pixels: over Pillow's 89 M warning
    Image.new("1", (10_000, 9_500)).save(tmp_path / "big.tif")  # TIFF checks the limit again while loading
    for name in ("big.png", "big.tif"):
        with _pillow_limit(10**8), _open(tmp_path / name) as im:
            im.load()
            assert im.size == (10_000, 9_500)
    assert Image.MAX_IMAGE_PIXELS == default
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(tmp_path / "big.png")  # anyone else's open still gets Pillow's own check


def test_folder_decoding_threads_are_bounded_by_memory(monkeypatch):
    from cnnlab.data import folder

    monkeypatch.setattr(folder.os, "cpu_count", lambda: 64)
    assert folder.decode_threads(40_000_000) == 13  # 2 GiB / (4 x 40 M pixels)
    assert folder.decode_threads(10**6) == 64 and folder.decode_threads(10**9) == 1


def test_a_split_folder_that_is_a_link_to_another_disk_is_the_dataset(tmp_path):
    elsewhere = write_image_folder(tmp_path / "ssd" / "train", {"a": 3, "b": 3})
    write_image_folder(tmp_path / "ds" / "test", {"a": 2, "b": 2})
    (tmp_path / "ds" / "train").symlink_to(elsewhere, target_is_directory=True)
    scan = scan_folder(tmp_path / "ds")
    assert (
        scan.classes == ["a", "b"]
        and len(scan.files["train"]) == 6
        and len(scan.files["test"]) == 4
        and not scan.skipped
    )


def test_cifar_dtype_state_cannot_clear_an_object_dtypes_flags(tmp_path):
    """The reviewer's bypass: dtype('O8') given the state of a plain type (flags 0), then an array of
    raw bytes with it: numpy would read the bytes as object pointers."""
    import pickle

    import numpy as np

    from cnnlab.data.cifar import read_batch

    data = pickle.dumps({"label_names": np.frombuffer(b"A" * 8, "f8")}, protocol=2).replace(b"f8", b"O8")
    (tmp_path / "batches.meta").write_bytes(data)
    with pytest.raises(DataError, match="refusing"):
        read_batch(tmp_path / "batches.meta")
