"""Where this process runs and who it is among its peers: the device, rank and world size (torchrun), the
features of the whole global batch, gradients averaged over processes, and peak memory."""
from __future__ import annotations

import os
import resource

import torch
import torch.distributed as dist

from suite.errors import ConfigError


def rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): NCCL on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` that exists. Under
    torchrun, ``auto`` and ``cuda`` mean this process's own GPU, ``cuda:$LOCAL_RANK``, made current."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"--device: {name!r}: the suite runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device: {name!r} but this machine has no CUDA device")
    if dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device: cuda:{dev.index} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(dev)
    return dev


def gather_features(local: torch.Tensor) -> torch.Tensor:
    """Features of every process's shard, in rank order; only this process's own rows carry gradients (as
    open_clip's non-local contrastive loss), so a contrastive loss over the result sees the global batch."""
    parts = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts)


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Data parallel: every parameter's gradient becomes the mean over processes (a missing one counts as 0)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def mean_over_processes(value: float, device: torch.device, world: int) -> float:
    """One number averaged over processes (one all-reduce)."""
    t = torch.tensor(value, device=device)
    dist.all_reduce(t)
    return float(t) / world


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


__all__ = ["average_gradients", "gather_features", "init_distributed", "mean_over_processes", "peak_memory_mb",
           "rank_world", "resolve_device"]
