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

from ..errors import ConfigError
from ..models.backbone import Backbone
from .base import PET, PETConfig, layer_per_site, register_config, select_sites, undo_all
from .kv import ConcatKV, PrefixSlots, register_prefix


@dataclass
class PrefixConfig(PETConfig):
    length: int = 8
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 1:
            raise ConfigError(f"prefix length must be >= 1, got {self.length}")


class Prefix(PrefixSlots, ConcatKV):
    def __init__(self, name: str, attn, length: int, init_std: float):
        super().__init__(name, attn, length)
        self._make_slots(attn, length, init_std)


def attach(backbone: Backbone, cfg: PrefixConfig) -> PET:
    layers, undo = layer_per_site(select_sites(backbone, cfg), lambda site: Prefix(
        f"prefix.{site.tower}.{site.index}", site.attn, cfg.length, cfg.init_std), register_prefix)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "prefix", PrefixConfig
register_config(KIND, PrefixConfig)
