"""Visual prompt tuning (VPT; Jia et al., ECCV 2022): learned tokens among the vision tower's tokens.

- ``depth: deep`` (VPT-deep): every selected block ``i`` has its own ``L`` prompt tokens ``P_i``, placed after the
  class token; their outputs are discarded before the next prompted block (as VPT-deep replaces them) and before
  pooling. What the image tokens see of ``P_i`` is then exactly keys ``W_k LN(P_i)`` and values
  ``W_v LN(P_i)`` in the block's own softmax, which is how it is computed here (no wasted work on prompt rows).
- ``depth: shallow`` (VPT-shallow): ``L`` tokens inserted before the first selected block and carried through
  every later block, removed before pooling.

Both change the model's outputs when attached (that is the published form; the zero-gated variant is
:mod:`suite.pet.gated_prompt`).

Gradient spaces (PEGP), per prompted block: ``P`` (``L x d``) acts, on the right, on the old image tokens'
queries pulled back through the key map (``W_k,hᵀ q_h``, every head) and, on the left, on their attention weights
over the ``L`` prompt slots (the value path). Not exact: LayerNorm's per-token Jacobian stands between ``ΔP`` and
the keys (see :mod:`suite.pet.gated_prompt`). For ``shallow`` only the first prompted block is covered; the prompt
tokens' hidden states in later blocks (which old image tokens also attend to) are not protected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import (
    PET,
    PETConfig,
    PETLayer,
    layer_per_site,
    pre_norm,
    register_config,
    replace_attr,
    select_sites,
    undo_all,
)
from suite.pet.kv import ConcatKV, PromptTokens, register_prefix

DEPTHS = ("deep", "shallow")


@dataclass
class VPTConfig(PETConfig):
    towers: str = "vision"
    length: int = 8
    depth: str = "deep"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.towers != "vision":
            raise ConfigError(f"vpt prompts the vision tower only (towers: vision), got {self.towers!r}; "
                             f"for the text tower use coop")
        if self.depth not in DEPTHS:
            raise ConfigError(f"vpt depth must be deep or shallow, got {self.depth!r}")
        if self.length < 1:
            raise ConfigError(f"vpt length must be >= 1, got {self.length}")


class DeepPrompt(PromptTokens, ConcatKV):
    """One block's prompts, seen by the block's tokens as keys/values through the frozen LN, ``W_k``, ``W_v``."""

    def __init__(self, name: str, attn, norm: nn.Module, width: int, length: int, init_std: float):
        super().__init__(name, attn, length)
        self._make_tokens(width, length, init_std, norm)


class ShallowPrompt(PromptTokens, PETLayer):
    """Wraps the vision trunk: inserts the prompt tokens after the class token before block ``first``."""

    borrowed = ("trunk",)

    def __init__(self, name: str, trunk: nn.Module, width: int, length: int, init_std: float, first: int):
        super().__init__(name)
        self.trunk, self.length, self.first = trunk, length, first
        self._make_tokens(width, length, init_std)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch_first = getattr(self.trunk, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for i, block in enumerate(self.trunk.resblocks):
            if i == self.first:
                p = self.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], p, x[:, 1:]], dim=1)
                if self._sink is not None:
                    self._observe_block(block, x)
            x = block(x, attn_mask=attn_mask) if batch_first else block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        x = torch.cat([x[:, :1], x[:, 1 + self.length:]], dim=1)
        return x if batch_first else x.transpose(0, 1)

    def _observe_block(self, block: nn.Module, x: torch.Tensor) -> None:
        attn = block.attn
        h = block.ln_1(x)
        q, k = attn.heads(attn.q(h)), attn.heads(attn.k(h))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim), dim=-1)
        rows = [0] + list(range(1 + self.length, x.shape[1]))  # the image tokens (prompt rows are not old outputs)
        self.observe(q[:, :, rows], weights[:, :, rows, 1:1 + self.length], attn)


def attach(backbone: Backbone, cfg: VPTConfig) -> PET:
    sites = select_sites(backbone, cfg)
    if cfg.depth == "deep":
        layers, undo = layer_per_site(sites, lambda site: DeepPrompt(
            f"vpt.vision.{site.index}", site.attn, pre_norm(site, "vpt"), site.width, cfg.length, cfg.init_std),
            register_prefix)
    else:
        layers, undo = [], []
        visual = getattr(getattr(backbone, "model", None), "visual", None)
        trunk = getattr(visual, "transformer", None)
        if trunk is None or not hasattr(trunk, "resblocks"):
            raise ConfigError("vpt needs an open_clip backbone (a vision transformer with resblocks)")
        layer = ShallowPrompt(f"vpt.vision.{sites[0].index}", trunk, sites[0].width, cfg.length, cfg.init_std,
                              sites[0].index)
        replace_attr(visual, "transformer", layer, undo)
        layers.append(layer)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "vpt", VPTConfig
register_config(KIND, VPTConfig)
