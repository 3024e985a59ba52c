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

import inspect
import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError

# Query x key lengths up to which attention on the CPU is two matmuls and a softmax: torch's fused CPU kernel
# costs about 3x more there (tiny CLIP, 17 tokens: 1.40 against 0.46 ms forward and backward, 2 threads; the
# performance issue's profile), and at these lengths the scores matrix it avoids is small.
SMALL_ATTENTION = 4096


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           dropout: float = 0.0) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(d_h) + mask) v``, as ``F.scaled_dot_product_attention`` computes it (a boolean
    mask keeps where True); short sequences on the CPU without dropout take the plain path (same function, sums
    in another order)."""
    if dropout or q.device.type != "cpu" or q.shape[-2] * k.shape[-2] > SMALL_ATTENTION:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1) @ v


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
    """Multi-head attention as four ``nn.Linear`` (q, k, v, out), built from ``nn.MultiheadAttention``
    (:meth:`from_mha`, open_clip up to 3.x) or from open_clip's own ``Attention`` class (:meth:`from_open_clip`,
    its development branch for 4.x), computing the same function and called the way the replaced module was
    (MHA: ``(query, key, value, need_weights=, attn_mask=)`` → ``(out, None)``; open_clip: ``(x, k_x=, v_x=,
    attn_mask=)`` → ``out``, batch first)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, out_bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = True,
                 returns_pair: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.batch_first, self.returns_pair = batch_first, returns_pair
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(kdim or dim, dim, bias=qkv_bias)
        self.v = nn.Linear(vdim or dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim, bias=out_bias)
        # open_clip's optional parts (identity / absent for nn.MultiheadAttention and for CLIP's usual configs)
        self.ln_q: nn.Module = nn.Identity()
        self.ln_k: nn.Module = nn.Identity()
        self.ln_inner: nn.Module = nn.Identity()
        self.out_drop: nn.Module = nn.Identity()
        self.head_scale: nn.Parameter | None = None
        self.attn_dropout = 0.0
        self.sources = nn.ModuleList()  # gated key/value branches (gated prefix/prompt), added by their PET
        self.prefixes = nn.ModuleList()  # concatenated key/value prefixes (prefix-tuning), added by their PET

    def _load(self, w_q, w_k, w_v, in_bias, out: nn.Linear) -> "SplitAttention":
        for lin, w in ((self.q, w_q), (self.k, w_k), (self.v, w_v)):
            lin.weight.data.copy_(w.detach())
        if in_bias is not None:
            for lin, b in zip((self.q, self.k, self.v), in_bias.detach().chunk(3)):
                lin.bias.data.copy_(b)
        self.out.weight.data.copy_(out.weight.detach())
        if out.bias is not None:
            self.out.bias.data.copy_(out.bias.detach())
        return self

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "SplitAttention":
        new = cls(mha.embed_dim, mha.num_heads, mha.in_proj_bias is not None, mha.out_proj.bias is not None,
                  mha.kdim, mha.vdim, mha.batch_first, returns_pair=True)
        if mha.in_proj_weight is not None:
            w = mha.in_proj_weight.chunk(3)
        else:
            w = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        new.attn_dropout = float(mha.dropout)
        return new._load(*w, mha.in_proj_bias, mha.out_proj)

    @classmethod
    def from_open_clip(cls, attn: nn.Module) -> "SplitAttention":
        """From open_clip's ``Attention`` (batch first, fused or separate in-projection, optional q/k norms,
        head scale and inner norm, which are kept). Scaled-cosine attention is refused: no PET here models it."""
        if getattr(attn, "logit_scale", None) is not None:
            raise ConfigError(f"{type(attn).__name__} with scaled cosine attention: the suite's attention-side PETs "
                              f"do not support it")
        fused = getattr(attn, "in_proj_weight", None)
        w = fused.chunk(3) if fused is not None else (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)
        dim = attn.num_heads * attn.head_dim
        new = cls(dim, attn.num_heads, attn.in_proj_bias is not None, attn.out_proj.bias is not None,
                  w[1].shape[1], w[2].shape[1], batch_first=True, returns_pair=False)
        new.ln_q, new.ln_k = attn.ln_q, attn.ln_k
        new.ln_inner = getattr(attn, "ln_inner", nn.Identity())
        new.out_drop = getattr(attn, "out_drop", nn.Identity())
        new.head_scale = getattr(attn, "head_scale", None)
        drop = getattr(attn, "attn_drop", None)
        new.attn_dropout = float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
        return new._load(*w, attn.in_proj_bias, attn.out_proj)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None,
                k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None, **_: object):
        key = k_x if key is None else key
        value = v_x if value is None else value
        if not self.batch_first:
            query = query.transpose(0, 1)
            key = key.transpose(0, 1) if key is not None else None
            value = value.transpose(0, 1) if value is not None else None
        key = query if key is None else key
        value = key if value is None else value
        q, k, v = self.heads(self.q(query)), self.heads(self.k(key)), self.heads(self.v(value))
        q, k = self.ln_q(q), self.ln_k(k)
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(q.dtype)
            if attn_mask.dim() == 3:  # (batch * heads, L, S), as nn.MultiheadAttention takes it
                attn_mask = attn_mask.view(q.shape[0], self.num_heads, *attn_mask.shape[1:])
        if len(self.prefixes):
            k, v, attn_mask = self._with_prefixes(q, k, v, attn_mask)
        out = attend(q, k, v, attn_mask, self.attn_dropout if self.training else 0.0)
        if self.head_scale is not None:
            out = out * self.head_scale
        for src in self.sources:
            out = out + src.contribute(q, self)
        b, _, n, _ = out.shape
        out = self.out_drop(self.out(self.ln_inner(out.transpose(1, 2).reshape(b, n, self.embed_dim))))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out, None) if self.returns_pair else out


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


def is_open_clip_attention(module: nn.Module) -> bool:
    """open_clip's own attention class (its 4.x development branch): known by its parts and its call, so the
    check needs neither that version installed nor its module path."""
    if isinstance(module, (nn.MultiheadAttention, SplitAttention)):
        return False
    parts = all(hasattr(module, a) for a in ("num_heads", "head_dim", "in_proj_bias", "ln_q", "ln_k"))
    if not parts or not isinstance(getattr(module, "out_proj", None), nn.Linear):
        return False
    return "k_x" in inspect.signature(type(module).forward).parameters


def split_attention_in(module: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` and open_clip ``Attention`` under ``module`` by an equivalent
    :class:`SplitAttention`."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, SplitAttention.from_mha(child))
            count += 1
        elif is_open_clip_attention(child):
            setattr(module, name, SplitAttention.from_open_clip(child))
            count += 1
        else:
            count += split_attention_in(child)
    return count
