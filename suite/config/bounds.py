"""Bounds of every integer the suite accepts where a number becomes a seed, a size or a count (and so, sooner or
later, a tensor or a C integer). Python integers have no limit; torch's and numpy's do, and an integer beyond them
ends in an ``OverflowError`` deep inside a library. Every config reader checks its integers here first, so such a
value is one line naming the field."""
from __future__ import annotations

import math
from typing import Any

from suite.errors import ConfigError

MAX_SEED = 2**63 - 1  # torch.manual_seed / Generator.manual_seed take a signed 64-bit integer
MAX_COUNT = 2**31 - 1  # any count or size without a maximum of its own: a 32-bit index, as torch sizes are checked
MAX_BATCH = 65536  # batch sizes (training and evaluation), as the sequence schema bounds them
MAX_PROCESSES = 4096  # threads, workers, CPUs per run (the plan schema's cpus_per_run bound)


def bounded_int(value: Any, where: str, low: int = 0, high: int = MAX_COUNT) -> int:
    """``value`` when it is an integer (not a bool) in ``[low, high]``; else :class:`ConfigError` naming ``where``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}: {show_value(value)} must be an integer from {low} to {high}")
    return value


def finite_number(value: Any, where: str) -> float:
    """``value`` as a finite float (an integer too large for a float is refused, not an ``OverflowError``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: {show_value(value)} must be a finite number")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ConfigError(f"{where}: {show_value(value)} must be a finite number")
    return out


def show_value(value: Any, limit: int = 40) -> str:
    if isinstance(value, int) and value.bit_length() > 128:  # repr of a 5,000-digit integer is itself refused
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 13]}… ({len(text)} chars)"


__all__ = ["MAX_BATCH", "MAX_COUNT", "MAX_PROCESSES", "MAX_SEED", "bounded_int", "finite_number", "show_value"]
