"""Entry-point plug-ins (methods, PETs), loaded lazily: only the one asked for is imported, and a broken one
fails then, naming its distribution and the import error in one line."""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import SuiteError


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
