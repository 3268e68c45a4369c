"""CPU speed: cnnlab's engine against the reports' plain PyTorch loop, measured side by side in one run.

    python benchmarks/cpu_speed.py                # every section, 3 runs each (about 40 minutes here)
    python benchmarks/cpu_speed.py --only a,b,c,d # all but the 10-minute recipe (about 12 minutes)
    python benchmarks/cpu_speed.py --quick        # 1 run each, 1 epoch of the reports' loop, 1 seed
    python benchmarks/cpu_speed.py --only a,c,d   # some sections

Sections (each figure a median over --runs runs; the two sides of a comparison alternate, so a
slower or faster spell of the machine hits both):
  (a) throughput: the textbook MNIST network trained by the reports' loop (torchvision dataset,
      per-sample ToTensor, DataLoader, fp32) and by cnnlab's engine (in-memory uint8 batches,
      the precision and layout `cnnlab train` picks here), same batch size and optimizer: images/s.
  (b) time to accuracy: the reports' loop with the textbook network and Adam, test accuracy after
      each epoch against wall seconds; and `cnnlab train` (the default recipe) as a whole process,
      from its start to metrics.json written, over seeds 0, 1, 2.
  (c) efficiency: GFLOP/s of the default model's training step (FLOPs counted by
      torch.utils.flop_counter, forward and backward) against a matmul in the same dtype on the same
      cores, for fp32 and (where the CPU has it natively) bf16; and what that efficiency predicts for
      the other machine kinds (OTHER_MACHINES: their matmul GFLOP/s), step rate and default run.
  (d) batch inference of the default model (batch 256): images/s.
  (e) `cnnlab train fashion-mnist-best` as a whole process, seeds 0, 1, 2 (about 9 minutes each):
      test accuracy and the wall seconds to metrics.json.
Prints a table and writes JSON (default benchmarks/results/cpu_speed.json). Fashion-MNIST must be
here (make data, or the Debian package dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cnnlab.config import DataConfig, OptimConfig, load_recipe  # noqa: E402
from cnnlab.data import DATASETS, load_dataset  # noqa: E402
from cnnlab.data.loader import TensorLoader  # noqa: E402
from cnnlab.engine.device import autocast_factory, set_threads  # noqa: E402
from cnnlab.engine.loop import TrainStep  # noqa: E402
from cnnlab.engine.losses import cross_entropy  # noqa: E402
from cnnlab.engine.optim import create_optimizer  # noqa: E402
from cnnlab.engine.precision import Choice, cpu_description, for_model  # noqa: E402
from cnnlab.models import create_model  # noqa: E402

CPU = torch.device("cpu")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- the reports' loop -------------------------------------------------------------------------------


def fashion_folder() -> Path | None:
    """Where cnnlab finds Fashion-MNIST's IDX files here, or None."""
    return DATASETS.get("fashion-mnist").find(DataConfig(name="fashion-mnist"))


def torchvision_fashion(tmp: Path, found: Path):
    """torchvision's FashionMNIST over the IDX files in `found` (unpacked into its raw/ layout), with
    the reports' per-sample transforms.ToTensor()."""
    import torchvision
    from torchvision import transforms

    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        src = next((p for p in (found / stem, found / f"{stem}.gz") if p.is_file()), None)
        if src is None:
            raise SystemExit(f"{found} has no {stem}[.gz]")
        if not (raw / stem).is_file():
            with gzip.open(src) if src.suffix == ".gz" else open(src, "rb") as f, open(raw / stem, "wb") as out:
                shutil.copyfileobj(f, out)
    t = transforms.ToTensor()
    return (
        torchvision.datasets.FashionMNIST(str(tmp), train=True, transform=t, download=False),
        torchvision.datasets.FashionMNIST(str(tmp), train=False, transform=t, download=False),
    )


def textbook_model() -> nn.Module:
    return create_model("textbook-mnist", num_classes=10, in_channels=1, input_size=(28, 28))


def _images_per_second(
    batches, train_on: Callable[[torch.Tensor, torch.Tensor], Any], batch: int, steps: int, warmup: int
) -> float:
    """Train on `warmup` batches, then time `steps` more (fetching each batch counts)."""
    it = iter(batches)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        train_on(*next(it))
    return steps * batch / (time.perf_counter() - t0)


def plain_throughput(train_set, batch: int, steps: int, warmup: int = 10) -> float:
    """images/s of the reports' loop: DataLoader over the torchvision dataset, fp32, Adam."""
    torch.manual_seed(0)
    model = textbook_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def train_on(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return _images_per_second(
        torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True), train_on, batch, steps, warmup
    )


def policy_of(name: str, batch: int, **kwargs: Any) -> Choice:
    """What `cnnlab train` would train model `name` in here: its precision policy (the probe's cached answer)."""
    model = create_model(name, num_classes=10, in_channels=1, input_size=(28, 28), **kwargs)
    return for_model(name, kwargs, model, (1, 28, 28), batch, 10)


def engine_parts(
    model: nn.Module, lr: float, optimizer: str = "adam", policy: Choice | None = None
) -> tuple[nn.Module, TrainStep]:
    """The model as cnnlab trains it (the precision and layout its policy picks) and its step."""
    policy = policy or Choice("float32", True, "")
    model = model.to(memory_format=torch.channels_last if policy.channels_last else torch.contiguous_format)
    opt = create_optimizer(
        model, OptimConfig(name=optimizer, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    )  # as cnnlab train builds it
    step = TrainStep(model, opt, cross_entropy(10), autocast=autocast_factory(CPU, policy.autocast_dtype))
    return model, step


def engine_throughput(ds, batch: int, steps: int, warmup: int = 10) -> float:
    """images/s of cnnlab's engine on the same network, batch and optimizer: in-memory batches."""
    torch.manual_seed(0)
    policy = policy_of("textbook-mnist", batch)
    model, step = engine_parts(textbook_model(), 1e-3, policy=policy)
    model.train()
    loader = TensorLoader(
        ds.train, batch, shuffle=True, seed=0, mean=[0.0], std=[1.0], device=CPU, channels_last=policy.channels_last
    )
    loader.set_epoch(1)
    return _images_per_second(loader, step, batch, steps, warmup)


def plain_time_to_accuracy(
    train_set, test_set, epochs: int, batch: int = 64, on_epoch: Callable[[int, float], None] | None = None
) -> list[tuple[float, float]]:
    """(wall seconds since the start, test accuracy) after each of `epochs` epochs of the reports'
    loop; the clock includes building the loaders, as a script's would."""
    t0 = time.perf_counter()
    torch.manual_seed(1)
    model = textbook_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    train = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True)
    test = torch.utils.data.DataLoader(test_set, batch_size=1000)
    points = []
    for _ in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x).argmax(1) == y).sum())
        points.append((time.perf_counter() - t0, correct / len(test_set)))
        if on_epoch is not None:
            on_epoch(len(points), points[-1][1])
    return points


def cnnlab_train(seed: int, tmp: Path, data: Path, recipe: str | None = None) -> dict[str, float]:
    """`cnnlab train` as a user runs it, a new process: the wall seconds from its start until
    metrics.json appears (written atomically; the report drawn after it is not counted), and until
    the process exits."""
    out = tmp / f"run-{recipe or 'default'}-{seed}-{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "cnnlab",
        "train",
        *([recipe] if recipe else []),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CNNLAB_DATA": str(data)}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    written = None
    while proc.poll() is None:
        if written is None and (out / "metrics.json").is_file():
            written = time.monotonic() - t0
        time.sleep(0.05)
    exited = time.monotonic() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or not (out / "metrics.json").is_file():
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    written = written if written is not None else exited
    m = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": written,
        "exit_seconds": exited,
        "accuracy": m["test"]["accuracy"],
        "train_seconds": m["train_seconds"],
    }


def seeds_row(name: str, runs: list[dict[str, float]], goal: str) -> tuple[str, str, str]:
    """A table row for `cnnlab train` over several seeds: the median accuracy, the median and slowest
    seconds to metrics.json, and each seed's figures."""
    each = ", ".join(f"{100 * r['accuracy']:.2f}% in {r['seconds']:.0f} s" for r in runs)
    times = [r["seconds"] for r in runs]
    return (
        name,
        f"{100 * median([r['accuracy'] for r in runs]):.2f}%",
        (
            f"median of {len(runs)} seed(s); {median(times):.0f} s to metrics.json, "
            f"slowest {max(times):.0f} s ({each}; {goal})"
        ),
    )


# --- efficiency and inference ------------------------------------------------------------------------


def default_model() -> nn.Module:
    """The default recipe's model, as `cnnlab train` builds it for Fashion-MNIST."""
    m = load_recipe(None).model
    return create_model(m.name, num_classes=10, in_channels=1, input_size=(28, 28), **m.kwargs)


def step_flops(model: nn.Module, batch: int) -> int:
    """FLOPs of one training step (forward and backward) at `batch`, as torch's flop counter counts
    them (convolutions and matmuls: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def train_step_gflops(batch: int, steps: int, policy: Choice) -> tuple[float, float]:
    """(GFLOP/s, images/s) of the default model's training step in `policy`'s dtype and layout."""
    torch.manual_seed(0)
    flops = step_flops(default_model(), batch)
    model, step = engine_parts(default_model(), 0.05, "sgd", policy)
    x = torch.randn(batch, 1, 28, 28).contiguous(
        memory_format=torch.channels_last if policy.channels_last else torch.contiguous_format
    )
    y = torch.randint(0, 10, (batch,))
    for _ in range(5):
        step(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    dt = (time.perf_counter() - t0) / steps
    return flops / dt / 1e9, batch / dt


def default_policy() -> Choice:
    """The default recipe's precision policy here, as `cnnlab train` picks it."""
    r = load_recipe(None)
    return policy_of(r.model.name, r.train.batch_size, **r.model.kwargs)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 20) -> float:
    """GFLOP/s of an n x n by n x n matmul in `dtype` on these cores: the ceiling of (c)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


# The other kinds of 2-core machine this project runs on, by their matmul GFLOP/s (measured once on
# each, issue 16): what (c) predicts for them from this machine's step efficiency.
OTHER_MACHINES = {
    "AMD EPYC, AVX512_BF16 (native bf16)": {"float32": 163.0, "bfloat16": 400.0},
    "Intel Xeon Ice Lake, AVX-512 without AVX512_BF16 (bf16 emulated)": {"float32": 270.0, "bfloat16": 54.0},
}


def inference_throughput(batch: int, batches: int, policy: Choice) -> float:
    """images/s of the default model predicting in-memory batches (eval, in the training dtype, channels_last)."""
    torch.manual_seed(0)
    model = default_model().eval().to(memory_format=torch.channels_last)
    autocast = autocast_factory(CPU, policy.autocast_dtype)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast():
        for _ in range(3):
            model(x)
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x).argmax(1)
        return batches * batch / (time.perf_counter() - t0)


# --- the run -----------------------------------------------------------------------------------------


def timed(runs: int, fns: list[Callable[[], Any]]) -> list[list[Any]]:
    """Each function `runs` times, interleaved (f1, f2, f1, f2, ...)."""
    results: list[list[Any]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            results[i].append(fn())
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
    p.add_argument(
        "--quick", action="store_true", help="1 run each; 1 epoch of the reports' loop, and 1 seed in (b) and (e)"
    )
    p.add_argument("--only", default="a,b,c,d,e", help="sections to run, e.g. a,c")
    p.add_argument("--race-epochs", type=int, default=3, help="(b): epochs of the reports' loop (about 50 s each here)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_speed.json"))
    args = p.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - set("abcde"):
        p.error(f"--only takes sections among a, b, c, d, e (e.g. a,c), got {args.only!r}")
    set_threads(None)  # as cnnlab does: the physical cores
    from cnnlab.engine.device import physical_cores

    runs = 1 if args.quick else args.runs
    race = 1 if args.quick else args.race_epochs
    policy = default_policy()
    dt = policy.dtype
    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_description(),
            "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "train_dtype": dt,
            "channels_last": policy.channels_last,
            "policy": policy.to_dict(),
            "python": platform.python_version(),
        },
        "runs": runs,
    }
    rows: list[tuple[str, str, str]] = []
    data = fashion_folder()
    if data is None and only & {"a", "b", "e"}:
        print(
            "Fashion-MNIST is not here (make data, or apt-get install dataset-fashion-mnist): "
            "sections a, b and e are skipped"
        )
        only -= {"a", "b", "e"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if only & {"a", "b"}:
            train_set, test_set = torchvision_fashion(tmp, data)  # type: ignore[arg-type]
            ds = load_dataset(DataConfig(name="fashion-mnist", root=str(data), val_size=0, normalize="none"), 0)
        if "a" in only:
            batch = 64
            plain, engine = timed(
                runs, [lambda: plain_throughput(train_set, batch, 150), lambda: engine_throughput(ds, batch, 150)]
            )
            result["a_throughput"] = {
                "batch": batch,
                "plain_img_s": plain,
                "engine_img_s": engine,
                "ratio": median(engine) / median(plain),
            }
            rows += [
                (
                    "(a) throughput, textbook-mnist, batch 64: reports' loop",
                    f"{median(plain):,.0f} img/s",
                    "fp32, per-sample ToTensor, DataLoader",
                ),
                (
                    "(a) throughput, same network: cnnlab engine",
                    f"{median(engine):,.0f} img/s",
                    f"x{median(engine) / median(plain):.2f} the reports' loop ({dt}, channels_last; goal x3)",
                ),
            ]
        if "b" in only:
            seeds = list(range(runs))
            plain_runs, cnn_runs = [], []
            for seed in seeds:  # interleaved: a reports' loop run, then a cnnlab run
                plain_runs.append(plain_time_to_accuracy(train_set, test_set, race))
                cnn_runs.append(cnnlab_train(seed, tmp, data))  # type: ignore[arg-type]
            result["b_time_to_accuracy"] = {"plain_epochs": plain_runs, "cnnlab_default": cnn_runs}
            # the reports' loop: its last epoch (no epoch picked on the test set); its seed is fixed, so its
            # accuracies repeat from run to run and only the time varies
            last_acc = [r[-1][1] for r in plain_runs]
            rows += [
                (
                    "(b) reports' loop, textbook net + Adam, last epoch",
                    f"{100 * median(last_acc):.2f}%",
                    f"after {median([r[-1][0] for r in plain_runs]):.0f} s ({race} epochs)",
                ),
                seeds_row("(b) cnnlab train (default recipe), whole process", cnn_runs, "goal 92% in 45 s"),
            ]
        if "c" in only:
            # the step in each dtype this CPU can train in natively (fp32 always; bf16 where native), each
            # against a matmul in the same dtype: the step's efficiency, from which the other machine
            # kinds' step rate is predicted (efficiency x their matmul)
            batch = 256
            dtypes = ["float32"] + (["bfloat16"] if policy.native_bf16 else [])
            flops = step_flops(default_model(), batch)
            eff: dict[str, Any] = {"batch": batch, "flops_per_step": flops, "per_dtype": {}}
            for d in dtypes:
                pol = Choice(d, policy.channels_last, "")
                measured = timed(
                    runs,
                    [lambda pol=pol: train_step_gflops(batch, 30, pol), lambda d=d: matmul_gflops(getattr(torch, d))],
                )
                step_gf, mm = median([g for g, _ in measured[0]]), median(measured[1])
                eff["per_dtype"][d] = {
                    "step_gflops": [g for g, _ in measured[0]],
                    "step_img_s": [i for _, i in measured[0]],
                    "matmul_gflops": measured[1],
                    "fraction": step_gf / mm,
                }
                rows += [
                    (
                        f"(c) default model's training step, batch 256, {d}",
                        f"{step_gf:.1f} GFLOP/s",
                        f"{median([i for _, i in measured[0]]):,.0f} img/s; "
                        f"{100 * step_gf / mm:.1f}% of a {d} matmul's {mm:.0f} GFLOP/s"
                        + (" (the dtype cnnlab trains in here)" if d == dt else ""),
                    )
                ]
            here = eff["per_dtype"][dt]
            rate_here = median(here["step_img_s"])
            cnn = result.get("b_time_to_accuracy", {}).get("cnnlab_default")
            predictions = {}
            for other, peaks in OTHER_MACHINES.items():
                # the dtype auto takes there: bf16 only where it is native and predicted faster
                options = {
                    d: eff["per_dtype"].get(d, eff["per_dtype"]["float32"])["fraction"] * peaks[d]
                    for d in ("float32", "bfloat16")
                    if d in eff["per_dtype"] or d == "float32"
                }
                native_there = "native" in other
                d_there = (
                    "bfloat16" if native_there and options.get("bfloat16", 0) * 0.95 > options["float32"] else "float32"
                )
                rate_there = options[d_there] * 1e9 / (flops / batch)
                pred = {
                    "dtype": d_there,
                    "step_img_s": rate_there,
                    "efficiency_from": d_there if d_there in eff["per_dtype"] else "float32 (bf16 not measured here)",
                }
                if cnn:  # the default run: its training steps scaled by the step rates, the rest as here
                    total, train_part = (
                        median([r["seconds"] for r in cnn]),
                        load_recipe(None).train.epochs * 55_000 / rate_here,
                    )  # 55,000 training images an epoch
                    pred["default_run_seconds"] = total - train_part + train_part * rate_here / rate_there
                predictions[other] = pred
                rows += [
                    (
                        f"(c) predicted for {other}",
                        f"{rate_there:,.0f} img/s",
                        f"{d_there} step"
                        + (
                            f"; default run about {pred['default_run_seconds']:.0f} s to metrics.json"
                            if "default_run_seconds" in pred
                            else ""
                        ),
                    )
                ]
            eff["predictions"] = predictions
            result["c_efficiency"] = eff
        if "d" in only:
            batch = 256  # faster here than 1024: the activations stay in cache
            inf = timed(runs, [lambda: inference_throughput(batch, 80, policy)])[0]
            result["d_inference"] = {"batch": batch, "dtype": dt, "img_s": inf}
            rows += [
                (
                    f"(d) batch inference, default model, batch {batch}",
                    f"{median(inf):,.0f} img/s",
                    f"{dt}, channels_last (goal 20,000 img/s)",
                )
            ]
        if "e" in only:
            best = [cnnlab_train(seed, tmp, data, "fashion-mnist-best") for seed in range(1 if args.quick else 3)]  # type: ignore[arg-type]
            result["e_best_recipe"] = {"recipe": "fashion-mnist-best", "runs": best}
            rows += [seeds_row("(e) cnnlab train fashion-mnist-best, whole process", best, "goal 94% in 600 s")]
    if not rows:
        print("nothing measured")
        return 1
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    m = result["machine"]
    print(
        f"\ncnnlab CPU speed, {m['cpu']}, {m['physical_cores']} physical cores, torch {m['torch']} "
        f"({m['torch_threads']} threads, training in {m['train_dtype']}), median of {runs} run(s)\n"
    )
    for name, value, note in rows:
        print(f"{name:<{w0}}  {value:>{w1}}  {note}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
