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

from ..models.backbone import Backbone
from .base import PET, PETConfig, layer_per_site, register_config, select_sites, undo_all
from .kv import GatedKV, PrefixSlots, register_source


@dataclass
class GatedPrefixConfig(PETConfig):
    length: int = 8
    init_std: float = 0.5


class GatedPrefix(PrefixSlots, GatedKV):
    def __init__(self, name: str, attn, length: int, init_std: float):
        super().__init__(name, attn, length)
        self._make_slots(attn, length, init_std)


def attach(backbone: Backbone, cfg: GatedPrefixConfig) -> PET:
    layers, undo = layer_per_site(select_sites(backbone, cfg), lambda site: GatedPrefix(
        f"gated-prefix.{site.tower}.{site.index}", site.attn, cfg.length, cfg.init_std), register_source)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "gated-prefix", GatedPrefixConfig
register_config(KIND, GatedPrefixConfig)
