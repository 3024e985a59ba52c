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

from torch import nn

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import PET, PETConfig, layer_per_site, pre_norm, register_config, select_sites, undo_all
from suite.pet.kv import GatedKV, PromptTokens, register_source


@dataclass
class GatedPromptConfig(PETConfig):
    length: int = 8
    depth: str = "deep"  # deep: every selected layer; shallow: the first selected layer of each tower
    init_std: float = 0.5


class GatedPrompt(PromptTokens, GatedKV):
    def __init__(self, name: str, attn, norm: nn.Module, width: int, length: int, init_std: float):
        super().__init__(name, attn, length)
        self._make_tokens(width, length, init_std, norm)


def attach(backbone: Backbone, cfg: GatedPromptConfig) -> PET:
    if cfg.depth not in ("deep", "shallow"):
        raise ConfigError(f"gated-prompt depth must be deep or shallow, got {cfg.depth!r}")
    sites, seen = [], set()
    for site in select_sites(backbone, cfg):  # shallow: the first selected block of each tower only
        if cfg.depth == "deep" or site.tower not in seen:
            sites.append(site)
            seen.add(site.tower)
    layers, undo = layer_per_site(sites, lambda site: GatedPrompt(
        f"gated-prompt.{site.tower}.{site.index}", site.attn, pre_norm(site, "gated-prompt"), site.width, cfg.length,
        cfg.init_std), register_source)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "gated-prompt", GatedPromptConfig
register_config(KIND, GatedPromptConfig)
