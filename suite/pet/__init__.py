"""Parameter-efficient tuners, all of one shape: ``<Kind>Config`` + layer module + ``attach(backbone, config)``.

:func:`attach_pet` is the one door: ``attach_pet(backbone, "lora", rank=8, towers="vision")``.
"""
from __future__ import annotations

from typing import Any

from ..models.backbone import Backbone
from . import adapter, lora, prefix, prompt
from .base import PET, PETConfig, PETLayer

PETS: dict[str, tuple[type[PETConfig], Any]] = {
    "adapter": (adapter.AdapterConfig, adapter.attach),
    "lora": (lora.LoRAConfig, lora.attach),
    "prefix": (prefix.PrefixConfig, prefix.attach),
    "prompt": (prompt.PromptConfig, prompt.attach),
}


def make_config(kind: str, options: dict[str, Any] | None = None) -> PETConfig:
    if kind not in PETS:
        raise ValueError(f"unknown PET {kind!r}; known: {', '.join(PETS)}")
    return PETS[kind][0].from_dict(dict(options or {}))


def attach_pet(backbone: Backbone, kind: str, **options: Any) -> PET:
    """Inject a PET of ``kind`` into ``backbone``; returns the module holding its trainable parameters."""
    cfg = make_config(kind, options)
    pet = PETS[kind][1](backbone, cfg)
    for p in pet.parameters():
        p.requires_grad_(True)
    return pet


__all__ = ["PET", "PETConfig", "PETLayer", "PETS", "attach_pet", "make_config"]
