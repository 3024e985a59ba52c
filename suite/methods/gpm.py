"""GPM (Saha et al., ICLR 2021) on full weights: train the attention/MLP Linear weights of the chosen blocks,
projecting each weight's gradient against the basis of its old-task inputs. Biases stay frozen (a bias acts on
a constant feature that no basis can protect without freezing it).

GPM and PEGP are one implementation: the same bases (:class:`~suite.methods.projection.FeatureBasis`, same ``basis``
criterion) and the same :class:`~suite.methods.projection.Projector`, including ``project_update`` (default on, as for
PEGP), so a PEGP-vs-GPM gap on a board is about *what* is projected (PET parameters or full weights), never
about how.
"""
from __future__ import annotations

import torch
from torch import nn

from suite.methods.base import Option, RunContext
from suite.methods.pegp import ProjectedSteps
from suite.methods.projection import FeatureBasis, Projector
from suite.pet.base import GradSpace, PETConfig, select_sites


class GPM(ProjectedSteps):
    name = "gpm"
    needs_pet = False

    OPTIONS = {"threshold": Option(0.97, (float,), low=0, high=1, open_low=True),
               "basis": Option("gpm", (str,), choices=tuple(FeatureBasis.CRITERIA)),
               "project_update": Option(True, (bool,)), "towers": Option("vision", (str,), choices=("vision", "text", "both")),
               "layers": Option("all", (str,)), "roles": Option("q,k,v,out", (str,)),
               "collect_batches": Option(8, (int,), low=1)}

    def setup(self, ctx: RunContext) -> None:
        cfg = PETConfig(towers=self.options["towers"], layers=self.options["layers"])
        roles = [r.strip() for r in self.options["roles"].split(",")]
        self.linears: dict[str, nn.Linear] = {}
        for site in select_sites(ctx.backbone, cfg):
            for role in roles:
                parent, attr = site.linears[role]
                self.linears[f"{site.tower}.{site.index}.{role}"] = getattr(parent, attr)
        self.bases = {k: FeatureBasis(lin.in_features, self.options["threshold"], self.options["basis"])
                      for k, lin in self.linears.items()}
        for lin in self.linears.values():
            lin.weight.requires_grad_(True)
        spaces = [GradSpace(k, lin.weight, lin.in_features, "right") for k, lin in self.linears.items()]
        self.projector = Projector(spaces, self.bases, self.trainable(ctx), self.options["project_update"])
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
    def after_task(self, ctx: RunContext, t: int) -> None:
        self.collecting = True
        try:
            for batch in ctx.batches(ctx.task_data, self.options["collect_batches"]):
                ctx.task_loss(batch)
        finally:
            self.collecting = False
        self.grow_bases()
