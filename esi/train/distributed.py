"""Distributed helpers: which rank this process is (``torchrun`` sets the environment) and its device.

Single-process runs get a :class:`DistEnv` of world size 1 and never touch ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(kind: str, env: DistEnv) -> torch.device:
    """This process's device for a resolved ``kind`` (``cpu``/``cuda``, esi.model.device.resolve_device):
    under torchrun each process takes the GPU of its local rank."""
    if kind == "cuda":
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device(kind)
