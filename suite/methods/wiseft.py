"""WiSE-FT (Wortsman et al., 2022): after each task, interpolate the weights with the zero-shot model's.

``θ ← α θ + (1 - α) θ₀``; with a PET, ``θ₀`` is the PET at initialisation (which leaves the model exactly
zero-shot), so this is weight-space ensembling in the PET's space; training continues from the ensemble.
"""
from __future__ import annotations

import torch

from suite.methods.base import Method, Option, RunContext, snapshot


class WiSEFT(Method):
    name = "wiseft"

    OPTIONS = {"alpha": Option(0.5, (float,), low=0, high=1)}

    def setup(self, ctx: RunContext) -> None:
        self.params = self.trainable(ctx)
        self.zero_shot = snapshot(self.params)

    @torch.no_grad()
    def after_task(self, ctx: RunContext, t: int) -> None:
        a = float(self.options["alpha"])
        for p, z in zip(self.params, self.zero_shot):
            p.mul_(a).add_(z, alpha=1 - a)
