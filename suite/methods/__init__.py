"""Continual-learning methods. Built-ins are registered here; outside packages add theirs through the
``clsuite.methods`` entry-point group (see :mod:`suite.methods.base` for the plug-in API).

Plug-ins load lazily: a broken one fails only when it is asked for, naming its distribution and the import
error. A plug-in must set ``name`` on its own class, equal to its entry-point name, and must not reuse a
built-in's name; anything else is a one-line error rather than a record under the wrong name.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..plugins import PluginError, distribution, load, plugins
from .base import Method, RunContext
from .ewc import EWC
from .finetune import FullFineTune
from .gpm import GPM
from .l2p import L2P
from .lwf import LwF
from .pegp import PEGP
from .seq import SequentialPET
from .wiseft import WiSEFT
from .zeroshot import ZeroShot
from .zscl import ZSCL

BUILTIN: dict[str, type[Method]] = {m.name: m for m in (ZeroShot, SequentialPET, PEGP, FullFineTune, LwF, EWC, WiSEFT,
                                                        ZSCL, L2P, GPM)}
ENTRY_POINT_GROUP = "clsuite.methods"


def available_methods() -> dict[str, str]:
    """Every method name with where it comes from (``module:Class``); plug-ins are listed, not imported."""
    found = {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in BUILTIN.items()}
    for name, ep in plugins(ENTRY_POINT_GROUP).items():
        found.setdefault(name, ep.value)
    return found


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; a plug-in is imported only now, and checked."""
    found = plugins(ENTRY_POINT_GROUP)
    if name in BUILTIN:
        if name in found:
            raise PluginError(f"method {name!r}: the plug-in {found[name].value} of {distribution(found[name])} "
                              f"shadows the built-in method of that name; rename the plug-in's entry point")
        return BUILTIN[name]
    if name not in found:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(available_methods()))}")
    ep = found[name]
    cls = load(ep, "method")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"method {name!r}: {ep.value} is not a suite.methods.Method subclass")
    own = cls.__dict__.get("name")
    if own is None:
        raise PluginError(f"method {name!r}: {ep.value} does not set its own class attribute name "
                          f"(it would be recorded as {cls.name!r}); add name = {name!r}")
    if own != name:
        raise PluginError(f"method {name!r}: {ep.value} has name = {own!r}, which differs from its entry point "
                          f"{name!r}; make them equal")
    return cls


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    return method_class(name)(**(options or {}))


__all__ = ["Method", "RunContext", "PluginError", "available_methods", "method_class", "make_method", "BUILTIN"]
