"""The command registry: each ``clsuite`` verb is declared once, ``@command(name, help, arguments)`` on its
handler, with the function that declares its arguments right above it; :func:`build_parser` assembles them in
declaration order. The verb modules import this one; ``main`` imports them; nothing imports ``main``.

Handlers import the modules they call when they run, so a verb never pays for another's imports (``clsuite
metrics`` loads no torch): that is why the verb modules import inside their handlers."""
from __future__ import annotations

import argparse
from typing import Callable

from suite import __version__
from suite.config.bounds import MAX_SEED
from suite.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
HANDLERS: dict[str, Handler] = {}
VERBS: list[tuple[str, str, Arguments | None]] = []  # (name, help, arguments), in declaration order
GROUPS = {"tasks": "list, inspect, prepare task sequences", "leaderboard": "build the static leaderboard site"}


def command(name: str, help: str, arguments: Arguments | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of verb ``name`` (``"tasks list"`` for a sub-verb of a
    group in :data:`GROUPS`), with its help line and the function that declares its arguments."""
    def deco(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        VERBS.append((name, help, arguments))
        return fn
    return deco


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are the suite's one-line :class:`ConfigError` (no usage block, no bare exit)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    p = Parser(prog="clsuite", description="Continual learning of CLIP models: benchmark suite.")
    p.add_argument("--debug", action="store_true", help="show the traceback of a refused input, not one line")
    p.add_argument("--version", action="version", version=f"clsuite {__version__}", help="print the suite's version")
    sub = p.add_subparsers(dest="cmd", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, help, arguments in VERBS:
        group, _, verb = name.partition(" ")
        if verb and group not in groups:
            groups[group] = sub.add_parser(group, help=GROUPS[group]).add_subparsers(dest="sub", required=True)
        parser = (groups[group] if verb else sub).add_parser(verb or name, help=help)
        if arguments is not None:
            arguments(parser)
    return p


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
    if any(not 0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"distinct integers from 0 to {MAX_SEED}, got {text[:60]!r}")
    return seeds


__all__ = ["GROUPS", "HANDLERS", "Parser", "VERBS", "build_parser", "command", "count", "seed_list"]
