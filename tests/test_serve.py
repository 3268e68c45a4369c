"""cnnlab serve, started as a user starts it, on 127.0.0.1: the page driven in headless Chromium, the
JSON API, bad requests (never a 5xx), and 200 requests at most 20 at a time."""

import base64
import http.client
import io
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import serving
from PIL import Image

import cnnlab

UPLOAD_MB = 1  # the server's upload limit in these tests, so an oversized body stays small


@pytest.fixture(scope="module")
def server(deploy_run):
    """`cnnlab serve RUN --port 0 --max-upload-mb 1` in a subprocess: (host, port); stopped at the end."""
    with serving(deploy_run, "--max-upload-mb", str(UPLOAD_MB)) as address:
        yield address


def request(
    server, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60
):
    """(status, parsed JSON or text, seconds) of one request on a new connection."""
    conn = http.client.HTTPConnection(*server, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - t0
    kind = r.getheader("content-type", "")
    return r.status, json.loads(data) if kind.startswith("application/json") else data.decode(errors="replace"), seconds


def multipart(field: str, filename: str, content: bytes) -> tuple[bytes, dict]:
    boundary = "cnnlabtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def images(deploy_run, tmp_path_factory):
    """Test images of the run's data as PNG files, the model's labels for them, and bad files."""
    from cnnlab.evaluation import load_split

    clf = cnnlab.load(deploy_run)
    _, split = load_split(clf.run, "test")
    root = tmp_path_factory.mktemp("serve-images")
    good = []
    for i in range(20):
        good.append(root / f"{i:02d}.png")
        Image.fromarray(split.images[i, 0].numpy()).save(good[-1])
    (root / "corrupt.png").write_bytes(good[0].read_bytes()[:60])  # a PNG cut inside its data
    Image.new("L", (10_000, 5_000), 128).save(root / "50mp.png")  # 50 megapixels in about 60 kB
    return {
        "good": good,
        "labels": [clf.predict(p).label for p in good],
        "corrupt": root / "corrupt.png",
        "50mp": root / "50mp.png",
        "root": root,
    }


# --- the page in a real browser ------------------------------------------------------------------


def _upload(browser, path: Path) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("document.body.dataset.state = ''")
    browser.find_element("id", "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.body.dataset.state") in ("done", "error")
    )
    return browser.execute_script("return document.body.dataset.state")


def test_the_page_classifies_an_upload_in_headless_chromium(server, browser, images):
    """Acceptance: upload an image on the page and read the top class; bad files show the server's message."""
    browser.get(f"http://{server[0]}:{server[1]}/")
    assert "fastnet" in browser.find_element("id", "model-name").text
    for path, label in list(zip(images["good"], images["labels"]))[:3]:
        assert _upload(browser, path) == "done"
        assert browser.find_element("id", "top-class").text == label
        bars = browser.find_elements("css selector", "#bars .bar")
        assert len(bars) == 5 and bars[0].get_attribute("data-cls") == label
        natural, shown, complete = browser.execute_script(
            "const i = document.getElementById('gradcam'); return [i.naturalWidth, i.clientWidth, i.complete]"
        )
        assert complete and natural == 28 and shown >= 256  # the Grad-CAM overlay at the input's size, shown scaled up
        assert browser.find_element("id", "cam-box").is_displayed()
    assert _upload(browser, images["corrupt"]) == "error"
    assert "not an image" in browser.find_element("id", "error").text
    assert _upload(browser, images["50mp"]) == "error"
    assert "too large" in browser.find_element("id", "error").text


# --- the JSON API --------------------------------------------------------------------------------


def test_health_info_and_predict(server, images, deploy_run):
    status, body, _ = request(server, "GET", "/health")
    assert status == 200 and body == {"status": "ok", "model": "fastnet", "classes": 10}
    status, info, _ = request(server, "GET", "/info")
    assert status == 200 and info["input"] == {"channels": 1, "height": 28, "width": 28, "mode": "L"}
    assert info["limits"]["max_upload_bytes"] == UPLOAD_MB * 1024**2 and len(info["classes"]) == 10
    raw = images["good"][1].read_bytes()
    status, a, _ = request(server, "POST", "/predict?topk=3", raw)
    body, headers = multipart("file", "x.png", raw)
    status_b, b, _ = request(server, "POST", "/predict?topk=3&gradcam=1", body, headers)
    assert status == status_b == 200
    assert a["label"] == b["label"] == images["labels"][1] and [t["class"] for t in a["top"]] == [
        t["class"] for t in b["top"]
    ]
    want = cnnlab.load(deploy_run).predict(images["good"][1], topk=3)
    assert np.allclose([t["probability"] for t in a["top"]], [p for _, p in want.top], atol=1e-6)
    assert "gradcam" not in a
    png = Image.open(io.BytesIO(base64.b64decode(b["gradcam"].split(",", 1)[1])))
    assert png.format == "PNG" and png.size == (28, 28) and png.mode == "RGB"  # the model's input size


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (with a valid CRC) and whose data is cut short."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
    )


def test_bad_requests_get_4xx_with_a_message(server, images, tmp_path):
    """Acceptance: a corrupt file 400, a 50-megapixel image 413, an oversized upload 413; and nothing
    a client sends gets a 5xx."""
    good = images["good"][0].read_bytes()
    cases = [
        ("corrupt PNG", "POST", "/predict", images["corrupt"].read_bytes(), {}, 400),
        ("50 megapixels", "POST", "/predict", images["50mp"].read_bytes(), {}, 413),
        ("header claims 100k x 100k", "POST", "/predict", _png_claiming(100_000, 100_000), {}, 413),
        ("over the upload limit", "POST", "/predict", b"\0" * (UPLOAD_MB * 1024**2 + 1), {}, 413),
        ("text", "POST", "/predict", b"hello, this is not an image", {"Content-Type": "text/plain"}, 400),
        ("empty body", "POST", "/predict", b"", {}, 400),
        ("random bytes", "POST", "/predict", np.random.default_rng(0).bytes(5000), {}, 400),
        ("zero-size PNG claim", "POST", "/predict", _png_claiming(0, 0), {}, 400),
        ("form without a file", "POST", "/predict", *multipart_field_only(), 400),
        (
            "broken multipart",
            "POST",
            "/predict",
            b"--x\r\ngarbage",
            {"Content-Type": "multipart/form-data; boundary=x"},
            400,
        ),
        ("multipart without boundary", "POST", "/predict", good, {"Content-Type": "multipart/form-data"}, 400),
        ("topk 0", "POST", "/predict?topk=0", good, {}, 400),
        ("topk text", "POST", "/predict?topk=lots", good, {}, 400),
        ("topk a superscript digit", "POST", "/predict?topk=%C2%B2", good, {}, 400),
        ("200,000 x 1 pixels", "POST", "/predict", _png_claiming(200_000, 1), {}, 400),
        ("EPS", "POST", "/predict", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", {}, 400),
        ("gradcam text", "POST", "/predict?gradcam=maybe", good, {}, 400),
        ("GET /predict", "GET", "/predict", None, {}, 405),
        ("unknown path", "GET", "/admin", None, {}, 404),
    ]
    for name, method, path, body, headers, want in cases:
        status, reply, _ = request(server, method, path, body, headers)
        assert status == want, (name, status, reply)
        assert isinstance(reply, dict) and reply["error"], name
    # still fine afterwards
    assert request(server, "POST", "/predict", good)[0] == 200


def multipart_field_only() -> tuple[bytes, dict]:
    boundary = "b0undary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--{boundary}--\r\n'.encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_200_requests_at_most_20_at_a_time(server, images, capsys):
    """Acceptance: no 5xx under 20 concurrent clients; every good image gets its label, every bad one 400."""
    jobs = []
    for i in range(200):
        if i % 10 == 9:
            jobs.append((images["corrupt"].read_bytes(), None, ""))
        else:
            k = i % len(images["good"])
            jobs.append((images["good"][k].read_bytes(), images["labels"][k], "?gradcam=1" if i % 2 else ""))

    def one(job):
        body, label, query = job
        status, reply, seconds = request(server, "POST", f"/predict{query}", body)
        return status, reply, label, seconds

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, jobs))
    assert all(status < 500 for status, *_ in results)
    for status, reply, label, _ in results:
        if label is None:
            assert status == 400
        else:
            assert status == 200 and reply["label"] == label
    ms = sorted(1000 * s for *_, s in results)
    p50, p99 = statistics.median(ms), ms[int(0.99 * len(ms)) - 1]
    with capsys.disabled():  # a figure to read, not to assert: benchmarks/serve_latency.py measures it properly
        print(f"\n  cnnlab serve, 200 requests, 20 at a time: p50 {p50:.0f} ms, p99 {p99:.0f} ms", end="")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--port", "70000"], "not a port"),
        (["--port", "-1"], "not a port"),
        (["--topk", "101"], "more than 100"),
        (["--max-upload-mb", "inf"], "finite number"),
        (["--max-upload-mb", "1e-7"], "under a kilobyte"),
    ],
)
def test_serve_flags_are_checked(deploy_run, args, words):
    r = subprocess.run(
        [sys.executable, "-m", "cnnlab", "serve", str(deploy_run), *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(deploy_run, server):
    r = subprocess.run(
        [sys.executable, "-m", "cnnlab", "serve", str(deploy_run), "--port", str(server[1])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode == 2
        and f"cannot listen on 127.0.0.1:{server[1]}" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    ), r.stderr
