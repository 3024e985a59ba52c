"""L2P-style prompt pool (Wang et al., CVPR 2022): a pool of prompts with keys; each image picks the top-N
prompts whose keys best match its frozen-model feature, and a pull loss draws the chosen keys to the queries.

Prompts enter the vision blocks through the same gated key/value branch as prompt-tuning
(:mod:`suite.pet.kv`), with per-image prompts. The method owns its pool, so it runs without ``--pet``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from suite.methods.base import Method, Option, RunContext
from suite.models.inference import frozen
from suite.pet.base import MAX_TOKENS, PETConfig, select_sites
from suite.pet.kv import GatedKV, register_source


class PoolPrompt(GatedKV):
    def __init__(self, name: str, attn, norm: nn.Module, width: int, pool: int, length: int, top_n: int):
        super().__init__(name, attn, length * top_n)
        self.norm = [norm]
        self.width, self.plen = width, length
        self.tokens = nn.Parameter(torch.randn(pool, length, width) * 0.5)
        self.selection: torch.Tensor | None = None  # (B, top_n) indices into the pool

    def keys_values(self, attn) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.tokens[self.selection].flatten(1, 2)  # (B, top_n * length, width)
        normed = self.norm[0](chosen)
        b = normed.shape[0]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, self.length, self.num_heads, self.head_dim).transpose(1, 2)

        return heads(attn.k(normed)), heads(attn.v(normed))


class L2P(Method):
    name = "l2p"
    needs_pet = False
    text_changes = False
    # each image picks its prompts from a frozen-model query (one extra forward pass per step and per test batch)
    PROTOCOL = {"routing": "per-sample", "extra_forward": 1}

    OPTIONS = {"pool": Option(10, (int,), low=1), "length": Option(4, (int,), low=1, high=MAX_TOKENS),
               "top_n": Option(2, (int,), low=1), "layers": Option("0", (str,)), "pull_weight": Option(0.5, (float,), low=0)}

    def setup(self, ctx: RunContext) -> None:
        o = self.options
        self.layers: list[PoolPrompt] = []
        undo: list = []
        for site in select_sites(ctx.backbone, PETConfig(towers="vision", layers=o["layers"])):
            layer = PoolPrompt(f"l2p.vision.{site.index}", site.attn, site.block.ln_1, site.width, o["pool"], o["length"],
                               o["top_n"])
            register_source(site.attn, layer, undo)
            self.layers.append(layer.to(ctx.device))
        dim = int(ctx.backbone.model.visual.output_dim)
        self.keys = nn.Parameter(torch.randn(o["pool"], dim, device=ctx.device))
        self._querying = False
        self._pull: torch.Tensor | None = None
        ctx.backbone.model.visual.register_forward_pre_hook(self._select)

    def _select(self, visual: nn.Module, args: tuple) -> None:
        if self._querying:
            return
        query = frozen(args[0], "l2p-query", lambda: self._query(visual, args[0]))
        sim = query @ F.normalize(self.keys, dim=-1).T
        top = sim.topk(self.options["top_n"], dim=-1).indices
        for l in self.layers:
            l.selection = top
        self._pull = (1 - sim.gather(1, top)).mean()

    def _query(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The frozen model's normalised image feature: a no-grad pass with every gate at zero."""
        self._querying = True
        try:
            saved = [l.gate.data.clone() for l in self.layers]
            with torch.no_grad():
                for l in self.layers:
                    l.gate.data.zero_()
                    l.selection = torch.zeros(images.shape[0], self.options["top_n"], dtype=torch.long, device=images.device)
                query = F.normalize(visual(images), dim=-1)
                for l, g in zip(self.layers, saved):
                    l.gate.data.copy_(g)
        finally:
            self._querying = False
        return query

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        return [p for l in self.layers for p in l.parameters()] + [self.keys]

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        loss = ctx.task_loss(batch)
        return loss + self.options["pull_weight"] * self._pull if self._pull is not None else loss
