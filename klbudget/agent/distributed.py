"""Data-parallel training across processes (`torch.distributed`, gloo on CPU, nccl on CUDA).

Every process rolls out its own conversations with the same agent; after each backward the
gradients are averaged across processes, so the agents stay identical, and rank 0 writes the
one run folder. A process group comes from the environment a launcher such as `torchrun`
sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: `torchrun --nproc_per_node 2 -m klbudget
train ...`), or from :func:`launch`, which `klbudget train --processes N` uses. One
process needs none of this: :data:`SINGLE`.

What travels between processes: flat gradient buffers, a few scalars per update, and each
update's episode records as UTF-8 JSON in byte tensors (no pickles).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Group:
    """This process's rank among `world` processes (world 1: every call is a no-op)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and shows progress."""
        return self.rank == 0

    def mean_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average every parameter's gradient across processes, in one flat buffer."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum across processes (a copy; float64 for exact counts)."""
        out = values.detach().double().clone()
        if self.world > 1:
            dist.all_reduce(out)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def gather_json(self, obj: Any) -> list[Any]:
        """Every process's `obj` (JSON-serialisable), in rank order, on every process."""
        if self.world == 1:
            return [obj]
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([data.numel()]))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: data.numel()] = data
        parts = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return [
            json.loads(bytes(p[: int(s.item())].tolist()).decode())
            for p, s in zip(parts, sizes, strict=True)
        ]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Group()


def threads_per_process(processes: int) -> int:
    """CPU threads for each of `processes` processes sharing this machine's cores (at
    least one)."""
    return max(1, (os.cpu_count() or 1) // processes)


def from_env(device: str = "cpu") -> Group:
    """The process group the launcher's environment describes (SINGLE without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return Group(rank, world)


def close(group: Group) -> None:
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    fn(*args)


def launch(processes: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)` in `processes` fresh processes that form one group (spawn start method;
    `fn` must be importable). Raises if any of them fails."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(processes, _free_port(), fn, args), nprocs=processes, join=True)
