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

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import PET, PETConfig, register_config
from suite.pet.kv import ConcatKV, PrefixSlots, attach_slots, register_prefix


@dataclass
class PrefixConfig(PETConfig):
    length: int = 8
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 1:
            raise ConfigError(f"prefix length must be >= 1, got {self.length}")


class Prefix(PrefixSlots, ConcatKV):
    """Prefix-tuning: learned keys and values concatenated into the layer's own softmax."""


def attach(backbone: Backbone, cfg: PrefixConfig) -> PET:
    return attach_slots(KIND, Prefix, register_prefix, backbone, cfg)


KIND, CONFIG = "prefix", PrefixConfig
register_config(KIND, PrefixConfig)
