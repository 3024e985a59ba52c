"""Full fine-tuning: every backbone weight trains (no PET), sequentially."""
from __future__ import annotations

from torch import nn

from suite.methods.base import Method, RunContext


class FullFineTune(Method):
    name = "finetune"
    needs_pet = False
    text_changes = True

    def setup(self, ctx: RunContext) -> None:
        for p in ctx.backbone.parameters():
            p.requires_grad_(True)

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        return [p for p in ctx.backbone.parameters() if p.requires_grad]
