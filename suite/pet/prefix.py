"""Prefix-tuning (Li & Liang, 2021): learned key/value prefixes per layer, in a gated attention branch.

Gradient spaces (PEGP): ``P_k`` of head h acts on that head's queries (right side, ``d_h``);
``P_v`` of head h acts, from the left, on the attention rows over the ``L`` prefix slots.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.backbone import Backbone
from ..projection import GradSpace
from .base import PET, PETConfig, select_sites, undo_all
from .kv import GatedKV, register_source


@dataclass
class PrefixConfig(PETConfig):
    length: int = 8
    init_std: float = 0.5


class Prefix(GatedKV):
    def __init__(self, name: str, attn, length: int, init_std: float):
        super().__init__(name, attn, length)
        h, d = attn.num_heads, attn.head_dim
        self.pk = nn.Parameter(torch.randn(h, length, d) * init_std)
        self.pv = nn.Parameter(torch.randn(h, length, d) * init_std)

    def keys_values(self, attn) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pk, self.pv

    def observe(self, q: torch.Tensor, a: torch.Tensor, attn) -> None:
        for h in range(self.num_heads):
            self.emit(f"pk.h{h}", q[:, h])
            self.emit(f"pv.h{h}", a[:, h])

    def grad_spaces(self) -> list[GradSpace]:
        spaces = []
        for h in range(self.num_heads):
            spaces.append(GradSpace(f"{self.pet_name}.pk.h{h}", self.pk, self.head_dim, "right", extra={"index": h}))
            spaces.append(GradSpace(f"{self.pet_name}.pv.h{h}", self.pv, self.length, "left", extra={"index": h}))
        return spaces


def attach(backbone: Backbone, cfg: PrefixConfig) -> PET:
    layers, undo = [], []
    for site in select_sites(backbone, cfg):
        layer = Prefix(f"prefix.{site.tower}.{site.index}", site.attn, cfg.length, cfg.init_std)
        register_source(site.attn, layer, undo)
        layers.append(layer)
    return PET("prefix", cfg, layers, undo_all(undo))
