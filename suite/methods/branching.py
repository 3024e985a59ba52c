"""What the per-task-branch methods share (InfLoRA, O-LoRA, SD-LoRA): branch 0 learns task 1, every later task opens
a new branch of the PET (:meth:`suite.pet.base.PET.open_branch`), which freezes the earlier ones; the record states
the PET's size after every task (branches, parameters, bytes). The methods differ in how a branch is initialised,
what trains in it, and the loss."""
from __future__ import annotations

from typing import Any

from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Method, RunContext
from suite.pet.base import PET


class PerTaskBranches(Method):
    """A branch per task on a PET that has branches (LoRA); refused in one line on any other PET."""

    pet: PET
    pets = ("lora",)  # the one form with per-task branches

    def setup(self, ctx: RunContext) -> None:
        if ctx.pet is None or not ctx.pet.supports_branches():
            kind = ctx.pet.kind if ctx.pet is not None else "none"
            raise ConfigError(f"method {self.name} grows a LoRA branch per task: give --pet lora (got {kind})")
        self.pet = ctx.pet

    def before_task(self, ctx: RunContext, t: int) -> None:
        while self.pet.branch_count() < t + 1:  # branch t learns task t (a resumed run has the earlier ones already)
            self.pet.open_branch()

    def current(self) -> list[dict[str, nn.Parameter]]:
        """The open branch of every layer, ``{"A": ..., "B": ...}``."""
        return [layer.branch_list()[-1] for layer in self.pet.pet_layers]

    def report(self) -> dict[str, Any]:
        trainable = sum(p.numel() for p in self.pet.parameters() if p.requires_grad)
        return {**self.pet.size_report(), "trainable_now": int(trainable)}


__all__ = ["PerTaskBranches"]
