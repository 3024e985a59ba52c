"""Adapter: a bottleneck MLP in parallel to a block's MLP (AdaptFormer-style, the default) or to its attention
(``position: attn``, whose input is the block's ``LN(x)``, as in the PEGP authors' ViT adapter).

``out'(h) = out(h) + s · W_up [f(W_down [h; 1]); 1]`` — with ``bias`` (default) the biases are stored as the last
column of each weight, i.e. a weight on a constant input feature 1. That keeps PEGP exact: the feature spaces are
``[h; 1]`` for ``W_down`` and ``[f(·); 1]`` for ``W_up``, so a projected bias update cannot move old outputs.
``W_up = 0`` at init, so attaching leaves the model unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import PET, GradSpace, PETConfig, PETLayer, check_width, register_config, replace_attr, select_sites, undo_all

POSITIONS = ("mlp", "attn")


@dataclass
class AdapterConfig(PETConfig):
    bottleneck: int = 16
    scale: float = 1.0
    position: str = "mlp"
    bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.position not in POSITIONS:
            raise ConfigError(f"adapter position must be mlp or attn, got {self.position!r}")
        if self.bottleneck < 1:
            raise ConfigError(f"adapter bottleneck must be >= 1, got {self.bottleneck}")


def _with_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


class Adapter(PETLayer):
    """Wraps a frozen module (the block's MLP or attention) and adds the bottleneck branch to its output."""

    borrowed = ("inner",)
    zero_means_identity = "up"

    def __init__(self, name: str, inner: nn.Module, width: int, bottleneck: int, scale: float, bias: bool):
        super().__init__(name)
        self.inner, self.scale, self.bias = inner, scale, bias
        extra = 1 if bias else 0
        self.down = nn.Parameter(torch.empty(bottleneck, width + extra))
        nn.init.kaiming_uniform_(self.down[:, :width], a=math.sqrt(5))
        with torch.no_grad():
            self.down[:, width:].zero_()
        self.up = nn.Parameter(torch.zeros(width, bottleneck + extra))

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        x1 = _with_one(h) if self.bias else h
        hid = F.gelu(x1 @ self.down.T)
        hid = _with_one(hid) if self.bias else hid
        self.emit("down", x1)
        self.emit("up", hid)
        return self.scale * (hid @ self.up.T)

    def forward(self, h: torch.Tensor, *args, **kwargs):
        out = self.inner(h, *args, **kwargs)
        if isinstance(out, tuple):  # attention modules return (output, weights)
            return (out[0] + self.branch(h),) + tuple(out[1:])
        return out + self.branch(h)


    def grad_spaces(self) -> list[GradSpace]:
        return [GradSpace(f"{self.pet_name}.down", self.down, self.down.shape[1]),
                GradSpace(f"{self.pet_name}.up", self.up, self.up.shape[1])]


def attach(backbone: Backbone, cfg: AdapterConfig) -> PET:
    sites = select_sites(backbone, cfg)
    for site in sites:  # all checked before any is wrapped, so a refusal leaves the backbone untouched
        check_width(KIND, "bottleneck", cfg.bottleneck, site.width, f"{site.tower}.{site.index}")
    layers, undo = [], []
    for site in sites:
        attr = site.mlp_attr if cfg.position == "mlp" else site.attn_attr
        layer = Adapter(f"adapter.{site.tower}.{site.index}", getattr(site.block, attr), site.width, cfg.bottleneck,
                        cfg.scale, cfg.bias)
        replace_attr(site.block, attr, layer, undo)
        layers.append(layer)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "adapter", AdapterConfig
register_config(KIND, AdapterConfig)
