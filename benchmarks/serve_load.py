"""`cnnlab serve` against slow clients: does an ordinary user still get answers, and is memory bounded?

    python benchmarks/serve_load.py runs/fashion-mnist-fast-1
    python benchmarks/serve_load.py RUN --slow 500 --requests 200 --concurrency 20 --header-seconds 10

Starts `cnnlab serve RUN --port 0` on 127.0.0.1 and measures, on loopback:
  1. --requests POST /predict uploads (the run's own test images as PNG, each on a new connection)
     from --concurrency client threads, alone: p50 / p99 latency;
  2. the same while --slow clients are connected, each sending one byte a second: half of them
     trickle a request's headers (a slowloris), half send headers and then trickle the body.
It reports every status code seen, how long each slow client was held before the server cut it
off (the header and upload deadlines), and the server's peak resident memory (VmHWM) against the
figure the limits allow. Exit code 1 when an ordinary upload is not answered 200, any answer is a
5xx, or a slow client outlives its deadline by more than 5 s. Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import select
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_latency import percentile, post, start_server, test_pngs  # noqa: E402  (test_pngs: the run's own test images, as PNG files)


def ordinary(port: int, images: list[bytes], requests: int, concurrency: int) -> dict:
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: post(port, "/predict", images[i % len(images)]), range(requests)))
    ms = [1000 * s for _, s in results]
    return {
        "statuses": dict(Counter(c for c, _ in results)),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
    }


class SlowClient(threading.Thread):
    """One byte a second of a request's headers (phase "headers") or of its body ("body"), until the
    server answers or closes the connection; records how long that took and what it said."""

    def __init__(self, port: int, phase: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.phase, self.stop = port, phase, stop
        self.held: float | None = None
        self.status: int | None = None

    def run(self) -> None:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.status = -1
            return
        t0 = time.monotonic()
        try:
            if self.phase == "body":
                s.sendall(head)
                head = b"\x89" * 100000
            s.setblocking(False)
            for i in range(len(head)):
                if self.stop.is_set():
                    return
                try:
                    s.send(head[i : i + 1])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # closed by the server
                    break
                r, _, _ = select.select([s], [], [], 1.0)
                if r:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if data.startswith(b"HTTP/1.1 "):
                        self.status = int(data[9:12])
                    break
            self.held = time.monotonic() - t0
        finally:
            s.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--slow", type=int, default=500)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--header-seconds", type=float, default=10.0)
    p.add_argument("--upload-seconds", type=float, default=30.0)
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--queue", type=int, default=8)
    p.add_argument("--out", default=str(HERE / "results" / "serve_load.json"))
    a = p.parse_args(argv)
    extra = [
        "--header-seconds",
        str(a.header_seconds),
        "--upload-seconds",
        str(a.upload_seconds),
        "--max-upload-mb",
        str(a.max_upload_mb),
        "--queue",
        str(a.queue),
    ]
    images = test_pngs(a.run, 50)
    proc, port = start_server(a.run, extra)
    try:
        for b in images[:5]:
            post(port, "/predict", b)  # warm
        alone = ordinary(port, images, a.requests, a.concurrency)
        rss_alone = peak_rss_mb(proc.pid)
        stop = threading.Event()
        slow = [SlowClient(port, "headers" if i % 2 == 0 else "body", stop) for i in range(a.slow)]
        for c in slow:
            c.start()
        time.sleep(1.0)  # every slow client connected and trickling
        busy = ordinary(port, images, a.requests, a.concurrency)
        deadline = max(a.header_seconds, a.upload_seconds) + 10
        for c in slow:
            c.join(timeout=max(0.1, deadline - 1))
        stop.set()
        rss_peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    held = {ph: sorted(c.held for c in slow if c.phase == ph and c.held is not None) for ph in ("headers", "body")}
    slow_status = dict(Counter(str(c.status) for c in slow))
    budget_mb = a.queue * 2 * (a.max_upload_mb + 16 / 1024)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "settings": vars(a),
        "ordinary_alone": alone,
        "ordinary_with_slow_clients": busy,
        "slow_clients": {
            "answers": slow_status,
            "still_held_at_end": sum(1 for c in slow if c.held is None),
            **{f"{ph}_held_seconds_max": round(max(v), 1) if v else None for ph, v in held.items()},
        },
        "server_peak_rss_mb": {
            "after_ordinary_alone": round(rss_alone, 1),
            "with_slow_clients": round(rss_peak, 1),
            "upload_budget_mb": round(budget_mb, 1),
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    bad = [s for r in (alone, busy) for s in r["statuses"] if s != 200]
    late = [
        v for ph, lim in (("headers", a.header_seconds), ("body", a.upload_seconds)) for v in held[ph] if v > lim + 5
    ]
    fives = [s for s in slow_status if s.isdigit() and int(s) >= 500]
    ok = not bad and not late and not fives and result["slow_clients"]["still_held_at_end"] == 0
    print("ok" if ok else f"FAILED: non-200 ordinary {bad}, late slow clients {len(late)}, 5xx to slow clients {fives}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
