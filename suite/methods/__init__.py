"""Continual-learning methods. Built-ins are registered here; outside packages add theirs through the
``clsuite.methods`` entry-point group (see :mod:`suite.methods.base` for the plug-in API).

Plug-ins load lazily: a broken one fails only when it is asked for, naming its distribution and the import
error. A plug-in must set ``name`` on its own class, equal to its entry-point name, and must not reuse a
built-in's name; anything else is a one-line error rather than a record under the wrong name.
"""
from __future__ import annotations

from typing import Any

from suite.methods.base import Method, Option, RunContext
from suite.registry import METHODS, PluginError


def available_methods() -> dict[str, str]:
    """Every method name with where it comes from (``module:Class``); plug-ins are listed, not imported."""
    return METHODS.sources()


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; a plug-in is imported only now, and checked."""
    cls = METHODS.load(name)
    if name in METHODS.builtin:
        return cls
    where = METHODS.sources()[name]
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"method {name!r}: {where} is not a suite.methods.Method subclass")
    own = cls.__dict__.get("name")
    if own is None:
        raise PluginError(f"method {name!r}: {where} does not set its own class attribute name "
                          f"(it would be recorded as {cls.name!r}); add name = {name!r}")
    if own != name:
        raise PluginError(f"method {name!r}: {where} has name = {own!r}, which differs from its entry point "
                          f"{name!r}; make them equal")
    return cls


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """Method ``name`` with ``options`` (checked against the method's declared options)."""
    return method_class(name)(**(options or {}))


__all__ = ["Method", "Option", "RunContext", "PluginError", "available_methods", "method_class", "make_method"]
