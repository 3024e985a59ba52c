"""Attention with separate q/k/v/out Linear maps and slots for learned keys and values.

open_clip's blocks use ``nn.MultiheadAttention`` with one fused in-projection. :class:`SplitAttention` is a
drop-in replacement holding the same weights as four ``nn.Linear`` (so LoRA wraps q/k/v/out exactly as it
does in transformers' CLIP) and computing the same function. Two kinds of learned key/value slots attach:

- *prefixes* (prefix-tuning, Li & Liang 2021; the DualPrompt/PGP prefix): keys and values concatenated to the
  layer's own, in the same softmax — ``Attn(q, [P_k; K], [P_v; V])``; every token may attend to them (the
  causal mask gets leading zero columns);
- *gated sources* (LLaMA-Adapter's zero-init attention, Zhang et al. 2023): a separate branch
  ``tanh(g) · softmax(q P_kᵀ / sqrt(d_h)) P_v`` added to the output, ``g = 0`` at init, so attaching one
  changes nothing until training moves ``g``.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class KVSource(Protocol):
    def contribute(self, q: torch.Tensor, attn: "SplitAttention") -> torch.Tensor:
        """Given queries ``(B, H, N, d_h)``, return the branch's output ``(B, H, N, d_h)``."""


class KVPrefix(Protocol):
    def prefix(self, batch: int, attn: "SplitAttention") -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, H, L, d_h)`` to put before the layer's own."""

    def observe(self, q: torch.Tensor, weights: torch.Tensor, attn: "SplitAttention") -> None:
        """While features are collected: the queries and the attention weights ``(B, H, N, L)`` on its slots."""

    def collecting(self) -> bool:
        ...


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
        self.sources = nn.ModuleList()  # gated key/value branches (gated prefix/prompt), added by their PET
        self.prefixes = nn.ModuleList()  # concatenated key/value prefixes (prefix-tuning), added by their PET

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
        if len(self.prefixes):
            k, v, attn_mask = self._with_prefixes(q, k, v, attn_mask)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        for src in self.sources:
            out = out + src.contribute(q, self)
        b, _, n, _ = out.shape
        out = self.out(out.transpose(1, 2).reshape(b, n, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


    def _with_prefixes(self, q, k, v, attn_mask):
        kv = [src.prefix(q.shape[0], self) for src in self.prefixes]
        lengths = [pk.shape[2] for pk, _ in kv]
        k = torch.cat([pk for pk, _ in kv] + [k], dim=2)
        v = torch.cat([pv for _, pv in kv] + [v], dim=2)
        if attn_mask is not None:  # every token may attend to every prefix slot
            shape = (*attn_mask.shape[:-1], sum(lengths))
            lead = torch.ones(shape, dtype=torch.bool, device=attn_mask.device) if attn_mask.dtype == torch.bool \
                else torch.zeros(shape, dtype=attn_mask.dtype, device=attn_mask.device)
            attn_mask = torch.cat([lead, attn_mask], dim=-1)
        if any(src.collecting() for src in self.prefixes):
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            weights = torch.softmax(scores, dim=-1)
            start = 0
            for src, n in zip(self.prefixes, lengths):
                if src.collecting():
                    src.observe(q, weights[..., start:start + n], self)
                start += n
        return k, v, attn_mask


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
