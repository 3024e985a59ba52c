"""Prefix-tuning (Li & Liang, 2021; the prefix of DualPrompt and PGP): learned keys and values per layer and
head, concatenated to the layer's own keys and values in the *same* softmax, ``Attn(q, [P_k; K], [P_v; V])``.
Attaching it changes the model's outputs (the prefix takes part of every token's attention): that is the
standard form. The gated variant that leaves outputs unchanged at attach is :mod:`suite.pet.gated_prefix`.

Gradient spaces (PEGP): ``P_k`` of head h acts on that head's queries (right side, ``d_h``): old logits
``q · P_kᵀ`` stay put iff ``ΔP_k`` is orthogonal to the old queries, and then the whole softmax is unchanged —
exact, not only first-order. ``P_v`` of head h acts, from the left, on the old attention weights over the ``L``
prefix slots: old outputs ``a ΔP_v`` vanish iff ``ΔP_v`` is orthogonal to the old weight rows (exact given
unchanged weights). The authors project the key prefixes only (``project_values=false`` in PEGP).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.backbone import Backbone
from ..projection import GradSpace
from .base import PET, register_config, PETConfig, select_sites, undo_all
from .kv import ConcatKV, register_prefix


@dataclass
class PrefixConfig(PETConfig):
    length: int = 8
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"prefix length must be >= 1, got {self.length}")


class Prefix(ConcatKV):
    def __init__(self, name: str, attn, length: int, init_std: float):
        super().__init__(name, attn, length)
        h, d = attn.num_heads, attn.head_dim
        self.pk = nn.Parameter(torch.randn(h, length, d) * init_std)
        self.pv = nn.Parameter(torch.randn(h, length, d) * init_std)

    def keys_values(self, attn) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pk, self.pv

    def observe(self, q: torch.Tensor, weights: torch.Tensor, attn) -> None:
        for h in range(self.num_heads):
            self.emit(f"pk.h{h}", q[:, h])
            self.emit(f"pv.h{h}", weights[:, h])

    def grad_spaces(self) -> list[GradSpace]:
        spaces = []
        for h in range(self.num_heads):
            spaces.append(GradSpace(f"{self.pet_name}.pk.h{h}", self.pk, self.head_dim, "right", index=h, role="key"))
            spaces.append(GradSpace(f"{self.pet_name}.pv.h{h}", self.pv, self.length, "left", index=h, role="value"))
        return spaces


def attach(backbone: Backbone, cfg: PrefixConfig) -> PET:
    layers, undo = [], []
    for site in select_sites(backbone, cfg):
        layer = Prefix(f"prefix.{site.tower}.{site.index}", site.attn, cfg.length, cfg.init_std)
        register_prefix(site.attn, layer, undo)
        layers.append(layer)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "prefix", PrefixConfig
register_config(KIND, PrefixConfig)
