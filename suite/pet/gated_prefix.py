"""Gated prefix (``gated-prefix``): learned key/value prefixes per layer in a separate, zero-gated attention
branch (LLaMA-Adapter's zero-init attention): ``tanh(g) · softmax(q P_kᵀ / sqrt(d_h)) P_v``. Not the standard
prefix-tuning of the literature (that is :mod:`suite.pet.prefix`, in the layer's own softmax); attaching it
changes nothing until ``g`` moves.

Gradient spaces (PEGP): ``P_k`` of head h acts on that head's queries (right side, ``d_h``); ``P_v`` of head h
acts, from the left, on the attention rows over the ``L`` slots. Both are exact (not only first-order) for old
inputs whose queries and attention rows lie in the bases' spans; the gate is frozen after task 1.
"""
from __future__ import annotations

from dataclasses import dataclass

from suite.models.backbone import Backbone
from suite.pet.base import PET, PETConfig, register_config
from suite.pet.kv import GatedKV, PrefixSlots, attach_slots, register_source


@dataclass
class GatedPrefixConfig(PETConfig):
    length: int = 8
    init_std: float = 0.5


class GatedPrefix(PrefixSlots, GatedKV):
    """Learned keys and values in a separate attention branch behind a zero-initialised gate."""


def attach(backbone: Backbone, cfg: GatedPrefixConfig) -> PET:
    return attach_slots(KIND, GatedPrefix, register_source, backbone, cfg)


KIND, CONFIG = "gated-prefix", GatedPrefixConfig
register_config(KIND, GatedPrefixConfig)
