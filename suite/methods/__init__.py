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


def _own_name(cls: Any, who: str, suggested: str) -> str:
    """The name a method class sets itself; one line naming ``who`` when it is no Method or sets none."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"{who} is not a suite.methods.Method subclass")
    own = cls.__dict__.get("name")
    if own is None:
        raise PluginError(f"{who} does not set its own class attribute name "
                          f"(it would be recorded as {cls.name!r}); add name = {suggested!r}")
    return own


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; a plug-in is imported only now, and checked."""
    cls = METHODS.load(name)
    if name in METHODS.builtin:
        return cls
    where = METHODS.sources()[name]
    own = _own_name(cls, f"method {name!r}: {where}", name)
    if own != name:
        raise PluginError(f"method {name!r}: {where} has name = {own!r}, which differs from its entry point "
                          f"{name!r}; make them equal")
    return cls


def register_method(cls: type[Method], name: str | None = None) -> type[Method]:
    """Make the :class:`Method` subclass ``cls`` runnable as ``--method name`` in this process, without an entry
    point (a method written in a notebook or a script); ``name`` defaults to ``cls.name``, which the class must
    set itself. Returns ``cls``, so it also works as a class decorator. Registering a name again replaces it; a
    built-in's or an installed plug-in's name is refused."""
    own = _own_name(cls, f"register_method: {getattr(cls, '__qualname__', repr(cls))}", name or "my-method")
    if name is not None and name != own:
        raise PluginError(f"register_method: {cls.__qualname__} has name = {own!r}, not {name!r}; make them equal")
    METHODS.register(own, cls)
    return cls


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """Method ``name`` with ``options`` (checked against the method's declared options)."""
    return method_class(name)(**(options or {}))


__all__ = ["Method", "Option", "RunContext", "PluginError", "available_methods", "method_class", "make_method",
           "register_method"]
