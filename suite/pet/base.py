"""What every PET shares (the HF PEFT shape): a config, layer modules, and an ``attach`` that injects them.

A PET layer *declares* the gradient spaces of its parameters (:class:`GradSpace`) and
*emits* the features each space acts on through :meth:`PETLayer.emit` when a collector is listening. It never
projects anything itself: methods such as PEGP own the bases and the projection, so every PET is projected
by the same code.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Callable, ClassVar

import torch
from torch import nn

from suite.config.bounds import MAX_COUNT, finite_number, show_value
from suite.errors import ConfigError
from suite.models.backbone import TOWERS, Backbone, BlockSite

Sink = Callable[[str, torch.Tensor], None]


@dataclass
class GradSpace:
    """One projected gradient: ``param``'s gradient acts on the features of ``key`` along ``side``.

    The feature axis is the last (``right``) or first (``left``) axis of the gradient (of its slice
    ``param[index]`` when ``index`` is set); ``dim`` is that axis' size. A PET layer lists its spaces and feeds
    their features; it never projects by itself.
    """

    key: str
    param: torch.nn.Parameter
    dim: int
    side: str = "right"
    index: int | None = None
    role: str | None = None  # "key" / "value" for attention prefixes and prompts (PEGP may skip value spaces)

    def pick(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.index is None else t[self.index]

# Learned tokens per layer (prompt, prefix, context length): far above any published setting (PEGP's code uses
# 5-16), so a typo cannot allocate gigabytes. Widths (LoRA rank, adapter bottleneck) are bounded by the layer
# they attach to, which :func:`check_width` checks at attach, before any parameter is allocated.
MAX_TOKENS = 256
INT_RANGES = {"length": (1, MAX_TOKENS), "rank": (1, None), "bottleneck": (1, None), "jacobian_rows": (0, None)}


@dataclass
class PETConfig:
    """Options every PET has: which tower(s) and which block indices (``"all"``, ``"0-3"``, ``"0,2,5"``)."""

    # the tracks the PET can learn on (None: every track) and why not the others; a run of another track is
    # refused before anything is built, never failing at its first step
    tracks: ClassVar[tuple[str, ...] | None] = None
    tracks_why: ClassVar[str] = ""

    towers: str = "both"
    layers: str = "all"

    def __post_init__(self) -> None:
        self.tower_list()
        spec = str(self.layers).strip()
        if not re.fullmatch(r"all|first:\d+|\d+(-\d+)?(,\d+(-\d+)?)*", spec):
            raise ConfigError(f"layers must be all, first:K, or indices like 0-3 or 0,2,5; got {self.layers!r}")
        name = next((k for k, c in _CONFIGS.items() if c is type(self)), type(self).__name__)
        for lo, hi in re.findall(r"(\d+)-(\d+)", spec):  # a backwards range selects nothing: never what was meant
            if int(lo) > int(hi):
                raise ConfigError(f"{name} layers: the range {lo}-{hi} is backwards (it selects no block); write {hi}-{lo}")
        if spec.startswith("first:") and int(spec[6:]) == 0:
            raise ConfigError(f"{name} layers: first:0 selects no block")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Every int option is an integer in its range (:data:`INT_RANGES`); every float option a finite number."""
        name = next((k for k, c in _CONFIGS.items() if c is type(self)), type(self).__name__)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                lo, hi = INT_RANGES.get(f.name, (0, None))
                hi = MAX_COUNT if hi is None else hi  # no integer is unbounded (suite.config.bounds)
                if not isinstance(value, int) or isinstance(value, bool) or value < lo or value > hi:
                    bound = f"from {lo} to {hi}"
                    raise ConfigError(f"{name} {f.name} must be an integer {bound}, got {show_value(value)}")
            elif f.type == "float":
                finite_number(value, f"{name} {f.name}")

    def tower_list(self) -> list[str]:
        if self.towers == "both":
            return list(TOWERS)
        if self.towers not in TOWERS:
            raise ConfigError(f"towers must be vision, text or both, got {self.towers!r}")
        return [self.towers]

    def layer_ids(self, n: int) -> list[int]:
        """Block indices: ``"all"``, ``"first:K"`` (the first K blocks, fewer if the tower has fewer), or ranges
        and lists such as ``"0-3"``, ``"0,2,5"``."""
        spec = str(self.layers).strip()
        if spec == "all":
            return list(range(n))
        if spec.startswith("first:"):
            return list(range(min(n, int(spec.split(":", 1)[1]))))
        ids: list[int] = []
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ConfigError(f"layers {bad} out of range 0..{n - 1}")
        return sorted(set(ids))

    @classmethod
    def from_dict(cls, options: dict) -> "PETConfig":
        """Build from options; ``preset: pegp-official`` fills in the shape of the PEGP authors' code for this
        PET (:data:`OFFICIAL_SHAPES`), under any option given explicitly."""
        options = dict(options)
        preset = options.pop("preset", None)
        if preset is not None:
            kind = next((k for k, c in _CONFIGS.items() if c is cls), None)
            if preset != "pegp-official" or kind not in OFFICIAL_SHAPES:
                raise ConfigError(f"{cls.__name__}: preset {preset!r} unknown for this PET (known: pegp-official "
                                 f"for {', '.join(OFFICIAL_SHAPES)})")
            options = {**OFFICIAL_SHAPES[kind], **options}
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**options)

    def to_dict(self) -> dict:
        return asdict(self)


# The PET shapes of the PEGP authors' released code (shared/design/pegp.md): adapter parallel to attention,
# bottleneck 5, no bias, blocks 0-4; LoRA rank 5 on the attention's query/key/value maps of blocks 0-4 (they use
# one A for the fused qkv; here q, k and v each have their own); prefixes of length 5 in blocks 0-4; CLIP: one
# shallow visual prompt of 10 tokens, CoOp contexts of 16 tokens. Vision tower only.
OFFICIAL_SHAPES: dict[str, dict] = {
    "adapter": {"towers": "vision", "layers": "first:5", "position": "attn", "bottleneck": 5, "bias": False},
    "lora": {"towers": "vision", "layers": "first:5", "rank": 5, "targets": "q,k,v"},
    "prefix": {"towers": "vision", "layers": "first:5", "length": 5},
    "vpt": {"towers": "vision", "depth": "shallow", "length": 10},
    "coop": {"towers": "text", "length": 16, "init": "random"},
}
_CONFIGS: dict[str, type] = {}  # kind -> config class, filled by register_config


def register_config(kind: str, cls: type) -> type:
    _CONFIGS[kind] = cls
    return cls


def select_sites(backbone: Backbone, cfg: PETConfig) -> list[BlockSite]:
    sites: list[BlockSite] = []
    for tower in cfg.tower_list():
        blocks = backbone.blocks(tower)
        sites.extend(blocks[i] for i in cfg.layer_ids(len(blocks)))
    return sites


def zero_and_finite(zero: torch.Tensor, *others: torch.Tensor) -> bool:
    """``zero`` is all zeros and every tensor is finite (``0 · x`` is an exact zero only for finite ``x``)."""
    with torch.no_grad():
        return not bool(zero.any()) and all(bool(torch.isfinite(t).all()) for t in (zero, *others))


class PETLayer(nn.Module):
    """Base of every PET layer: a name, declared gradient spaces, and feature emission.

    ``borrowed`` names child modules that belong to the frozen backbone (the wrapped Linear or MLP): they are
    not PET parameters, and attribute look-ups the layer does not answer are passed on to them, so code that
    reads e.g. ``mlp.c_fc`` or ``q.weight`` through the wrapper keeps working.
    """

    borrowed: tuple[str, ...] = ()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            for b in type(self).borrowed:
                inner = self._modules.get(b)
                if inner is not None and name != b:
                    return getattr(inner, name)
            raise

    def __init__(self, name: str):
        super().__init__()
        self.pet_name = name
        self._sink: Sink | None = None

    def emit(self, key: str, feats: torch.Tensor) -> None:
        if self._sink is not None:
            self._sink(f"{self.pet_name}.{key}", feats)

    def grad_spaces(self) -> list[GradSpace]:
        return []

    # The parameter whose zeros make the layer add an exact zero to what it wraps (LoRA's ``B``, an adapter's ``up``,
    # a gate); None where no parameter does.
    zero_means_identity: str | None = None

    def is_identity(self) -> bool:
        """Whether the layer, as its parameters are now, adds an exact zero to what it wraps (its
        ``zero_means_identity`` parameter is all zeros and every parameter of its own is finite), so the model
        computes the pretrained function bit for bit. The runner then takes the freshly attached model's
        evaluation from the pretrained one instead of repeating it."""
        if self.zero_means_identity is None:
            return False
        own = [p for n, p in self.named_parameters() if n.split(".")[0] not in self.borrowed]
        return zero_and_finite(getattr(self, self.zero_means_identity), *own)

    def fixed_after_first_task(self) -> list[nn.Parameter]:
        """Parameters with no feature space (e.g. gates) that projection methods freeze after task 1."""
        return []

    # -- per-task branches (InfLoRA, O-LoRA, SD-LoRA): one mechanism for every form that names its branch parameters
    # The parameters that make one branch (LoRA: ``A`` and ``B``). Branch 0 is those attributes as attached; each
    # :meth:`open_branch` adds a fresh set under ``branches.<i>`` and freezes every earlier one. A form that names
    # none has no branches.
    branch_params: tuple[str, ...] = ()

    def init_branch(self) -> dict[str, nn.Parameter]:
        """A fresh branch, initialised as the form initialises its parameters at attach."""
        raise NotImplementedError

    def branch_list(self) -> list[dict[str, nn.Parameter]]:
        """Every branch in the order opened, each ``{name: parameter}``; branch 0 is the one attached."""
        first = {n: getattr(self, n) for n in self.branch_params}
        extra = self._modules.get("branches")
        return [first] + ([dict(d.items()) for d in extra] if extra is not None else [])

    def open_branch(self) -> dict[str, nn.Parameter]:
        """Freeze every branch so far and add a new, trainable one (on the device of the first); returns it."""
        if not self.branch_params:
            raise ConfigError(f"{self.pet_name}: this PET form has no per-task branches")
        for branch in self.branch_list():
            for p in branch.values():
                p.requires_grad_(False)
        if "branches" not in self._modules:
            self.branches = nn.ModuleList()
        device = next(iter(self.branch_list()[0].values())).device
        new = nn.ParameterDict({k: nn.Parameter(v.detach().to(device)) for k, v in self.init_branch().items()})
        self.branches.append(new)
        return dict(new.items())

    @property
    def branched(self) -> bool:
        """Whether more than the attached branch exists (then every branch takes part in the forward)."""
        extra = self._modules.get("branches")
        return extra is not None and len(extra) > 0

    def collect_outputs(self, backbone: Backbone, classnames: list[str]) -> None:
        """While a collector listens, after the forward passes: emit features that need more than a forward
        pass (e.g. CoOp's output Jacobian rows for these classes). Most layers need nothing here."""


class PET(nn.Module):
    """An attached PET: holds its layers (so ``parameters()`` are exactly the trainable PET parameters)."""

    def __init__(self, kind: str, config: PETConfig, layers: list[PETLayer], restore: Callable[[], None]):
        super().__init__()
        self.kind, self.config = kind, config
        self.pet_layers = nn.ModuleList(layers)
        self._restore = restore

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Only the PET's own parameters: never the backbone modules a layer wraps."""
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if not self._borrowed(name[len(prefix) + 1:] if prefix else name):
                yield name, p

    def _borrowed(self, name: str) -> bool:
        parts = name.split(".")
        return len(parts) > 3 and parts[0] == "pet_layers" and parts[2] in self.pet_layers[int(parts[1])].borrowed

    def state_dict(self, *args, **kwargs):
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not self._borrowed(k)}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``'s signature and result, over the PET's own parameters (values are copied
        into the live parameters, which the wrapped modules hold)."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise ConfigError(f"PET state does not match this PET: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for k, v in state_dict.items():
                if k in own:
                    own[k].copy_(v)
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    def grad_spaces(self) -> list[GradSpace]:
        return [s for layer in self.pet_layers for s in layer.grad_spaces()]

    def fixed_after_first_task(self) -> list[nn.Parameter]:
        return [p for layer in self.pet_layers for p in layer.fixed_after_first_task()]

    def is_identity(self) -> bool:
        """Every layer adds an exact zero now (:meth:`PETLayer.is_identity`): the model is the pretrained one."""
        return len(self.pet_layers) > 0 and all(layer.is_identity() and not layer.branched for layer in self.pet_layers)

    # -- per-task branches: a method decides when (``before_task``); the PET holds, freezes and saves them
    def supports_branches(self) -> bool:
        return len(self.pet_layers) > 0 and all(layer.branch_params for layer in self.pet_layers)

    def open_branch(self) -> list[dict[str, nn.Parameter]]:
        """Freeze every branch of every layer and open a new one in each; returns the new branches, per layer.
        The engine's loop builds a task's optimiser over what ``Method.trainable`` returns after ``before_task``,
        so only open branches train."""
        if not self.supports_branches():
            raise ConfigError(f"PET {self.kind} has no per-task branches; the branch methods need --pet lora")
        return [layer.open_branch() for layer in self.pet_layers]

    def branch_count(self) -> int:
        """Branches per layer (1 until a method opens another)."""
        return len(self.pet_layers[0].branch_list()) if self.supports_branches() else 1

    def grow_to(self, count: int) -> None:
        """Open branches until each layer has ``count`` (a checkpoint's state is loaded into them afterwards)."""
        while self.branch_count() < count:
            self.open_branch()

    def size_report(self) -> dict[str, int]:
        """What the PET holds now, for the record: branches, parameters (trainable or frozen) and their bytes."""
        params = list(self.parameters())
        return {"branches": self.branch_count(), "pet_parameters": int(sum(p.numel() for p in params)),
                "pet_bytes": int(sum(p.numel() * p.element_size() for p in params))}

    def set_sink(self, sink: Sink | None) -> None:
        for layer in self.pet_layers:
            layer._sink = sink

    def collect_outputs(self, backbone: Backbone, classnames: list[str]) -> None:
        for layer in self.pet_layers:
            layer.collect_outputs(backbone, classnames)

    def touches_tower(self, tower: str) -> bool:
        return tower in self.config.tower_list()

    def detach_from_model(self) -> None:
        """Undo the injection (the backbone is as it was before ``attach``)."""
        self._restore()


def replace_attr(parent: nn.Module, attr: str, new: nn.Module, undo: list[Callable[[], None]]) -> None:
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    undo.append(lambda: setattr(parent, attr, old))


def layer_per_site(sites: list[BlockSite], make: Callable[[BlockSite], "PETLayer"],
                   register: Callable[[nn.Module, "PETLayer", list], None]) -> tuple[list, list]:
    """One layer per block site, ``make(site)``, registered on the site's attention (``register(attn, layer,
    undo)``): the attach loop of the attention-side PETs. Returns the layers and their undo actions."""
    layers, undo = [], []
    for site in sites:
        layer = make(site)
        register(site.attn, layer, undo)
        layers.append(layer)
    return layers, undo


def check_width(kind: str, option: str, value: int, width: int, where: str) -> None:
    """A PET width (LoRA rank, adapter bottleneck) above the layer's own width is refused before allocation."""
    if value > width:
        raise ConfigError(f"{kind} {option} {value} exceeds the width {width} of {where}; use at most {width}")


def pre_norm(site: BlockSite, kind: str) -> nn.Module:
    """The LayerNorm before a block's attention (prompt tokens pass through it), or a one-line refusal."""
    norm = getattr(site.block, "ln_1", None)
    if norm is None:
        raise ConfigError(f"{kind} needs an open_clip backbone (its blocks have no ln_1)")
    return norm


def undo_all(undo: list[Callable[[], None]]) -> Callable[[], None]:
    return lambda: [u() for u in reversed(undo)]
