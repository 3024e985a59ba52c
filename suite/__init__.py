"""Continual learning of CLIP models: a benchmark suite (PETs, PEGP, metrics, leaderboards).

The Python API (:mod:`suite.api`) is re-exported here and imported on first use, so ``import suite`` stays cheap
(no torch): :func:`run`, :func:`sweep`, :func:`plan`, :func:`load_records`, :func:`register_method`, and the
:class:`Record` and :class:`Records` they return."""
from __future__ import annotations

from typing import Any

from suite._version import __version__  # the checkout's pyproject, or the installed metadata

# name -> module it comes from (imported when the name is first used)
_LAZY = {name: "suite.api" for name in ("run", "sweep", "plan", "load_records", "register_method", "run_config",
                                        "available", "Record", "Records", "Summary", "Comparison")}
_LAZY.update({"SuiteError": "suite.errors", "ConfigError": "suite.errors"})
# (no TYPE_CHECKING imports of them here: the layer contracts read every import, and the engine imports ``suite``)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'suite' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Comparison", "ConfigError", "Record", "Records", "Summary", "SuiteError", "__version__", "available",
           "load_records", "plan", "register_method", "run", "run_config", "sweep"]
