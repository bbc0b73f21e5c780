"""torch.distributed for training: process group set-up from torchrun's environment, and the few collectives
the loop needs. One process without torchrun is a world of one and calls no collective."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from textseg.train.checkpoint import rng_state


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world`` processes, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1; nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return DistInfo(rank, world, torch.device("cuda", local))
    return DistInfo(rank, world, torch.device("cpu"))


def teardown() -> None:
    """Wait for every rank, then leave the process group (no-op on one process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`~textseg.train.checkpoint.rng_state`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [rng_state()]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states
