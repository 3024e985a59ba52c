"""The command registry: every ``clsuite`` verb's handler (``@command``) and its arguments (``@arguments``),
declared next to each other in ``cli.py`` and ``commands.py``. Both import this module; ``cli`` imports
``commands``; nothing imports ``cli`` — so there is no import cycle."""
from __future__ import annotations

import argparse
from typing import Callable

from .errors import ConfigError

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


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are the suite's one-line :class:`ConfigError` (no usage block, no bare exit)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def count(text: str) -> int:
    """An argparse type: an integer >= 1 (``--jobs``, ``--steps``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got {value}")
    return value


def seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated seeds, each an integer >= 0 (``--seeds 0,1,2``)."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers >= 0, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"distinct integers >= 0, got {text!r}")
    return seeds


__all__ = ["HANDLERS", "PARSER_HOOKS", "Parser", "arguments", "command", "count", "seed_list"]
