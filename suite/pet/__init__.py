"""Parameter-efficient tuners, all of one shape (the HF PEFT shape): ``<Kind>Config`` (validated when built) +
layer module + ``attach(backbone, config)``; each module names itself with ``KIND, CONFIG``.

:func:`attach_pet` is the one door: ``attach_pet(backbone, "lora", rank=8, towers="vision")``. Outside packages
add PETs through the entry-point group ``clsuite.pets`` (``mypet = "my_pkg.my_pet"``: a module with ``KIND``,
``CONFIG`` and ``attach``), loaded only when asked for; :data:`suite.registry.PETS` lists them all.

==================  ===============================================================================
``lora``            LoRA on q/k/v/out (and optionally the MLP) Linear maps
``adapter``         bottleneck adapter, parallel to the MLP (or to attention: ``position: attn``)
``prefix``          prefix-tuning: keys/values concatenated in the layer's own softmax
``vpt``             visual prompt tuning, deep or shallow (vision tower)
``coop``            CoOp learned text context (text tower)
``gated-prefix``    suite variant: prefix in a separate zero-gated branch (no change at attach)
``gated-prompt``    suite variant: prompt tokens in a separate zero-gated branch (no change at attach)
==================  ===============================================================================
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import PET, PETConfig, PETLayer
from suite.registry import PETS, PluginError


def _module(kind: str) -> ModuleType:
    """The module of PET ``kind`` (built-in or plug-in), checked for its three parts."""
    mod = PETS.load(kind)
    if getattr(mod, "KIND", None) != kind or not hasattr(mod, "attach") or not hasattr(mod, "CONFIG"):
        raise PluginError(f"PET {kind!r}: {PETS.sources()[kind]} must define KIND = {kind!r}, CONFIG and attach")
    return mod


def available_pets() -> list[str]:
    """Built-in PETs, then plug-ins (listed, not imported)."""
    return PETS.names()


def pets_for_track(track: str) -> list[str]:
    """The built-in PETs that learn on ``track`` (``PETConfig.tracks``), in registry order."""
    return [k for k in PETS.builtin if (t := _module(k).CONFIG.tracks) is None or track in t]


def make_config(kind: str, options: dict[str, Any] | None = None) -> PETConfig:
    """The validated config of a PET of ``kind`` (no model needed)."""
    return _module(kind).CONFIG.from_dict(dict(options or {}))


def attach_pet(backbone: Backbone, kind: str, **options: Any) -> PET:
    """Inject a PET of ``kind`` into ``backbone``; returns the module holding its trainable parameters."""
    cfg = make_config(kind, options)
    pet = _module(kind).attach(backbone, cfg)
    if not any(p.numel() for p in pet.parameters()):
        # options that select nothing (towers without the PET's sites, an empty layer set): a run would train
        # zero parameters and still write an ordinary-looking record
        pet.detach_from_model()
        shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        raise ConfigError(f"PET {kind} ({shown}): attaches no trainable parameter to this model; "
                          f"check towers and layers")
    for p in pet.parameters():
        p.requires_grad_(True)
    return pet


__all__ = ["PET", "PETConfig", "PETLayer", "attach_pet", "available_pets", "make_config", "pets_for_track"]
