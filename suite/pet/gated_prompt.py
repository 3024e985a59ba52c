"""Gated prompt (``gated-prompt``): learned tokens every selected layer's (deep) or the first selected layer's
(shallow) tokens attend to, read through the block's frozen ``LN`` and ``W_k``/``W_v``, in the zero-gated branch
of :mod:`suite.pet.kv` (attaching changes nothing). A suite variant, not VPT or CoOp as published (those are
:mod:`suite.pet.vpt` and :mod:`suite.pet.coop`). Prompts sit before every text token, so the text tower's causal
mask is respected.

Gradient spaces (PEGP): a prompt matrix ``p`` (``L x d``) acts, on the right, on the old queries pulled back
through the key map (``W_k,hᵀ q_h`` for every head h) and, on the left, on the attention rows over the ``L``
slots (the value path). Not exact, not even to first order: the keys are ``W_k LN(p)``, and LayerNorm's
Jacobian (per token, depending on ``p``) stands between ``Δp`` and ``Δk``, which these spaces leave out. The
invariance test (``tests/test_pegp.py``) measures what remains: old-task outputs still change, by more than
for the exact sites (LoRA, adapters, prefixes), yet at least 10x less than without projection.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.backbone import Backbone
from ..projection import GradSpace
from .base import PET, register_config, PETConfig, select_sites, undo_all
from .kv import GatedKV, register_source


@dataclass
class GatedPromptConfig(PETConfig):
    length: int = 8
    depth: str = "deep"  # deep: every selected layer; shallow: the first selected layer of each tower
    init_std: float = 0.5


class GatedPrompt(GatedKV):
    def __init__(self, name: str, attn, norm: nn.Module, width: int, length: int, init_std: float):
        super().__init__(name, attn, length)
        self.width = width
        self.norm = [norm]  # the block's frozen pre-attention LayerNorm, held in a list so the PET does not own it
        self.tokens = nn.Parameter(torch.randn(length, width) * init_std)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.length, self.num_heads, self.head_dim).transpose(0, 1)

    def keys_values(self, attn) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm[0](self.tokens)
        return self._heads(attn.k(normed)), self._heads(attn.v(normed))

    def observe(self, q: torch.Tensor, a: torch.Tensor, attn) -> None:
        wk = attn.k.weight.view(self.num_heads, self.head_dim, self.width)
        pulled = torch.einsum("bhnd,hdw->bhnw", q, wk)  # W_k,hᵀ q_h per head
        self.emit("key", pulled)
        self.emit("value", a)

    def grad_spaces(self) -> list[GradSpace]:
        return [GradSpace(f"{self.pet_name}.key", self.tokens, self.width, "right", role="key"),
                GradSpace(f"{self.pet_name}.value", self.tokens, self.length, "left", role="value")]


def attach(backbone: Backbone, cfg: GatedPromptConfig) -> PET:
    if cfg.depth not in ("deep", "shallow"):
        raise ValueError(f"gated-prompt depth must be deep or shallow, got {cfg.depth!r}")
    layers, undo, seen = [], [], set()
    for site in select_sites(backbone, cfg):
        if cfg.depth == "shallow" and site.tower in seen:
            continue
        seen.add(site.tower)
        norm = getattr(site.block, "ln_1", None)
        if norm is None:
            raise TypeError("gated-prompt needs an open_clip backbone (block without ln_1)")
        layer = GatedPrompt(f"gated-prompt.{site.tower}.{site.index}", site.attn, norm, site.width, cfg.length, cfg.init_std)
        register_source(site.attn, layer, undo)
        layers.append(layer)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "gated-prompt", GatedPromptConfig
register_config(KIND, GatedPromptConfig)
