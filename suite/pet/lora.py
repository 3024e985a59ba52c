"""LoRA (Hu et al., 2022): ``W x + (α/r) B A x`` on frozen Linear maps; ``B = 0`` at init.

Works on transformers' separate q/k/v/out Linear and on open_clip's fused attention, which the backbone has
already split into four Linear maps (:class:`~suite.models.attention.SplitAttention`). PEFT's LoRA would also
fit plain Linear layers, but not that fused in-projection, and PEGP needs the features entering ``A`` and
``B``; one small module serves every site.

Gradient spaces: ``A`` (r x d_in) acts on the layer inputs ``x``; ``B`` (d_out x r) acts on ``A x``.

Per-task branches (:meth:`~suite.pet.base.PETLayer.open_branch`): with branches ``(A_i, B_i)`` the layer computes
``W x + Σ_i s_i B_i A_i x`` with ``s_i = α/r`` unless a method sets :attr:`LoRALinear.branch_scales` (SD-LoRA's
learned, norm-divided magnitudes). A layer with one branch and no scales runs exactly the single-LoRA code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import PET, GradSpace, PETConfig, PETLayer, check_width, register_config, replace_attr, select_sites, undo_all

ATTN_ROLES = ("q", "k", "v", "out")
MLP_ROLES = ("fc1", "fc2")


@dataclass
class LoRAConfig(PETConfig):
    rank: int = 4
    alpha: float = 8.0
    targets: str = "q,k,v,out"  # any of q,k,v,out,fc1,fc2
    mlp: bool = False  # shorthand: also fc1,fc2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"lora rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"lora alpha must be a positive number, got {self.alpha!r}")


class LoRALinear(PETLayer):
    borrowed = ("base",)
    zero_means_identity = "B"
    def __init__(self, name: str, base: nn.Linear, rank: int, alpha: float):
        super().__init__(name)
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        # per-branch multipliers of ``B_i A_i`` (a method's, e.g. SD-LoRA): called with the layer, returns one scale per
        # branch (numbers or 0-d tensors); None: α/r for every branch
        self.branch_scales: Callable[["LoRALinear"], list] | None = None

    branch_params = ("A", "B")

    def init_branch(self) -> dict[str, nn.Parameter]:
        A = nn.Parameter(torch.empty_like(self.A))
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        return {"A": A, "B": nn.Parameter(torch.zeros_like(self.B))}

    def scales(self) -> list:
        return self.branch_scales(self) if self.branch_scales is not None else [self.scale] * len(self.branch_list())

    @staticmethod
    def _sum_branches(scaled: list, start: torch.Tensor | None = None) -> torch.Tensor:
        """``start + Σ s_i B_i A_i`` over ``(s_i, branch_i)`` pairs, added in order (``start`` None: the sum alone)."""
        out = start
        for s, br in scaled:
            term = s * (br["B"] @ br["A"])
            out = term if out is None else out + term
        return out

    def merged_weight(self) -> torch.Tensor:
        """``W + Σ_i s_i B_i A_i``, differentiable in every branch and scale."""
        if not self.branched and self.branch_scales is None:
            return torch.addmm(self.base.weight, self.B, self.A, alpha=self.scale)
        return self._sum_branches(list(zip(self.scales(), self.branch_list())), start=self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sink is None:
            # training and evaluation: one product with the merged weight. The step is dispatch-bound on the CPU
            # (issue 35's profile): the d_out x d_in weight gradient this costs is one large product, against the
            # four thin rank-r products per token of the low-rank form (the same map and gradients; sums in
            # another order)
            return F.linear(x, self.merged_weight(), self.base.bias)
        return self._forward_collecting(x)

    def _forward_collecting(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank form, emitting the features entering ``A`` and (one branch) ``B`` for PEGP's bases."""
        base = self.base
        self.emit("A", x)
        if self.branched or self.branch_scales is not None:
            return F.linear(x, self.merged_weight(), base.bias)
        flat = x.reshape(-1, x.shape[-1])
        mid = flat @ self.A.T
        self.emit("B", mid.view(*x.shape[:-1], self.rank))
        out = torch.addmm(base(flat), mid, self.B.T, alpha=self.scale)
        return out.view(*x.shape[:-1], out.shape[-1])

    def grad_spaces(self) -> list[GradSpace]:
        return [GradSpace(f"{self.pet_name}.A", self.A, self.A.shape[1]),
                GradSpace(f"{self.pet_name}.B", self.B, self.rank)]


def attach(backbone: Backbone, cfg: LoRAConfig) -> PET:
    roles = [r.strip() for r in cfg.targets.split(",") if r.strip()] + (list(MLP_ROLES) if cfg.mlp else [])
    bad = [r for r in roles if r not in ATTN_ROLES + MLP_ROLES]
    if bad:
        raise ConfigError(f"lora targets {bad} unknown; use {', '.join(ATTN_ROLES + MLP_ROLES)}")
    targets = []  # every target checked before any is replaced, so a refusal leaves the backbone untouched
    for site in select_sites(backbone, cfg):
        for role in dict.fromkeys(roles):
            parent, attr = site.linears[role]
            base, where = getattr(parent, attr), f"{site.tower}.{site.index}.{role}"
            if isinstance(base, LoRALinear):
                raise ConfigError(f"{where} already carries LoRA")
            check_width(KIND, "rank", cfg.rank, min(base.in_features, base.out_features), where)
            targets.append((parent, attr, base, where))
    layers, undo = [], []
    for parent, attr, base, where in targets:
        layer = LoRALinear(f"lora.{where}", base, cfg.rank, cfg.alpha)
        replace_attr(parent, attr, layer, undo)
        layers.append(layer)
    return PET(KIND, cfg, layers, undo_all(undo))


KIND, CONFIG = "lora", LoRAConfig
register_config(KIND, LoRAConfig)
