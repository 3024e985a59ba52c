"""Training one task: the optimiser loop around a method's hooks (loss, before_step, after_step)."""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from suite.config.train import TrainConfig, make_optimizer, make_scheduler
from suite.engine.distributed import average_gradients, mean_over_processes
from suite.errors import SuiteError
from suite.methods import Method, RunContext

# Offset of the seeds of batches a method draws itself (ctx.batches: PEGP's basis collection, EWC's Fisher),
# so they never coincide with the training batches of the same task.
METHOD_BATCHES = 10_000


class TrainingFailed(SuiteError, RuntimeError):
    """A task failed (NaN loss, exception); earlier tasks' results are already on disk."""


def task_seed(seed: int, t: int) -> int:
    """The seed of task ``t``'s randomness: a function of (seed, task) alone, so a resumed run continues exactly."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{t}".encode()).digest()[:4], "little")


def steps_for(train: TrainConfig, n_train: int) -> int:
    """Training steps of a task: ``iterations``, or ``epochs`` passes over its ``n_train`` images."""
    if train.epochs:
        return train.epochs * -(-n_train // train.batch_size)
    return train.iterations


def train_steps(method: Method, ctx: RunContext, params: list[torch.nn.Parameter], batches: Iterable[dict[str, Any]],
                steps: int, train: TrainConfig, where: str, world: int = 1, cross_modal: bool = False,
                progress: bool = False, on_step: Callable[[int, float, float], None] | None = None) -> float | None:
    """``steps`` optimiser steps over ``batches``; returns the last loss (the mean over processes under
    torchrun). A non-finite loss or parameter stops the task with :class:`TrainingFailed` naming ``where``.
    ``on_step(i, loss, lr)`` is told each step's loss and the learning rate it stepped with (it only reads)."""

    opt = make_optimizer(params, train)
    sched = make_scheduler(opt, steps, train.warmup, train.schedule)
    ctx.backbone.train(False)  # frozen backbone statistics; PETs have no train/eval difference
    last = None
    bar = tqdm(batches, total=steps, leave=False, desc=f"train {where}", disable=not progress)
    for i, batch in enumerate(bar):
        opt.zero_grad(set_to_none=True)
        loss = method.loss(ctx, batch)
        if not torch.isfinite(loss):
            raise TrainingFailed(f"task {where} step {i}: loss is {float(loss.detach())}")
        loss.backward()
        if world > 1:
            average_gradients(params, world)
        method.before_step(ctx)
        opt.step()
        method.after_step(ctx)
        lr = float(opt.param_groups[0]["lr"])  # the rate this step used (the scheduler moves it next)
        sched.step()
        last = float(loss.detach())
        bar.set_postfix(loss=f"{last:.3f}")
        if on_step is not None:
            on_step(i, last, lr)
    if world > 1 and last is not None:  # the final loss as the mean over processes, one reduction per task
        last = mean_over_processes(last, ctx.device, world) / (world if cross_modal else 1)
    if any(not torch.isfinite(p).all() for p in params):
        raise TrainingFailed(f"task {where}: parameters became non-finite")
    return last


__all__ = ["METHOD_BATCHES", "TrainingFailed", "steps_for", "task_seed", "train_steps"]
