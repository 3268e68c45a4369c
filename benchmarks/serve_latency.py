"""Latency of `cnnlab serve` under concurrent clients, measured as a user would see it.

    python benchmarks/serve_latency.py runs/fashion-mnist-fast-1      # 3 rounds of 200 requests, 20 and 1 at a time
    python benchmarks/serve_latency.py RUN --requests 400 --concurrency 40 --rounds 5

Starts `cnnlab serve RUN --port 0` in a subprocess on 127.0.0.1, then, for each number of clients
in --concurrency and each round, sends --requests POST /predict requests of the run's own test
images (PNG files, each on a new connection) from that many client threads, first without and then
with Grad-CAM (?gradcam=1). Reports the p50 and p99 latency and the requests per second of each
round, and the medians over the rounds; any answer other than 200 is counted and makes the exit
code 1. Writes JSON (default
benchmarks/results/serve_latency.json). The clients share the machine's cores with the server, as
they do when both run on one laptop.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def start_server(run: str, extra: Sequence[str] = ()) -> tuple[subprocess.Popen, int]:
    """`cnnlab serve RUN --port 0 EXTRA...` in a subprocess, once it says where it listens: (process, port)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "serve", run, "--port", "0", *extra], stdout=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 1)[0]:
            line = proc.stdout.readline()
            if "http://" in line:
                return proc, int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
    proc.kill()
    raise SystemExit(f"cnnlab serve {run} did not start")


def post(port: int, path: str, body: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=body)
        r = conn.getresponse()
        r.read()
    finally:
        conn.close()
    return r.status, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in [0, 100])."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * q // 100) - 1))]


def test_pngs(run: str, n: int) -> list[bytes]:
    from PIL import Image

    import cnnlab
    from cnnlab.evaluation import display_image, load_split

    clf = cnnlab.load(run)
    _, split = load_split(clf.run, "test")
    out = []
    for i in range(min(n, len(split))):
        x = (display_image(split, i, clf.run.preprocess, clf.input_shape[0]) * 255).round().byte().numpy()
        buf = io.BytesIO()
        Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder or checkpoint")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument(
        "--concurrency", default="20,1", help="numbers of clients at a time, comma-separated (default 20,1)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_latency.json"))
    args = ap.parse_args()

    images = test_pngs(args.run, 100)
    proc, port = start_server(args.run)
    results: dict[str, list[dict]] = {}
    errors = 0
    try:
        post(port, "/predict?gradcam=1", images[0])  # warm-up: first-call costs are not latency
        for clients in [int(c) for c in args.concurrency.split(",")]:
            for r in range(args.rounds):
                for name, query in (("predict", ""), ("predict+gradcam", "?gradcam=1")):
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(max_workers=clients) as pool:
                        answers = list(
                            pool.map(
                                lambda i, query=query: post(port, f"/predict{query}", images[i % len(images)]),
                                range(args.requests),
                            )
                        )
                    wall = time.perf_counter() - t0
                    ms = [1000 * s for _, s in answers]
                    bad = sum(status >= 500 for status, _ in answers)
                    errors += sum(status != 200 for status, _ in answers)
                    row = {
                        "p50_ms": percentile(ms, 50),
                        "p99_ms": percentile(ms, 99),
                        "requests_per_s": args.requests / wall,
                        "5xx": bad,
                    }
                    results.setdefault(f"{clients} clients, {name}", []).append(row)
                    print(
                        f"round {r + 1}, {clients:3d} clients, {name:16s} p50 {row['p50_ms']:6.1f} ms  "
                        f"p99 {row['p99_ms']:6.1f} ms  {row['requests_per_s']:6.1f} req/s  5xx: {bad}"
                    )
    finally:
        proc.terminate()
        proc.wait(10)
    summary = {
        name: {k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p99_ms", "requests_per_s")}
        for name, rows in results.items()
    }
    print(f"\nmedians over {args.rounds} rounds of {args.requests} requests:")
    for name, s in summary.items():
        print(f"  {name:28s} p50 {s['p50_ms']:6.1f} ms  p99 {s['p99_ms']:6.1f} ms  {s['requests_per_s']:6.1f} req/s")
    doc = {
        "run": args.run,
        "requests": args.requests,
        "rounds": results,
        "median": summary,
        "non_200": errors,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written to {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
