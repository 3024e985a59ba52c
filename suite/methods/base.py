"""The plug-in API for continual-learning methods: one base class with hooks the runner calls.

The runner owns the loop (data, optimiser, evaluation, checkpoints); a method only answers hooks:

=====================  =============================================================================
``setup(ctx)``          once, after the backbone and PET exist (``ctx.backbone``, ``ctx.pet``).
``trainable(ctx)``      the parameters to optimise (default: the PET's trainable ones; full fine-tuning: the backbone's);
                        asked after ``setup`` and again after every ``before_task``: each task's optimiser is built
                        over its answer then (a per-task-branch method opens a branch in ``before_task``).
``before_task(ctx, t)`` before training task ``t`` (``ctx.task_data``).
``loss(ctx, batch)``    the training loss of one batch (default: the task loss ``ctx.task_loss``).
``before_step(ctx)``    after ``backward``, before the optimiser: the gradient hook (PEGP projects here).
``after_step(ctx)``     after the optimiser step (PEGP re-projects the applied update here).
``after_task(ctx, t)``  after training task ``t``, before evaluation (PEGP grows its bases here).
``inference(ctx)``      before each evaluation after a task: ``None`` (the model answers as it stands) or an
                        :class:`~suite.models.inference.Inference` that routes each test image to parameters of
                        its own choosing and may own the scores; used for tasks, controls, probe and retrieval.
``state_dict()``        what a checkpoint must hold to resume (tensors, numbers, strings only).
``report()``            numbers for the record's efficiency section (e.g. basis bytes).
=====================  =============================================================================

Every method also declares its :attr:`Method.protocol` (task id at train / test, replay memory, routing
granularity, extra forward passes per step); the record keeps it (``method.protocol``) and a board refuses a
record whose protocol contradicts its own rules (``protocol:`` in ``leaderboards/<board>.yaml``).

Outside methods: subclass :class:`Method`, and expose it in your package's ``pyproject.toml`` under the
entry-point group ``clsuite.methods`` (``mymethod = "my_pkg.module:MyMethod"``); ``clsuite run --method
mymethod`` then finds it without touching this repository.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from suite.config.bounds import MAX_COUNT, show_value
from suite.config.sequences import TaskSequence
from suite.data.base import TaskData
from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.models.inference import Inference
from suite.pet.base import PET

Batch = dict[str, Any]  # images, labels, the task's data, caption tokens (suite.data.loading.Batches)


@dataclass
class RunContext:
    """What hooks may read: the model pieces, the current task, and helpers the runner provides."""

    backbone: Backbone
    pet: PET | None
    device: torch.device
    sequence: TaskSequence
    seed: int = 0
    task_index: int = -1
    task_data: TaskData | None = None
    task_loss: Callable[[Batch], torch.Tensor] | None = None
    batches: Callable[[TaskData, int], Iterator[Batch]] | None = None  # (task_data, n) -> training batches
    batch_size: int = 32  # of the batches ``batches`` yields
    # (logits, targets) of a batch under the current weights: class logits over the batch's task, or the
    # image-text logits of a cross-modal batch (LwF distils these)
    logits: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]] | None = None
    # the task loss from those (logits, targets): ``task_loss(b)`` is ``loss_of(*logits(b))``, so a method that needs
    # both the logits and the loss runs the model once
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Option:
    """One declared method option: its default, its type(s), and its range (numbers) or choices (strings);
    checked when the method is built, before any model exists. A value of another type, out of range or not
    among the choices is one line naming the method and the option."""

    default: Any
    types: tuple[type, ...]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    open_low: bool = False  # the range excludes ``low``

    def check(self, method: str, name: str, value: Any) -> None:
        if value is None and self.default is None:
            return
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        allowed = value is not None and (isinstance(value, self.types) if not isinstance(value, bool)
                                         else bool in self.types)
        if numeric and float in self.types:
            allowed = True
        if not allowed:
            raise ConfigError(f"method {method}: {name}: {show_value(value)} must be {self._what()}")
        if isinstance(value, str) and self.choices is not None and value not in self.choices:
            raise ConfigError(f"method {method}: {name}: {show_value(value)} must be {self._what()}")
        if numeric and not self._in_range(value):
            raise ConfigError(f"method {method}: {name}: {show_value(value)} must be {self._what()}")

    def _in_range(self, v: float) -> bool:
        if v != v or v in (float("inf"), float("-inf")):
            return False
        if isinstance(v, int) and abs(v) > (MAX_COUNT if int in self.types else sys.float_info.max):
            return False  # no integer is unbounded (suite.config.bounds): it would become a size or a float
        if self.low is not None and (v < self.low or (self.open_low and v == self.low)):
            return False
        return self.high is None or v <= self.high

    def _what(self) -> str:
        parts = []
        if int in self.types or float in self.types:
            high = self.high if self.high is not None or float in self.types else MAX_COUNT
            bounds = ([f"{'>' if self.open_low else '>='} {self.low:g}"] if self.low is not None else []) + \
                     ([f"<= {high if isinstance(high, int) else f'{high:g}'}"] if high is not None else [])
            parts.append(" ".join(["a number" if float in self.types else "an integer", " and ".join(bounds)]).strip())
        if self.choices:
            parts.append(" or ".join(repr(c) for c in self.choices))
        elif str in self.types:
            parts.append("a string")
        parts += [word for t, word in ((bool, "true or false"), (dict, "a mapping")) if t in self.types]
        return " or ".join(parts)


# What a method uses beyond the current batch, declared on its class and written into every record:
#   task_id_train  the task's identity selects parameters while training (a per-task prompt, slice or router), not
#                  only the boundary between tasks
#   task_id_test   the task's identity is given at test (never on the suite's boards)
#   memory         stored training examples of earlier tasks replayed later (0: rehearsal-free)
#   routing        how test images choose parameters: "none" (one model answers), "per-sample" (each image
#                  chooses), "per-batch" (one choice for a whole batch: reveals the task when a batch holds one task)
#   extra_forward  forward passes per training step beyond the one the loss needs (a frozen query pass, a teacher)
PROTOCOL_DEFAULTS: dict[str, Any] = {"task_id_train": False, "task_id_test": False, "memory": 0, "routing": "none",
                                     "extra_forward": 0}


class Method:
    """Base class: sequential fine-tuning of whatever ``trainable`` returns, with no protection."""

    name = "seq"
    trains = True          # False: the runner never builds an optimiser or calls training hooks
    needs_pet = True       # False: runs on the bare backbone (full fine-tuning, GPM on weights)
    text_changes = None    # None: decided by the PET's towers; True/False: forced
    # the PET forms the method's mechanism works on (None: any); another --pet is refused before anything is loaded
    pets: ClassVar[tuple[str, ...] | None] = None
    # the tracks the method applies to (None: every track); a sequence of another track is refused before loading
    tracks: ClassVar[tuple[str, ...] | None] = None

    OPTIONS: ClassVar[dict[str, Option]] = {}  # the method's options, declared with their types and ranges
    # what the method uses beyond the batch (PROTOCOL_DEFAULTS, whose keys it overrides); recorded as method.protocol
    PROTOCOL: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.option_defaults())
        if unknown:
            raise ConfigError(f"method {self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.option_defaults())}")
        for key, value in options.items():
            if key in self.OPTIONS:
                self.OPTIONS[key].check(self.name, key, value)
        self.options = {**self.option_defaults(), **options}

    @property
    def protocol(self) -> dict[str, Any]:
        """This method's protocol flags as the record states them (:data:`PROTOCOL_DEFAULTS` with the class's own
        :attr:`PROTOCOL`; a method whose flags depend on an option overrides this)."""
        return {**PROTOCOL_DEFAULTS, **self.PROTOCOL}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Every option with its default (from :attr:`OPTIONS`; an older plug-in may override this instead)."""
        return {k: copy.deepcopy(o.default) for k, o in cls.OPTIONS.items()}

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

    def inference(self, ctx: RunContext) -> Inference | None:
        """How the model answers the coming evaluation (after each task; the pretrained reference is never
        routed): ``None`` for the model as it stands, or an :class:`Inference` that chooses parameters per test
        image (``routing: per-sample`` in :attr:`PROTOCOL`) or owns the scores."""
        return None

    # state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {}


def snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]
