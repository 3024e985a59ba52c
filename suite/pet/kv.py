"""The gated key/value branch shared by prefix-tuning and prompt-tuning (one implementation for both).

Each layer owns learned keys/values ``P_k, P_v`` (``H x L x d_h``, per head) and a gate ``g`` (zero at init):

    branch(q) = tanh(g) · softmax(q P_kᵀ / sqrt(d_h)) P_v

Prefix-tuning learns ``P_k, P_v`` directly; prompt-tuning learns tokens ``p`` and gets ``P_k = W_k LN(p)``,
``P_v = W_v LN(p)`` through the block's frozen maps. The branch emits what PEGP needs:
per head, the queries ``q_h`` (the space ``P_k`` acts on) and the attention rows ``a_h`` over the ``L`` slots
(the space ``P_v`` acts on, from the left: old outputs ``a_h P_v`` stay put iff ``a_h ΔP_v = 0``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.attention import SplitAttention
from .base import PETLayer


class GatedKV(PETLayer):
    def __init__(self, name: str, attn: SplitAttention, length: int):
        super().__init__(name)
        self.num_heads, self.head_dim, self.length = attn.num_heads, attn.head_dim, length
        self.gate = nn.Parameter(torch.zeros(()))

    def keys_values(self, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def contribute(self, q: torch.Tensor, attn: SplitAttention) -> torch.Tensor:
        pk, pv = self.keys_values(attn)  # (H, L, d_h), or (B, H, L, d_h) for per-sample sources
        if pk.dim() == 3:
            pk, pv = pk.unsqueeze(0), pv.unsqueeze(0)
        pk, pv = pk.expand(q.shape[0], -1, -1, -1), pv.expand(q.shape[0], -1, -1, -1)
        a = torch.softmax(torch.einsum("bhnd,bhld->bhnl", q, pk) / math.sqrt(self.head_dim), dim=-1)
        if self._sink is not None:
            self.observe(q, a, attn)
        return torch.tanh(self.gate) * torch.einsum("bhnl,bhld->bhnd", a, pv)

    def observe(self, q: torch.Tensor, a: torch.Tensor, attn: SplitAttention) -> None:
        raise NotImplementedError

    def fixed_after_first_task(self) -> list[nn.Parameter]:
        return [self.gate]


def register_source(attn: SplitAttention, layer: GatedKV, undo: list) -> None:
    if not isinstance(attn, SplitAttention):
        raise TypeError(f"prefix/prompt tuning needs an open_clip backbone (got {type(attn).__name__})")
    attn.sources.append(layer)

    def remove() -> None:
        kept = [s for s in attn.sources if s is not layer]
        attn.sources = nn.ModuleList(kept)

    undo.append(remove)


class ConcatKV(PETLayer):
    """Key/value slots in the layer's *own* softmax (prefix-tuning; VPT-deep's prompts as the image tokens see
    them): ``Attn(q, [P_k; K], [P_v; V])``. ``keys_values`` gives ``(H, L, d_h)``; while a collector listens,
    :meth:`observe` receives the queries and the attention weights on the ``L`` slots."""

    def __init__(self, name: str, attn: SplitAttention, length: int):
        super().__init__(name)
        self.num_heads, self.head_dim, self.length = attn.num_heads, attn.head_dim, length

    def keys_values(self, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prefix(self, batch: int, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.keys_values(attn)
        return pk.unsqueeze(0).expand(batch, -1, -1, -1), pv.unsqueeze(0).expand(batch, -1, -1, -1)

    def collecting(self) -> bool:
        return self._sink is not None

    def observe(self, q: torch.Tensor, weights: torch.Tensor, attn: SplitAttention) -> None:
        raise NotImplementedError


def register_prefix(attn: SplitAttention, layer: ConcatKV, undo: list) -> None:
    if not isinstance(attn, SplitAttention):
        raise TypeError(f"{layer.pet_name.split('.')[0]} needs an open_clip backbone (got {type(attn).__name__})")
    attn.prefixes.append(layer)

    def remove() -> None:
        attn.prefixes = nn.ModuleList([s for s in attn.prefixes if s is not layer])

    undo.append(remove)
