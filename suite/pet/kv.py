"""Learned key/value slots of attention layers: the gated branch (gated prefix and prompt), the slots in the
layer's own softmax (prefix-tuning, VPT-deep), and the two parameterisations with their PEGP spaces —
:class:`PrefixSlots` (keys and values learned directly) and :class:`PromptTokens` (tokens read through the
block's frozen LN and ``W_k``/``W_v``) — each written once and mixed into the forms that use it.

The gated branch:

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

from suite.errors import ConfigError
from suite.models.attention import SplitAttention
from suite.pet.base import PET, GradSpace, PETLayer, layer_per_site, select_sites, undo_all


class GatedKV(PETLayer):
    zero_means_identity = "gate"

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
        raise ConfigError(f"prefix/prompt tuning needs an open_clip backbone (got {type(attn).__name__})")
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
        raise ConfigError(f"{layer.pet_name.split('.')[0]} needs an open_clip backbone (got {type(attn).__name__})")
    attn.prefixes.append(layer)

    def remove() -> None:
        attn.prefixes = nn.ModuleList([s for s in attn.prefixes if s is not layer])

    undo.append(remove)


class PrefixSlots:
    """Mixin: learned keys and values per head, ``P_k, P_v`` (``H x L x d_h``), and their PEGP spaces — ``P_k`` of
    head h acts on that head's queries (right side), ``P_v`` on the attention weights over the slots (left)."""

    def __init__(self, name: str, attn: SplitAttention, length: int, init_std: float):
        super().__init__(name, attn, length)  # the attention-side layer it is mixed into (ConcatKV, GatedKV)
        self.pk = nn.Parameter(torch.randn(attn.num_heads, length, attn.head_dim) * init_std)
        self.pv = nn.Parameter(torch.randn(attn.num_heads, length, attn.head_dim) * init_std)

    def keys_values(self, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pk, self.pv

    def observe(self, q: torch.Tensor, weights: torch.Tensor, attn: SplitAttention) -> None:
        for h in range(attn.num_heads):
            self.emit(f"pk.h{h}", q[:, h])
            self.emit(f"pv.h{h}", weights[:, h])

    def grad_spaces(self) -> list[GradSpace]:
        heads, length, dim = self.pk.shape
        return [space for h in range(heads) for space in (
            GradSpace(f"{self.pet_name}.pk.h{h}", self.pk, dim, "right", index=h, role="key"),
            GradSpace(f"{self.pet_name}.pv.h{h}", self.pv, length, "left", index=h, role="value"))]


class PromptTokens:
    """Mixin: learned tokens ``p`` (``L x d``) read through a block's frozen ``LN`` and ``W_k``/``W_v``, and their PEGP
    spaces — the key side acts on the old queries pulled back through ``W_k`` (``W_k,hᵀ q_h``, every head), the
    value side on the attention weights over the ``L`` slots. Approximate: LayerNorm's per-token Jacobian stands
    between ``Δp`` and the keys, and these spaces leave it out."""

    def _make_tokens(self, width: int, length: int, init_std: float, norm: nn.Module | None = None) -> None:
        self.width = width
        self.norm = [norm]  # the block's frozen pre-attention LayerNorm, in a list so the PET does not own it
        self.tokens = nn.Parameter(torch.randn(length, width) * init_std)

    def keys_values(self, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm[0](self.tokens)
        heads = lambda x: x.view(len(self.tokens), attn.num_heads, attn.head_dim).transpose(0, 1)  # noqa: E731
        return heads(attn.k(normed)), heads(attn.v(normed))

    def observe(self, q: torch.Tensor, weights: torch.Tensor, attn: SplitAttention) -> None:
        wk = attn.k.weight.view(attn.num_heads, attn.head_dim, attn.embed_dim)
        self.emit("key", torch.einsum("bhnd,hdw->bhnw", q, wk))
        self.emit("value", weights)

    def grad_spaces(self) -> list[GradSpace]:
        return [GradSpace(f"{self.pet_name}.key", self.tokens, self.width, "right", role="key"),
                GradSpace(f"{self.pet_name}.value", self.tokens, len(self.tokens), "left", role="value")]


def attach_slots(kind: str, layer: type, register, backbone, cfg) -> PET:
    """Attach a learned-key/value PET (``layer(name, attn, length, init_std)``) to every selected block."""
    layers, undo = layer_per_site(select_sites(backbone, cfg), lambda site: layer(
        f"{kind}.{site.tower}.{site.index}", site.attn, cfg.length, cfg.init_std), register)
    return PET(kind, cfg, layers, undo_all(undo))
