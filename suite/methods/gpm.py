"""GPM (Saha et al., ICLR 2021) on full weights: train the attention/MLP Linear weights of the chosen blocks,
projecting each weight's gradient against the basis of its old-task inputs. Biases stay frozen (a bias acts
on a constant feature that no basis can protect without freezing it). Shares PEGP's basis code.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..pet.base import PETConfig, select_sites
from ..projection import FeatureBasis
from .base import Method, RunContext


class GPM(Method):
    name = "gpm"
    needs_pet = False

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return {"threshold": 0.97, "towers": "vision", "layers": "all", "roles": "q,k,v,out", "collect_batches": 8}

    def setup(self, ctx: RunContext) -> None:
        cfg = PETConfig(towers=self.options["towers"], layers=self.options["layers"])
        roles = [r.strip() for r in self.options["roles"].split(",")]
        self.linears: dict[str, nn.Linear] = {}
        for site in select_sites(ctx.backbone, cfg):
            for role in roles:
                parent, attr = site.linears[role]
                self.linears[f"{site.tower}.{site.index}.{role}"] = getattr(parent, attr)
        self.bases = {k: FeatureBasis(lin.in_features, self.options["threshold"]) for k, lin in self.linears.items()}
        for lin in self.linears.values():
            lin.weight.requires_grad_(True)
        self.collecting = False
        self.tasks_done = 0
        for key, lin in self.linears.items():
            lin.register_forward_pre_hook(self._hook(key))

    @property
    def text_changes(self) -> bool:  # type: ignore[override]
        return self.options["towers"] in ("text", "both")

    def _hook(self, key: str):
        def pre(_module: nn.Module, args: tuple) -> None:
            if self.collecting:
                self.bases[key].observe(args[0])
        return pre

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        return [lin.weight for lin in self.linears.values()]

    @torch.no_grad()
    def before_step(self, ctx: RunContext) -> None:
        for key, lin in self.linears.items():
            if lin.weight.grad is not None:
                lin.weight.grad.copy_(self.bases[key].project(lin.weight.grad, "right"))

    @torch.no_grad()
    def after_task(self, ctx: RunContext, t: int) -> None:
        self.collecting = True
        try:
            for batch in ctx.batches(ctx.task_data, self.options["collect_batches"]):
                ctx.task_loss(batch)
        finally:
            self.collecting = False
        for b in self.bases.values():
            b.update()
        self.tasks_done += 1

    def report(self) -> dict[str, Any]:
        return {"basis_bytes": int(sum(b.nbytes for b in self.bases.values())),
                "basis_directions": int(sum(b.rank for b in self.bases.values()))}

    def state_dict(self) -> dict[str, Any]:
        return {"bases": {k: b.state_dict() for k, b in self.bases.items()}, "tasks_done": self.tasks_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, s in state["bases"].items():
            self.bases[k].load_state_dict(s)
        self.tasks_done = int(state["tasks_done"])
