"""Continual-learning methods. Built-ins are registered here; outside packages add theirs through the
``clsuite.methods`` entry-point group (see :mod:`suite.methods.base` for the plug-in API).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

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


def available_methods() -> dict[str, type[Method]]:
    """Built-in methods plus every method installed under the ``clsuite.methods`` entry-point group."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(methods))}")
    cls = methods[name]
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"entry point {name!r} is not a suite.methods.base.Method subclass")
    return cls(**(options or {}))


__all__ = ["Method", "RunContext", "available_methods", "make_method", "BUILTIN"]
