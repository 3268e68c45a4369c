"""`cnnlab serve`: a web page and a JSON API over a trained run, on Starlette and uvicorn.

Routes:
  GET  /          the page: drop or choose an image, see the top classes and a Grad-CAM overlay
  GET  /health    {"status": "ok", "model": ..., "classes": K}
  GET  /info      the model, its classes, input and preprocessing, and the server's limits
  POST /predict   the image as the raw body, or as the "file" field of a multipart form;
                  ?topk=K (default 5), ?gradcam=1 adds the overlay as a PNG data URL

Anything a client sends gets an answer below 500: 400 for what is not an image (or a bad
parameter), 413 for a body over the upload limit or an image over the pixel limit (refused from its
header, before it is decoded), 404/405 for other paths and methods. The model runs one request at a
time (a lock): torch already spreads one forward pass over the cores, and Grad-CAM's hooks must not
see another request's forward pass.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cnnlab.data.images import BadImage, TooManyPixels
from cnnlab.run_folder import json_text
from cnnlab.serve.predictor import Classifier

MAX_TOPK = 100
DECODERS = 2  # uploads decoded at once: a 40-megapixel 16-bit PNG takes about 400 MB while it decodes
UPLOAD_SECONDS = 30.0  # a body must arrive within this (10 MB at 3 Mbit/s); then 408
HEADER_SECONDS = 10.0  # a request line and headers must arrive within this of connecting; then the connection is closed
QUEUE = 8  # full-size uploads held at once (read, or waiting for the model); past it 503
MAX_CONNECTIONS = 1000  # connections at once (within the open-file limit); past it 503


def overlay_png(image: Any, heat: Any) -> bytes:
    """The image (H, W, C) in [0, 1] with its Grad-CAM heat (H, W) on top (jet, half transparent), as
    PNG bytes at the model's input size: the page scales it up with crisp pixels (a PNG of 280x280
    took 7 ms to encode, as long as the rest of the request)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    img = image.numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    colored = colormaps["jet"](heat.clamp(0, 1).numpy())[..., :3]
    blend = np.clip(0.5 * img + 0.5 * colored, 0, 1)
    buf = io.BytesIO()
    Image.fromarray((blend * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class StrictJSONResponse(JSONResponse):
    """Starlette's JSONResponse refuses NaN (allow_nan=False) with an exception, so a model whose
    weights went NaN would answer 500 to every request; here a non-finite number is null, as in every
    JSON file cnnlab writes (run_folder.json_text)."""

    def render(self, content: Any) -> bytes:
        return json_text(content, indent=None).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class Budget:
    """Bytes of uploads the server holds at once (bodies being read, and waiting for the model),
    across every request: when the next chunk would pass `capacity`, that request gets 503 at once
    rather than waiting in an unbounded queue. Memory for uploads stays under `capacity`, however
    many clients there are; a client that trickles its body holds only the bytes it has sent.
    Used from the event loop only (no lock needed)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0

    def lease(self) -> Lease:
        return Lease(self)


class Lease:
    """One request's share of a Budget: what it took, all given back by release()."""

    def __init__(self, budget: Budget) -> None:
        self.budget, self.held = budget, 0

    def take(self, n: int) -> None:
        b = self.budget
        if b.used + n > b.capacity:
            raise HTTPException(503, f"the server is busy ({b.used:,} bytes of uploads in hand); retry in a moment")
        b.used += n
        self.held += n

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


async def _read_body(request: Request, limit: int, shown: int, lease: Lease, seconds: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes (the upload
    limit plus a form's overhead; the message names the upload limit, `shown`), with 408 when it has
    not all come within `seconds`. Every byte is taken on the request's `lease` (twice: the chunks and
    their join), which the caller releases when the request is answered."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise HTTPException(
                413,
                (
                    f"the upload is {int(declared):,} bytes; this server takes images of at most {shown:,} "
                    "(cnnlab serve --max-upload-mb)"
                ),
            )
    chunks: list[bytes] = []

    async def collect() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(
                    413,
                    (
                        f"the upload passes {limit:,} bytes; this server takes images of at most {shown:,} "
                        "(cnnlab serve --max-upload-mb)"
                    ),
                )
            lease.take(2 * len(chunk))
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), seconds)  # wait_for, not asyncio.timeout: Python 3.10 has only this
    except asyncio.TimeoutError:
        raise HTTPException(
            408, f"the upload did not arrive within {seconds:g} s (cnnlab serve --upload-seconds)"
        ) from None
    except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing to log
        raise HTTPException(400, "the client disconnected during the upload") from None
    return b"".join(chunks)


FORM_OVERHEAD = 16 * 1024  # bytes a multipart body may hold beyond its file: boundaries and part headers


async def _image_bytes(request: Request, limit: int, lease: Lease, seconds: float) -> bytes:
    """The image: the raw body, or the 'file' (or only) file field of a multipart form; 413 where
    the image itself is over `limit` bytes."""
    data = await _image_field(request, limit, lease, seconds)
    if len(data) > limit:
        raise HTTPException(
            413, f"the image is {len(data):,} bytes; this server takes at most {limit:,} (cnnlab serve --max-upload-mb)"
        )
    return data


async def _image_field(request: Request, limit: int, lease: Lease, seconds: float) -> bytes:
    body = await _read_body(request, limit + FORM_OVERHEAD, limit, lease, seconds)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        if not body:
            raise HTTPException(
                400, "no image: send the image file as the request body, or as the 'file' field of a multipart form"
            )
        return body

    async def replay() -> dict[str, Any]:  # the body already read, handed to Starlette's form parser
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, replay).form(max_files=4, max_fields=20, max_part_size=64 * 1024) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                upload = next((v for v in form.values() if not isinstance(v, str)), None)
            if upload is None:
                raise HTTPException(400, "the form has no file: send the image as its 'file' field")
            return await upload.read()
    except HTTPException:
        raise
    except Exception as e:  # python-multipart's and Starlette's errors for a malformed form
        raise HTTPException(400, f"a malformed multipart form ({str(e).strip()[:120] or type(e).__name__})") from None


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "0").lower()
    if value not in ("0", "1", "true", "false", "yes", "no", ""):
        raise HTTPException(400, f"?{name}= takes 1 or 0, not {value[:20]!r}")
    return value in ("1", "true", "yes")


def _topk(request: Request, default: int) -> int:
    value = request.query_params.get("topk")
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_TOPK:
        raise HTTPException(400, f"?topk= takes a whole number from 1 to {MAX_TOPK}, not {value[:20]!r}")
    return int(value)


def _model_runner(clf: Classifier) -> Callable[[bytes, int, bool], dict[str, Any]]:
    """run_model(data, k, gradcam) for `clf`, as create_app's predict calls it in a worker thread."""
    lock = threading.Lock()  # the model: one request at a time
    decode_slots = threading.BoundedSemaphore(DECODERS)

    def run_model(data: bytes, k: int, gradcam: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        with decode_slots:  # decoding a large image takes memory: a few at a time, beside the model
            x, resized = clf.pixels(data)
        with lock:
            if gradcam:
                pred, heat, image = clf.explain_pixels(x, resized, topk=k)
            else:
                pred = clf.predict_pixels(x, resized, topk=k)
        out = pred.to_dict()
        if gradcam:
            out["gradcam"] = "data:image/png;base64," + base64.b64encode(overlay_png(image, heat)).decode()
        out["milliseconds"] = round(1000 * (time.perf_counter() - t0), 2)
        return out

    return run_model


def create_app(
    clf: Classifier,
    *,
    max_upload_bytes: int = 10 * 1024**2,
    topk: int = 5,
    upload_seconds: float = UPLOAD_SECONDS,
    queue: int = QUEUE,
) -> Starlette:
    """The ASGI app serving `clf` (whose max_pixels is the pixel limit). Uploads in hand are bounded
    by `queue` full-size uploads (Budget); each body must arrive within `upload_seconds`."""
    run_model = _model_runner(clf)
    budget = Budget(queue * 2 * (max_upload_bytes + FORM_OVERHEAD))
    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": clf.max_pixels,
        "upload_seconds": upload_seconds,
        "queue": queue,
    }
    page = resources.files("cnnlab.serve").joinpath("page.html").read_text(encoding="utf-8")
    page = page.replace(
        "__CONFIG__", json.dumps({**limits, "topk": topk, "model": clf.name, "classes": len(clf.classes)})
    )

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": clf.name, "classes": len(clf.classes)})

    async def info(request: Request) -> Response:
        return JSONResponse({**clf.describe(), "limits": limits})

    async def predict(request: Request) -> Response:
        k = _topk(request, topk)
        gradcam = _flag(request, "gradcam")
        lease = budget.lease()  # this request's bytes in the budget, given back however it ends
        try:
            data = await _image_bytes(request, max_upload_bytes, lease, upload_seconds)
            return StrictJSONResponse(await run_in_threadpool(run_model, data, k, gradcam))
        except TooManyPixels as e:
            return _error(413, f"the image is too large: {e}")
        except BadImage as e:
            return _error(400, f"not an image this server can read: {e}")
        finally:
            lease.release()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers: a connection that has not
    sent a whole request line and headers within `seconds` of opening (or of its last answer) is
    closed. uvicorn has no such timeout (its keep-alive timer stops at the first byte), so one byte
    a second would hold a connection, and its file descriptor, for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _headers_due = None

        def _arm(self) -> None:  # the headers are due `seconds` from now
            if self._headers_due is not None:
                self._headers_due.cancel()
            self._headers_due = self.loop.call_later(seconds, self._headers_late)

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete and self._headers_due is not None:
                self._headers_due.cancel()  # a request is in: the app's own deadline (the body's) takes over
                self._headers_due = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection

        def connection_lost(self, exc) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._headers_due = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def max_connections(wanted: int = MAX_CONNECTIONS) -> int:
    """Connections served at once: `wanted`, within the open-file limit (less room for the process's
    own files). uvicorn (limit_concurrency) still accepts connections past it and answers their
    requests 503; idle ones are closed at the header deadline, so descriptors stay bounded by the
    rate of connections times that deadline."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else max(8, min(wanted, soft - 64))


def serve(
    clf: Classifier,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_bytes: int = 10 * 1024**2,
    topk: int = 5,
    announce=print,
    upload_seconds: float = UPLOAD_SECONDS,
    header_seconds: float = HEADER_SECONDS,
    queue: int = QUEUE,
) -> None:
    """Bind host:port (port 0: a free one), announce the address, and serve until Ctrl-C."""
    import socket

    import torch
    import uvicorn

    from cnnlab.errors import CnnlabError

    pred, heat, image = clf.explain(
        torch.zeros(clf.input_shape, dtype=torch.uint8)
    )  # warm-up: the first request is not the slow one
    overlay_png(image, heat)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise CnnlabError(
            f"--host {host}: not an address this machine knows ({e}); use 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise CnnlabError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port, or stop what uses it"
        ) from None
    sock.listen(2048)  # listening before the address is announced: a client that comes early waits in the backlog
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    announce(
        f"serving {clf.name} ({len(clf.classes)} classes, input {'x'.join(map(str, clf.input_shape))}) "
        f"on http://{shown}:{bound}/  (POST /predict, GET /health; Ctrl-C stops)"
    )
    app = create_app(clf, max_upload_bytes=max_upload_bytes, topk=topk, upload_seconds=upload_seconds, queue=queue)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        http=header_deadline_protocol(header_seconds),
        limit_concurrency=max_connections(),
        ws="none",
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])
