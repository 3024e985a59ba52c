"""MagMax (Marczak et al., ECCV 2024): sequential fine-tuning, evaluated through a maximum-magnitude merge of the
task vectors.

Training is plain sequential fine-tuning: task ``t`` starts from the weights task ``t - 1`` ended with (the official
``finetune_splitted.py --sequential-finetuning`` loads ``finetuned_{t-1}``), never from a merged model. After each task
the task vector ``τ_t = θ_t - θ₀`` is taken (cumulative: ``θ₀`` is the start of the whole run, not of the task) and the
vectors seen so far are merged element-wise by maximum magnitude, sign kept, a later task winning a tie
(``torch.where(|τ_t| >= |m|, τ_t, m)``, official ``src/merging/task_vectors.py`` ``merge_max_abs``). The running merge
``m_t = where(|τ_t| >= |m_{t-1}|, τ_t, m_{t-1})`` equals that merge over ``τ_1..τ_t``, which the official
``merge_splitted.py`` (``evaluate_merged_fts``) evaluates after each task ``t``. The model evaluated is
``θ₀ + λ m_t`` with ``λ = 0.5`` (``scale``), the official coefficient for ``merge_max_abs``.

The merged weights answer through the method's :class:`~suite.models.inference.Inference` (one route: protocol
routing ``none``): the evaluator encodes images and texts inside :meth:`MergedWeights.using`, which puts
``θ₀ + λ m`` in place and the training weights back on exit, so training and the checkpoint keep the sequential
weights.

What "the weights" are (``weights`` option):

* ``pet`` (default): the PET's trainable parameters; ``θ₀`` is their values at attach (LoRA: ``B = 0`` and the
  random ``A``), so ``θ₀`` alone is the pretrained function for LoRA or adapters.
* ``full``: the backbone's weights, no PET (``--pet`` is then ignored, as for ``finetune``); ``θ₀`` is the pretrained
  model. ``towers`` picks the tower(s) that train (default ``vision``: the official freezes the text encoder and
  its zero-shot head, ``model.freeze_lang()``); the logit scale never trains (it is part of the official's frozen
  head, and the evaluator reads it outside the inference route).

Departures from the official code:

* with a PET the task vector lives in the PET's parameter space (LoRA's ``A`` and ``B`` are merged element-wise,
  each scaled by ``λ``), not in the space of the weights they produce: the paper merges full weights only;
* the official merges every float tensor of the image encoder's state dict; ``full`` merges the parameters that
  train (buffers and frozen weights have ``τ = 0``, so their merge is ``0`` and they stay pretrained, as there);
* training follows the suite's budget (optimiser, schedule, batches), not the official AdamW lr 1e-5 with
  gradient clipping at 1; a sequence without a ``magmax`` entry in ``pet_training`` gives ``weights: full`` the
  PET learning rate, far too high for full weights: pass the full fine-tuning rate (``--training lr=...``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Method, Option, RunContext
from suite.models.inference import Inference


def merge_max_magnitude(merged: torch.Tensor | None, tau: torch.Tensor) -> torch.Tensor:
    """The running maximum-magnitude merge: per element, ``tau`` where ``|tau| >= |merged|`` (a tie goes to the later
    task), else ``merged``; ``merged`` None (no task before): ``tau``."""
    if merged is None:
        return tau.clone()
    return torch.where(tau.abs() >= merged.abs(), tau, merged)


class MergedWeights(Inference):
    """Route 0 for every image: ``θ₀ + λ m`` put in place of the trained parameters for as long as the context
    lasts, the trained values restored on exit (nested uses share the outer swap)."""

    def __init__(self, params: list[nn.Parameter], theta0: list[torch.Tensor], merged: list[torch.Tensor], scale: float):
        self.params, self.theta0, self.merged, self.scale = params, theta0, merged, float(scale)
        self._stash: list[torch.Tensor] | None = None
        self._depth = 0

    @contextlib.contextmanager
    def using(self, route: int) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with torch.no_grad():
            if self._stash is None:
                self._stash = [torch.empty_like(p) for p in self.params]
            for p, s, z, m in zip(self.params, self._stash, self.theta0, self.merged):
                s.copy_(p)
                p.copy_(z).add_(m, alpha=self.scale)
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            with torch.no_grad():
                for p, s in zip(self.params, self._stash):
                    p.copy_(s)


class MagMax(Method):
    name = "magmax"

    OPTIONS = {"scale": Option(0.5, (float,), low=0, open_low=True),
               "weights": Option("pet", (str,), choices=("pet", "full")),
               "towers": Option("vision", (str,), choices=("vision", "text", "both"))}

    def __init__(self, **options: Any):
        super().__init__(**options)
        # another tower than the default is refused on a PET (a record's resolved options, default towers included,
        # rebuild the method)
        if self.options["towers"] != self.OPTIONS["towers"].default and self.options["weights"] != "full":
            raise ConfigError(f"method {self.name}: towers applies to weights: full (a PET's towers are the PET's own)")
        self.params: list[nn.Parameter] = []
        self.theta0: list[torch.Tensor] = []
        self.merged: list[torch.Tensor] | None = None
        self.tasks_merged = 0

    @property
    def needs_pet(self) -> bool:  # type: ignore[override]
        return self.options["weights"] == "pet"

    @property
    def text_changes(self) -> bool | None:  # type: ignore[override]
        return None if self.needs_pet else self.options["towers"] in ("text", "both")

    # the parameters that train, and so carry a task vector ------------------------------------------------------
    def _full_weights(self, ctx: RunContext) -> list[nn.Parameter]:
        towers = self.options["towers"]
        image = {id(p) for m in ctx.backbone.image_side() for p in m.parameters()}
        scale = getattr(getattr(ctx.backbone, "model", None), "logit_scale", None)
        out = []
        for p in ctx.backbone.parameters():
            if p is scale:
                continue
            if (id(p) in image and towers in ("vision", "both")) or (id(p) not in image and towers in ("text", "both")):
                out.append(p)
        return out

    def setup(self, ctx: RunContext) -> None:
        if self.needs_pet:
            self.params = [p for p in ctx.pet.parameters() if p.requires_grad]
        else:
            chosen = {id(p) for p in self._full_weights(ctx)}
            for p in ctx.backbone.parameters():
                p.requires_grad_(id(p) in chosen)
            self.params = [p for p in ctx.backbone.parameters() if id(p) in chosen]
        self.theta0 = [p.detach().clone() for p in self.params]

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        return list(self.params)

    @torch.no_grad()
    def after_task(self, ctx: RunContext, t: int) -> None:
        taus = [p.detach() - z for p, z in zip(self.params, self.theta0)]
        previous = self.merged if self.merged is not None else [None] * len(taus)
        self.merged = [merge_max_magnitude(m, tau) for m, tau in zip(previous, taus)]
        self.tasks_merged += 1

    def inference(self, ctx: RunContext) -> Inference | None:
        if self.merged is None:
            return None
        return MergedWeights(self.params, self.theta0, self.merged, self.options["scale"])

    def merged_weights(self) -> list[torch.Tensor]:
        """``θ₀ + λ m`` as new tensors (what :class:`MergedWeights` puts in place)."""
        if self.merged is None:
            return [z.clone() for z in self.theta0]
        return [z + self.options["scale"] * m for z, m in zip(self.theta0, self.merged)]

    # state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"theta0": self.theta0, "tasks_merged": self.tasks_merged}
        if self.merged is not None:
            state["merged"] = self.merged
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theta0 = list(state["theta0"])
        if [tuple(z.shape) for z in theta0] != [tuple(p.shape) for p in self.params]:
            raise ConfigError(f"method {self.name}: checkpoint θ₀ does not match the trained parameters")
        device = self.params[0].device if self.params else None
        self.theta0 = [z.to(device) for z in theta0]
        self.merged = [m.to(device) for m in state["merged"]] if "merged" in state else None
        self.tasks_merged = int(state["tasks_merged"])

    def report(self) -> dict[str, Any]:
        held = sum(z.numel() * z.element_size() for z in self.theta0)
        held += sum(m.numel() * m.element_size() for m in self.merged or [])
        return {"magmax_bytes": int(held), "magmax_tasks_merged": int(self.tasks_merged),
                "magmax_parameters": int(sum(p.numel() for p in self.params))}


__all__ = ["MagMax", "MergedWeights", "merge_max_magnitude"]
