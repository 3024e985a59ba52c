"""The command registry: every ``clsuite`` verb's handler (``@command``) and its arguments (``@arguments``),
declared next to each other in ``cli.py`` and ``commands.py``. Both import this module; ``cli`` imports
``commands``; nothing imports ``cli`` — so there is no import cycle."""
from __future__ import annotations

import argparse
from typing import Callable

Handler = Callable[[argparse.Namespace], int]
HANDLERS: dict[str, Handler] = {}
PARSER_HOOKS: list[Callable] = []  # each adds its verbs' sub-parsers, in declaration order


def command(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of verb ``name`` (``"tasks list"`` for a sub-verb)."""
    def deco(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn
    return deco


def arguments(fn: Callable) -> Callable:
    """Register ``fn(subparsers)``, which declares the arguments of some verbs."""
    PARSER_HOOKS.append(fn)
    return fn


__all__ = ["HANDLERS", "PARSER_HOOKS", "arguments", "command"]
