"""The plug-in API for continual-learning methods: one base class with hooks the runner calls.

The runner owns the loop (data, optimiser, evaluation, checkpoints); a method only answers hooks:

=====================  =============================================================================
``setup(ctx)``          once, after the backbone and PET exist (``ctx.backbone``, ``ctx.pet``).
``trainable(ctx)``      the parameters to optimise (default: the PET's; full fine-tuning: backbone's).
``before_task(ctx, t)`` before training task ``t`` (``ctx.task_data``).
``loss(ctx, batch)``    the training loss of one batch (default: the task loss ``ctx.task_loss``).
``before_step(ctx)``    after ``backward``, before the optimiser: the gradient hook (PEGP projects here).
``after_step(ctx)``     after the optimiser step (PEGP re-projects the applied update here).
``after_task(ctx, t)``  after training task ``t``, before evaluation (PEGP grows its bases here).
``state_dict()``        what a checkpoint must hold to resume (tensors, numbers, strings only).
``report()``            numbers for the record's efficiency section (e.g. basis bytes).
=====================  =============================================================================

Outside methods: subclass :class:`Method`, and expose it in your package's ``pyproject.toml`` under the
entry-point group ``clsuite.methods`` (``mymethod = "my_pkg.module:MyMethod"``); ``clsuite run --method
mymethod`` then finds it without touching this repository.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class RunContext:
    """What hooks may read: the model pieces, the current task, and helpers the runner provides."""

    backbone: Any
    pet: Any | None
    device: torch.device
    sequence: Any
    seed: int = 0
    task_index: int = -1
    task_data: Any = None
    task_loss: Callable[[Any], torch.Tensor] | None = None
    batches: Callable[[Any, int], Any] | None = None  # (task_data, n) -> iterator of training batches
    batch_size: int = 32  # of the batches ``batches`` yields
    step: int = 0
    # (logits, targets) of a batch under the current weights: class logits over the batch's task, or the
    # image-text logits of a cross-modal batch (LwF distils these)
    logits: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None


class Method:
    """Base class: sequential fine-tuning of whatever ``trainable`` returns, with no protection."""

    name = "seq"
    trains = True          # False: the runner never builds an optimiser or calls training hooks
    needs_pet = True       # False: runs on the bare backbone (full fine-tuning, GPM on weights)
    text_changes = None    # None: decided by the PET's towers; True/False: forced

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.option_defaults())
        if unknown:
            raise ConfigError(f"method {self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.option_defaults())}")
        self.options = {**self.option_defaults(), **options}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return {}

    # hooks ------------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        pass

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        return [p for p in ctx.pet.parameters() if p.requires_grad] if ctx.pet is not None else []

    def before_task(self, ctx: RunContext, t: int) -> None:
        pass

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        return ctx.task_loss(batch)

    def before_step(self, ctx: RunContext) -> None:
        pass

    def after_step(self, ctx: RunContext) -> None:
        pass

    def after_task(self, ctx: RunContext, t: int) -> None:
        pass

    # state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {}


def param_names(module: nn.Module) -> dict[int, str]:
    """``id(param) -> qualified name`` inside ``module`` (for functional calls with other weights)."""
    return {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}


def snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]
