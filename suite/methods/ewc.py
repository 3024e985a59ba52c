"""EWC (Kirkpatrick et al., 2017) on the trainable (PET) parameters: a diagonal-Fisher quadratic penalty.

The empirical Fisher of a task is the *mean* over the ``fisher_batches`` batches it is estimated on of the squared
gradients of the batch loss, so the penalty's scale is set by ``weight`` alone, not by how many batches were
used; Fishers of successive tasks add up (online EWC without decay).
"""
from __future__ import annotations

from typing import Any

import torch

from suite.methods.base import Method, Option, RunContext, snapshot


class EWC(Method):
    name = "ewc"

    OPTIONS = {"weight": Option(100.0, (float,), low=0), "fisher_batches": Option(4, (int,), low=1)}

    def setup(self, ctx: RunContext) -> None:
        self.params = self.trainable(ctx)
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.anchor: list[torch.Tensor] | None = None

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        loss = ctx.task_loss(batch)
        if self.anchor is None:
            return loss
        pen = sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))
        return loss + 0.5 * self.options["weight"] * pen

    def after_task(self, ctx: RunContext, t: int) -> None:
        task = [torch.zeros_like(p) for p in self.params]
        n = 0
        for batch in ctx.batches(ctx.task_data, self.options["fisher_batches"]):
            for p in self.params:
                p.grad = None
            ctx.task_loss(batch).backward()
            for f, p in zip(task, self.params):
                if p.grad is not None:
                    f.add_(p.grad.detach() ** 2)
            n += 1
        for f, tf in zip(self.fisher, task):
            f.add_(tf / max(1, n))
        for p in self.params:
            p.grad = None
        self.anchor = snapshot(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = list(state["fisher"]), state["anchor"]
