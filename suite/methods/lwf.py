"""LwF (Li & Hoiem, 2017): distil the previous model's logits on the current task's data."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from suite.methods.base import Method, Option, RunContext, snapshot
from suite.methods.common import weights_swapped


class LwF(Method):
    name = "lwf"
    PROTOCOL = {"extra_forward": 1}  # the previous model's logits on every batch

    OPTIONS = {"weight": Option(1.0, (float,), low=0), "temperature": Option(2.0, (float,), low=0, open_low=True)}

    def setup(self, ctx: RunContext) -> None:
        self.params = self.trainable(ctx)
        self.old: list[torch.Tensor] | None = None

    def before_task(self, ctx: RunContext, t: int) -> None:
        self.old = snapshot(self.params) if t > 0 else None

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        if self.old is None:
            return ctx.task_loss(batch)
        with torch.no_grad(), weights_swapped(self.params, self.old):  # first: swapping writes the weights
            old_logits, _ = ctx.logits(batch)
        logits, target = ctx.logits(batch)  # once: the task loss and the distillation share the forward pass
        loss = ctx.loss_of(logits, target)
        tau = self.options["temperature"]
        kd = F.kl_div(F.log_softmax(logits / tau, -1), F.softmax(old_logits / tau, -1), reduction="batchmean") * tau * tau
        return loss + self.options["weight"] * kd
