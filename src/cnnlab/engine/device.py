"""Device choice, CPU threads and the autocast context (the precision policy itself: engine/precision.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    available = {"cpu": True, "cuda": cuda, "mps": mps}
    kind = name.split(":")[0]
    if kind not in available:
        raise ConfigError(f"--device {name} is not a device; use auto, cpu, cuda or mps")
    if not available[kind]:
        raise ConfigError(f"--device {name}: no {kind} device is visible here; use --device auto or cpu")
    return torch.device(name)


def autocast_factory(
    device: torch.device, dtype: torch.dtype | None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument function giving a fresh autocast context (or a no-op one for fp32)."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


CPU_SYS = Path("/sys/devices/system/cpu")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


def physical_cores() -> int:
    """The cores this process may run on, a core's hyperthreads counted once (Linux's topology files;
    os.cpu_count() where there are none), capped by a container's CPU quota. More threads than cores
    slow small convolutions down."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            cores.add((CPU_SYS / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    n = len(cores)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, -(-int(quota) // int(period)))  # docker --cpus=2 on a large host: 2
    except (OSError, ValueError):
        pass
    return max(1, n)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads and return the number: `threads`; else OMP_NUM_THREADS where
    the user (or torchrun) set it; else the physical cores, shared among the processes torchrun starts
    on this machine (LOCAL_WORLD_SIZE) unless each is already pinned to its own cores."""
    n = threads
    if n is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
    if not n:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        try:
            pinned = len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)
        except AttributeError:
            pinned = False
        n = max(1, physical_cores() // (1 if pinned else max(1, local)))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
