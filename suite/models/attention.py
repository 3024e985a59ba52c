"""Attention with separate q/k/v/out Linear maps and slots for learned key/value sources.

open_clip's blocks use ``nn.MultiheadAttention`` with one fused in-projection. :class:`SplitAttention` is a
drop-in replacement holding the same weights as four ``nn.Linear`` (so LoRA wraps q/k/v/out exactly as it
does in transformers' CLIP) and computing the same function. *Key/value sources* (prefix-tuning's learned
prefixes, prompt-tuning's learned tokens) add a gated attention branch over their own keys and values:

    out = Attn(q, K, V) + tanh(g) * softmax(q P_kᵀ / sqrt(d_h)) P_v

with ``g`` initialised to zero — the zero-init attention of LLaMA-Adapter (Zhang et al., 2023) — so that
attaching a source leaves the model's function unchanged until training moves ``g``.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class KVSource(Protocol):
    def contribute(self, q: torch.Tensor, attn: "SplitAttention") -> torch.Tensor:
        """Given queries ``(B, H, N, d_h)``, return the branch's output ``(B, H, N, d_h)``."""


class SplitAttention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        d, h = mha.embed_dim, mha.num_heads
        self.embed_dim, self.num_heads, self.head_dim = d, h, d // h
        self.batch_first = mha.batch_first
        self.q, self.k, self.v = (nn.Linear(d, d, bias=mha.in_proj_bias is not None) for _ in range(3))
        w = mha.in_proj_weight.detach()
        b = mha.in_proj_bias.detach() if mha.in_proj_bias is not None else None
        for i, lin in enumerate((self.q, self.k, self.v)):
            lin.weight.data.copy_(w[i * d:(i + 1) * d])
            if b is not None:
                lin.bias.data.copy_(b[i * d:(i + 1) * d])
        self.out = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        self.out.weight.data.copy_(mha.out_proj.weight.detach())
        if mha.out_proj.bias is not None:
            self.out.bias.data.copy_(mha.out_proj.bias.detach())
        self.sources = nn.ModuleList()  # learned key/value sources (prefix/prompt layers), added by their PET

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None, **_: object):
        if not self.batch_first:
            query = query.transpose(0, 1)
            key = key.transpose(0, 1) if key is not None else None
            value = value.transpose(0, 1) if value is not None else None
        key = query if key is None else key
        value = key if value is None else value
        q, k, v = self.heads(self.q(query)), self.heads(self.k(key)), self.heads(self.v(value))
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        for src in self.sources:
            out = out + src.contribute(q, self)
        b, _, n, _ = out.shape
        out = self.out(out.transpose(1, 2).reshape(b, n, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def split_attention_in(module: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` under ``module`` by an equivalent :class:`SplitAttention`."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, SplitAttention(child))
            count += 1
        else:
            count += split_attention_in(child)
    return count
