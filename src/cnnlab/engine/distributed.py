"""Several processes under torchrun: process-group set-up and the few collectives the engine uses.

`torchrun --nproc_per_node=N -m cnnlab train ...` starts N copies; each reads RANK, WORLD_SIZE and
LOCAL_RANK from its environment. With WORLD_SIZE unset or 1, `Dist()` is a single process and every
helper here is a no-op, so the engine has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cnnlab.errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only this process writes files and prints."""
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the processes (a copy; `t` itself is left alone)."""
        if not self.enabled:
            return t
        out = t.detach().clone().to(torch.float64 if t.is_floating_point() else torch.long)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(t.dtype)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def env_world() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None


def init_distributed(device: torch.device) -> Dist:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) when there is more than one process."""
    rank, world, local_rank = env_world()
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local_rank)


def shutdown(d: Dist, clean: bool = True) -> None:
    """Leave the process group; after a clean run, wait for every process first (rank 0 is still
    writing when the others finish, and gloo aborts a process whose peer has already left)."""
    if d.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
