"""Where this process runs and who it is among its peers: the device, rank and world size (from torchrun, or
from SLURM under ``srun``), the features of the whole global batch, gradients averaged over processes, and peak
memory."""
from __future__ import annotations

import os
import re
import resource
from typing import MutableMapping

import torch
import torch.distributed as dist

from suite.errors import ConfigError


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,9],gpu1`` -> ``node03``), without calling ``scontrol``."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ConfigError(f"SLURM_JOB_NODELIST: cannot read {nodelist!r}")
    prefix, ranges = head.group(1), head.group(2)
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def adopt_slurm_environment(env: MutableMapping[str, str] = os.environ) -> None:
    """Under ``srun`` (several SLURM tasks, no torchrun): set torch's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` (the job's first host) and ``MASTER_PORT`` (from the job id, unless given) from SLURM's
    variables, as open_clip does, so ``srun python -m suite run ...`` runs data parallel across nodes. torchrun's
    own variables always win; a single task is left alone."""
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))


def node_count(env: MutableMapping[str, str] = os.environ) -> int:
    """Machines this run spans: SLURM's node count, or torchrun's world over its processes per node."""
    if env.get("SLURM_JOB_NUM_NODES") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_JOB_NUM_NODES"])
    world, local = int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    return max(1, world // max(1, local))


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
    torchrun or srun, ``auto`` and ``cuda`` mean this process's own GPU, ``cuda:$LOCAL_RANK``, made current."""
    adopt_slurm_environment()
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


__all__ = ["adopt_slurm_environment", "average_gradients", "first_host", "gather_features", "init_distributed",
           "mean_over_processes", "node_count", "peak_memory_mb", "rank_world", "resolve_device"]
