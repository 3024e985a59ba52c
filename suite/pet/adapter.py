"""Adapter: a bottleneck MLP beside each transformer MLP (parallel adapter, AdaptFormer-style).

``mlp'(h) = mlp(h) + s · W_up [f(W_down [h; 1]); 1]`` — biases are stored as the last column of each
weight, i.e. a weight on a constant input feature 1. That keeps PEGP exact: the feature spaces are
``[h; 1]`` for ``W_down`` and ``[f(·); 1]`` for ``W_up``, so a projected bias update cannot move old outputs.
``W_up = 0`` at init, so attaching leaves the model unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone import Backbone
from ..projection import GradSpace
from .base import PET, PETConfig, PETLayer, replace_attr, select_sites, undo_all


@dataclass
class AdapterConfig(PETConfig):
    bottleneck: int = 16
    scale: float = 1.0


def _with_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


class AdapterMLP(PETLayer):
    borrowed = ("mlp",)
    def __init__(self, name: str, mlp: nn.Module, width: int, bottleneck: int, scale: float):
        super().__init__(name)
        self.mlp, self.scale = mlp, scale
        self.down = nn.Parameter(torch.empty(bottleneck, width + 1))
        nn.init.kaiming_uniform_(self.down[:, :width], a=math.sqrt(5))
        with torch.no_grad():
            self.down[:, width].zero_()
        self.up = nn.Parameter(torch.zeros(width, bottleneck + 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x1 = _with_one(h)
        hid = _with_one(F.gelu(x1 @ self.down.T))
        self.emit("down", x1)
        self.emit("up", hid)
        return self.mlp(h) + self.scale * (hid @ self.up.T)

    def grad_spaces(self) -> list[GradSpace]:
        return [GradSpace(f"{self.pet_name}.down", self.down, self.down.shape[1]),
                GradSpace(f"{self.pet_name}.up", self.up, self.up.shape[1])]


def attach(backbone: Backbone, cfg: AdapterConfig) -> PET:
    layers, undo = [], []
    for site in select_sites(backbone, cfg):
        layer = AdapterMLP(f"adapter.{site.tower}.{site.index}", site.mlp, site.width, cfg.bottleneck, cfg.scale)
        replace_attr(site.block, site.mlp_attr, layer, undo)
        layers.append(layer)
    return PET("adapter", cfg, layers, undo_all(undo))
