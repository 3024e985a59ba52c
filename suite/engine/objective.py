"""The training objective of each track: logits of a batch under the current weights, and the loss on them.

Classification (class- and domain-incremental tracks): image features against the class prompts of the batch's
task. Contrastive (cross-modal track): images against their captions, both directions; under torchrun every
process scores the whole global batch (:func:`~suite.engine.distributed.gather_features`).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F

from suite.engine.distributed import gather_features


class Objective:
    """``logits(batch) -> (logits, targets)`` and ``loss(batch)``; methods read both through their context."""

    def __init__(self, backbone, autocast: Callable[[], Any] | None = None, world: int = 1):
        self.backbone, self.autocast, self.world = backbone, autocast, world

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    def logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast() if self.autocast else nullcontext():
            return self._logits(batch)

    def _logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_of(*self.logits(batch))

    def loss_of(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)


class Classification(Objective):
    """Cross-entropy over the classes of the batch's task; a trainable text side is encoded afresh each step
    (gradients, and feature collection sees the text tower too)."""

    def __init__(self, backbone, evaluator, text_trains: Callable[[], bool], autocast=None, world: int = 1):
        super().__init__(backbone, autocast, world)
        self.evaluator, self.text_trains = evaluator, text_trains

    def _logits(self, batch):
        img = self._image_features(batch["images"])
        data = batch["data"]
        txt = self.evaluator.class_text_features(data.classnames, data.templates, fresh=self.text_trains())
        return self.backbone.logit_scale_value.float() * img @ txt.T, batch["labels"]


class Contrastive(Objective):
    """CLIP's symmetric image-caption loss over the global batch."""

    def _logits(self, batch):
        img = self._image_features(batch["images"])
        txt = F.normalize(self.backbone.encode_text(batch["tokens"]).float(), dim=-1)
        if self.world > 1:  # every process scores the whole global batch
            img, txt = gather_features(img), gather_features(txt)
        return self.backbone.logit_scale_value.float() * img @ txt.T, torch.arange(len(img), device=img.device)

    def loss_of(self, logits, target):
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        # the global-batch loss, with gradients through this process's features only: the gradients, averaged over
        # processes by the training loop, then sum to the one-process gradient
        return loss * self.world if self.world > 1 else loss


def make_objective(track: str, backbone, evaluator, text_trains: Callable[[], bool], autocast=None,
                   world: int = 1) -> Objective:
    if track == "cross-modal":
        return Contrastive(backbone, autocast, world)
    return Classification(backbone, evaluator, text_trains, autocast, world)


__all__ = ["Classification", "Contrastive", "Objective", "make_objective"]
