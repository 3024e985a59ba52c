"""ZSCL-style distillation (Zheng et al., ICCV 2023): keep image and text features of reference data close to
the zero-shot model's. Reference images are rendered from the procedural world (never a task or control
set); reference texts are their captions.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from suite.data.embedded import reference_pairs
from suite.methods.base import Method, Option, RunContext


class ZSCL(Method):
    name = "zscl"
    PROTOCOL = {"extra_forward": 1}  # the current model on a batch of reference image-caption pairs, every step

    OPTIONS = {"weight": Option(1.0, (float,), low=0), "reference_size": Option(128, (int,), low=1),
               "batch": Option(32, (int,), low=1)}

    def setup(self, ctx: RunContext) -> None:
        images, captions = reference_pairs(self.options["reference_size"], ctx.backbone.image_size, ctx.seed)
        self.ref_images = images
        self.ref_tokens = ctx.backbone.tokenize(captions)
        self.gen = torch.Generator().manual_seed(ctx.seed)
        # the zero-shot model never changes: its features of the reference pairs are computed once, here, with the PET
        # as attached, instead of under swapped-in weights at every step
        with torch.no_grad():
            self.ref0 = self._features(ctx, torch.arange(len(self.ref_images)))

    def _features(self, ctx: RunContext, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bb = ctx.backbone
        img = F.normalize(bb.encode_image(bb.images_from_uint8(self.ref_images[idx.numpy()])), dim=-1)
        txt = F.normalize(bb.encode_text(self.ref_tokens[idx].to(ctx.device)), dim=-1)
        return img, txt

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        idx = torch.randperm(len(self.ref_images), generator=self.gen)[: self.options["batch"]]
        img0, txt0 = self.ref0[0][idx], self.ref0[1][idx]
        loss = ctx.task_loss(batch)
        img, txt = self._features(ctx, idx)
        distill = (1 - (img * img0).sum(-1)).mean() + (1 - (txt * txt0).sum(-1)).mean()
        return loss + self.options["weight"] * distill
