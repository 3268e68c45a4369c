"""The training precision and memory layout chosen by what this machine does, not by what it can emulate.

`torch.ops.mkldnn._is_mkldnn_bf16_supported()` answers True on any AVX-512 CPU, because oneDNN can
*emulate* bf16 there: on an Ice Lake Xeon (AVX-512, no AVX512_BF16) a bf16 matmul runs at about
54 GFLOP/s against 270 in fp32, and the default recipe trained 2x slower under bf16 autocast. So
`precision: auto` on the CPU takes bf16 only where

1. the CPU runs it natively (the avx512_bf16 or amx_bf16 instructions; aarch64's bf16), and
2. a short probe, the run's own model doing training steps at the run's batch size, says bf16 is
   faster than fp32 by a margin (`MARGIN`),

and `channels_last: auto` keeps channels_last only where the probe measures it faster. The answer is
cached per machine, torch version, thread count and probe shape (`~/.cache/cnnlab/precision.json`;
$CNNLAB_CACHE moves it), so only the first run of a model on a machine pays for it (well under a
second for the default). Without native bf16 nothing is timed for the dtype: fp32.

The probe runs on a copy of the model with torch's random streams forked, so a run's weights, data
order and augmentation are the same whether the answer was measured or read from the cache.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

MARGIN = 0.95  # bf16 (or channels_last) is taken only where its step takes under 95% of the other's time
PROBE_BUDGET = 0.6  # seconds of timed steps per candidate at most (a large model gets fewer steps)
PROBE_STEPS = 3  # timed steps per candidate, after one warm-up step; the fastest counts
PROBE_BATCH = 64  # 28x28 images per probe step at most (probe_batch): the ratios, not the run's own throughput, are
#                   what is wanted
CACHE_VERSION = 1


@dataclass
class Choice:
    """What a run trains with, why, and the probe's figures (metrics.json's `precision_policy`)."""

    dtype: str  # float32 | bfloat16 | float16: the autocast dtype of the training step (float32: none)
    channels_last: bool
    reason: str  # one line: why this dtype and layout
    native_bf16: bool | None = None  # the CPU's bf16 instructions (None: not a CPU run)
    probe: dict[str, Any] | None = None  # candidate -> images/s, and how the figures were had
    cached: bool = False  # the probe's figures come from the cache

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.dtype == "float32" else getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        return cls(
            **{k: d[k] for k in ("dtype", "channels_last", "reason", "native_bf16", "probe", "cached") if k in d}
        )

    def summary(self) -> str:
        """A few words for the run's summary line: 'bfloat16, channels_last (measured: 1.9x fp32)'."""
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.dtype}, {layout} ({self.reason})"


# --- what the CPU has ------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own query (torch.cpu.get_capabilities, torch >= 2.6) joined
    with Linux's /proc/cpuinfo (x86 `flags`, aarch64 `Features`)."""
    flags: set[str] = set()
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            flags |= {k for k, v in caps().items() if v is True}
        except Exception:  # a query that fails on an exotic CPU is not a reason to stop a run
            pass
    info = _cpuinfo()
    flags |= set((info.get("flags") or info.get("Features") or "").split())
    return flags


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # x86 AVX512-BF16 and AMX; aarch64 BF16


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions; not oneDNN's answer, which is True wherever it can emulate."""
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


def machine_id() -> str:
    """The machine as the cache knows it: CPU model, its flags, torch, threads."""
    info = _cpuinfo()
    flags = sorted(cpu_flags())
    name = info.get("model name") or info.get("CPU part") or platform.processor() or platform.machine()
    family = f"{info.get('cpu family', '')}/{info.get('model', '')}"
    digest = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    return f"{name} [{family}] flags:{digest} torch:{torch.__version__} threads:{torch.get_num_threads()}"


def cpu_description() -> str:
    """'Intel(R) Xeon(R) Processor (avx512_bf16, amx_bf16)': the model and its bf16 flags, for figures."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in cpu_flags()]
    return f"{name} ({', '.join(have) or 'no AVX2/AVX-512'})"


# --- the probe -------------------------------------------------------------------------------------


Candidate = tuple[str, bool]  # (dtype name, channels_last)


def _name(c: Candidate) -> str:
    return ("bf16" if c[0] == "bfloat16" else "fp16" if c[0] == "float16" else "fp32") + (
        "_channels_last" if c[1] else ""
    )


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int,
    num_outputs: int,
    candidates: list[Candidate],
    budget: float = PROBE_BUDGET,
) -> dict[str, float]:
    """Images/s of a training step (forward under autocast, cross-entropy, backward, SGD step) of a
    copy of `model` on random input, for each candidate; the fastest of PROBE_STEPS steps counts
    (the least disturbed by anything else on the machine)."""
    figures: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x0 = torch.randn(batch, *input_shape)
        y = torch.randint(0, max(num_outputs, 1), (batch,))
        for dtype, cl in candidates:
            m = copy.deepcopy(model).train()
            fmt = torch.channels_last if cl else torch.contiguous_format
            m = m.to(memory_format=fmt)
            x = x0.contiguous(memory_format=fmt) if x0.dim() == 4 else x0
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
            amp = None if dtype == "float32" else getattr(torch, dtype)
            best, spent = float("inf"), 0.0
            for i in range(PROBE_STEPS + 1):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    out = m(x)
                loss = (
                    nn.functional.cross_entropy(out.float(), y)
                    if out.dim() == 2 and out.shape[1] > 1
                    else out.float().mean()
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                dt = time.perf_counter() - t
                if i > 0:  # the first step builds oneDNN's kernels for these shapes
                    best, spent = min(best, dt), spent + dt
                    if spent > budget:
                        break
                elif dt > 4 * budget:  # a step this slow: one warm-up is all the probe affords
                    best = dt
                    break
            figures[_name((dtype, cl))] = batch / best if best > 0 else float("inf")
    return figures


# --- the cache -------------------------------------------------------------------------------------


def cache_path() -> Path:
    """precision.json in cnnlab's cache folder ($CNNLAB_CACHE, else $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab)."""
    from cnnlab.data.normalize import cache_dir

    return cache_dir() / "precision.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError):  # missing or corrupt: measured again and rewritten
        return {}


def _write_cache(path: Path, key: str, figures: dict[str, float]) -> None:
    """Add one entry, atomically (a temporary file, then a rename); a read-only home is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path) or {"version": CACHE_VERSION, "entries": {}}
        if not isinstance(data.get("entries"), dict):
            data["entries"] = {}
        data["entries"][key] = figures
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError):  # a read-only home, or figures that do not serialise
        pass


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """One process at a time reads, probes and writes the cache: two runs started together would
    otherwise both probe (and get different figures for the same machine), and the second write would
    drop the first's entry. Best effort: where no lock can be taken (a read-only home, no fcntl), none is."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(f".{path.name}.lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield  # closing the file releases the lock


# --- the choice ------------------------------------------------------------------------------------


def model_signature(name: str, kwargs: dict[str, Any], outputs: int) -> str:
    """The model as the cache knows it: its name, its settings and its outputs."""
    return f"{name} {json.dumps(kwargs, sort_keys=True, default=str)} outputs {outputs}"


def for_model(
    name: str,
    kwargs: dict[str, Any],
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int,
    outputs: int,
    precision: str = "auto",
    channels_last: bool | str = "auto",
) -> Choice:
    """choose() on the CPU for a model built by create_model(name, **kwargs): what `cnnlab train` picks."""
    return choose(
        torch.device("cpu"),
        precision,
        channels_last,
        model=model,
        input_shape=input_shape,
        batch=batch,
        num_outputs=outputs,
        signature=model_signature(name, kwargs, outputs),
    )


def choose(
    device: torch.device,
    precision: str,
    channels_last: bool | str,
    *,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
    batch: int = 256,
    num_outputs: int = 10,
    signature: str = "",
    native: Callable[[], bool] | None = None,
    probe: Callable[..., dict[str, float]] | None = None,
    cache: Path | None = None,
) -> Choice:
    """The dtype and layout to train with. `precision` is auto | fp32 | bf16 | fp16 and
    `channels_last` true | false | auto; what is given explicitly is kept, `auto` is decided as the
    module says. `signature` names the model and its settings in the cache key. `native` (default
    cpu_has_native_bf16) and `probe` (default measure) are the two questions asked of the machine;
    tests force their answers."""
    fixed = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(precision)
    layout_auto = channels_last == "auto"
    if device.type != "cpu":
        return _off_cpu(device, fixed, layout_auto, channels_last)
    has_native = (native or cpu_has_native_bf16)()
    probe = probe or measure
    dtypes = [fixed] if fixed else (["float32", "bfloat16"] if has_native else ["float32"])
    layouts = [False, True] if layout_auto else [bool(channels_last)]
    if len(dtypes) == 1 and len(layouts) == 1:
        why = "given" if fixed else "auto: no native bf16 on this CPU (bf16 would be emulated)"
        return Choice(dtypes[0], layouts[0], why, native_bf16=has_native)
    if model is None or input_shape is None:  # nothing to time: the safe answer
        return Choice(
            dtypes[0] if fixed else "float32",
            True if layout_auto else bool(channels_last),
            "auto: not measured",
            native_bf16=has_native,
        )
    batch = probe_batch(batch, input_shape)
    key = _cache_key(signature, input_shape, batch, precision, channels_last)
    path = cache if cache is not None else cache_path()
    with _cache_lock(path):
        entries = _read_cache(path).get("entries")
        figures = entries.get(key) if isinstance(entries, dict) else None
        if isinstance(figures, dict):
            try:  # an entry missing a figure this decision reads (edited, or another version's) is measured again
                return _decide(figures, dtypes, layout_auto, fixed, has_native, cached=True)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                pass
        figures = _probe_in_stages(
            probe,
            model,
            tuple(input_shape),
            batch,
            num_outputs,
            dtypes,
            layout_auto,
            bool(channels_last) if not layout_auto else True,
        )
        _write_cache(path, key, figures)
    return _decide(figures, dtypes, layout_auto, fixed, has_native, cached=False)


def _off_cpu(device: torch.device, fixed: str | None, layout_auto: bool, channels_last: bool | str) -> Choice:
    """The choice on a GPU (or mps): nothing is timed there, bf16 where CUDA supports it."""
    dtype = fixed or ("bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32")
    return Choice(dtype, True if layout_auto else bool(channels_last), "given" if fixed else f"auto on {device.type}")


def _cache_key(
    signature: str, input_shape: tuple[int, ...], batch: int, precision: str, channels_last: bool | str
) -> str:
    """The cache entry of one decision: the machine, the model and what the probe runs."""
    return (
        f"{machine_id()} | {signature} | input {tuple(input_shape)} batch {batch} | "
        f"precision {precision} channels_last {channels_last}"
    )


def probe_batch(batch: int, input_shape: tuple[int, ...]) -> int:
    """The probe's batch: the run's, at most PROBE_BATCH images of 28x28 and as many pixels for larger
    images (224x224 photos: 4, the least), so a big model's probe stays a few seconds."""
    pixels = 1
    for d in tuple(input_shape)[1:]:
        pixels *= int(d)
    return max(1, min(batch, max(4, PROBE_BATCH * 28 * 28 // max(pixels, 1))))


def _pick_dtype(figures: dict[str, float], dtypes: list[str], layout: bool) -> str:
    """bf16 where its step is faster than fp32's by MARGIN, at `layout`; else the first (fp32)."""
    rates = [(figures[_name((d, layout))], d) for d in dtypes]
    if len(rates) == 2 and rates[1][0] * MARGIN > rates[0][0]:
        return rates[1][1]
    return rates[0][1]


def _probe_in_stages(
    probe: Callable[..., dict[str, float]],
    model: nn.Module,
    shape: tuple[int, ...],
    batch: int,
    outputs: int,
    dtypes: list[str],
    layout_auto: bool,
    layout: bool,
) -> dict[str, float]:
    """First the dtypes at channels_last (or the given layout), then, where the layout is auto, the
    winner in NCHW: three steps' worth of candidates, not four."""
    t = time.perf_counter()
    figures = dict(probe(model, shape, batch, outputs, [(d, layout) for d in dtypes])) if len(dtypes) > 1 else {}
    dtype = _pick_dtype(figures, dtypes, layout) if figures else dtypes[0]
    if layout_auto:
        figures.update(
            probe(model, shape, batch, outputs, [(dtype, c) for c in (True, False) if _name((dtype, c)) not in figures])
        )
    figures["probe_seconds"] = round(time.perf_counter() - t, 3)
    figures["probe_batch"] = batch
    return figures


def _decide(
    figures: dict[str, float], dtypes: list[str], layout_auto: bool, fixed: str | None, has_native: bool, cached: bool
) -> Choice:
    """The choice the probe's figures give: bf16 only where it beats fp32 by MARGIN; channels_last
    only where it beats NCHW by MARGIN (NCHW is what a model is without being asked)."""
    layout = True if layout_auto else None
    if len(dtypes) > 1:
        dtype = _pick_dtype(figures, dtypes, True if layout_auto else _given_layout(figures))
        ratio = (
            figures[_name(("bfloat16", True if layout_auto else _given_layout(figures)))]
            / figures[_name(("float32", True if layout_auto else _given_layout(figures)))]
        )
        why = f"auto: native bf16, measured {ratio:.2f}x fp32" + ("" if dtype == "bfloat16" else ", not faster")
    else:
        dtype = dtypes[0]
        why = "given" if fixed else "auto: no native bf16 on this CPU (bf16 would be emulated)"
    if layout_auto:
        cl, nchw = figures[_name((dtype, True))], figures[_name((dtype, False))]
        layout = cl * MARGIN > nchw
        why += f"; channels_last measured {cl / nchw:.2f}x NCHW"
    else:
        layout = _given_layout(figures)
    return Choice(dtype, bool(layout), why, native_bf16=has_native, probe=dict(figures), cached=cached)


def _given_layout(figures: dict[str, float]) -> bool:
    """The one layout a probe with a fixed layout measured."""
    return any(k.endswith("_channels_last") for k in figures)
