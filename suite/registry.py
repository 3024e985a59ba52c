"""The one plug-in registry: PET forms, methods and backbone kinds, built-in and installed.

Each registry maps a name to where its object lives (``module`` or ``module:attribute``); built-ins are listed
here, one line each, and installed packages add theirs through an entry-point group. Nothing is imported until a
name is asked for, so enumerating names (help texts, plots, tests) costs nothing, and a broken plug-in fails only
when it is used, naming its distribution and the import error in one line.
"""
from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from suite.errors import ConfigError, SuiteError


class PluginError(SuiteError):
    """A plug-in that cannot be used as asked (import error, missing or wrong name, shadowing)."""


def plugins(group: str) -> dict[str, EntryPoint]:
    """Installed entry points of ``group``, by name (nothing imported)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def distribution(ep: EntryPoint) -> str:
    return getattr(getattr(ep, "dist", None), "name", None) or "an installed distribution"


def load(ep: EntryPoint, what: str) -> Any:
    """Import an entry point; any failure becomes a one-line :class:`PluginError` naming ``what``."""
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 — a plug-in's import error of any kind, reported in one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{what} {ep.name!r}: cannot load {ep.value} from {distribution(ep)}: "
                          f"{type(exc).__name__}: {first}") from None


def _import(path: str) -> Any:
    module, _, attribute = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attribute) if attribute else obj


class Registry:
    """Names of one kind of thing (``what``): ``builtin`` (name -> import path), the entry points of ``group``,
    and objects :meth:`register`-ed in this process (``local``: a class defined in a notebook, no package)."""

    def __init__(self, what: str, group: str, builtin: dict[str, str]):
        self.what, self.group, self.builtin = what, group, dict(builtin)
        self.local: dict[str, Any] = {}

    def names(self) -> list[str]:
        """Built-ins in their order, then those registered in this process, then installed plug-ins (listed, not
        imported)."""
        return list(self.builtin) + [n for n in self.local if n not in self.builtin] + sorted(
            n for n in plugins(self.group) if n not in self.builtin and n not in self.local)

    def sources(self) -> dict[str, str]:
        """Every name with where it lives (``module:attribute``)."""
        found = dict(self.builtin)
        for name, obj in self.local.items():
            found.setdefault(name, f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}")
        for name, ep in plugins(self.group).items():
            found.setdefault(name, ep.value)
        return found

    def register(self, name: str, obj: Any) -> None:
        """Make ``obj`` known as ``name`` in this process only (no entry point needed). Registering the name again
        replaces it (a notebook cell run twice); a built-in's or an installed plug-in's name is refused."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.what} name {name!r}: a non-empty string is needed")
        if name in self.builtin:
            raise PluginError(f"{self.what} {name!r}: a built-in {self.what} has that name; choose another")
        if name in plugins(self.group):
            raise PluginError(f"{self.what} {name!r}: the installed plug-in {plugins(self.group)[name].value} has that "
                              "name; choose another")
        self.local[name] = obj

    def load(self, name: str) -> Any:
        """The object registered as ``name``; a plug-in is imported only now. A plug-in never shadows a built-in."""
        found = plugins(self.group)
        if name in self.local and name not in self.builtin:
            return self.local[name]
        if name in self.builtin:
            if name in found:
                raise PluginError(f"{self.what} {name!r}: the plug-in {found[name].value} of {distribution(found[name])} "
                                  f"shadows the built-in {self.what} of that name; rename the plug-in's entry point")
            return _import(self.builtin[name])
        if name not in found:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        return load(found[name], self.what)


PETS = Registry("PET", "clsuite.pets", {
    "lora": "suite.pet.lora", "adapter": "suite.pet.adapter", "prefix": "suite.pet.prefix", "vpt": "suite.pet.vpt",
    "coop": "suite.pet.coop", "gated-prefix": "suite.pet.gated_prefix", "gated-prompt": "suite.pet.gated_prompt"})
METHODS = Registry("method", "clsuite.methods", {
    "zeroshot": "suite.methods.zeroshot:ZeroShot", "seq": "suite.methods.seq:SequentialPET",
    "pegp": "suite.methods.pegp:PEGP", "finetune": "suite.methods.finetune:FullFineTune",
    "lwf": "suite.methods.lwf:LwF", "ewc": "suite.methods.ewc:EWC", "wiseft": "suite.methods.wiseft:WiSEFT",
    "zscl": "suite.methods.zscl:ZSCL", "l2p": "suite.methods.l2p:L2P", "gpm": "suite.methods.gpm:GPM",
    "inflora": "suite.methods.inflora:InfLoRA", "olora": "suite.methods.olora:OLoRA", "sdlora": "suite.methods.sdlora:SDLoRA",
    "vpt-nsp2": "suite.methods.vpt_nsp2:VPTNSP2", "coda-prompt": "suite.methods.coda_prompt:CODAPrompt",
    "rail": "suite.methods.rail:RAIL",
    "dualprompt": "suite.methods.dualprompt:DualPrompt",
    "moe-adapters": "suite.methods.moe_adapters:MoEAdapters",
    "diki": "suite.methods.diki:DIKI", "magmax": "suite.methods.magmax:MagMax"})
BACKBONES = Registry("model kind", "clsuite.backbones", {
    "embedded": "suite.models:load_embedded", "open_clip": "suite.models:load_open_clip", "hf": "suite.models:load_hf"})

__all__ = ["BACKBONES", "METHODS", "PETS", "PluginError", "Registry", "distribution", "load", "plugins"]
