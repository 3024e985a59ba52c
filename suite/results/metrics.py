"""Aggregate metrics of a continual-learning accuracy matrix — the one place they are defined.

Let ``A`` be a ``T x T`` matrix: ``A[t, d]`` is the accuracy on task ``d`` after training task ``t``
(rows are steps, columns are tasks; *every* task is evaluated after every step, also tasks not yet
trained). Values stay in the matrix's own units (fractions or percent); nothing is rescaled or rounded.
``z`` is an optional vector of the pretrained (zero-shot) model's accuracy on each task.

=========================  ==================================================================================
``transfer``               MTIL (Zheng et al., ZSCL, ICCV 2023): ``mean_{d=1..T-1} mean_{t=0..d-1} A[t, d]``
                           — accuracy on tasks *before* they are trained (upper triangle, above diagonal).
``avg``                    MTIL: ``mean_{t,d} A[t, d]`` — mean of the whole matrix.
``last``                   MTIL: ``mean_d A[T-1, d]`` — mean of the final row.
``bwt``                    Backward transfer (Lopez-Paz & Ranzato, GEM 2017):
                           ``1/(T-1) sum_{d<T-1} (A[T-1, d] - A[d, d])``; negative means forgetting.
``forgetting``             Average forgetting (Chaudhry et al., RWalk 2018):
                           ``1/(T-1) sum_{d<T-1} (max_{d<=t<T-1} A[t, d] - A[T-1, d])``.
``fwt``                    Forward transfer against zero-shot:
                           ``1/(T-1) sum_{d>=1} (A[d-1, d] - z[d])``; needs ``z``, else ``None``.
``avg_incremental``        Average incremental accuracy (Rebuffi et al., iCaRL 2017):
                           ``1/T sum_t mean_{d<=t} A[t, d]``.
``plasticity``             Plasticity gain over zero-shot: ``mean_d (A[d, d] - z[d])`` — how much training a task
                           raised its accuracy right after it was trained; needs ``z``, else ``None``.
=========================  ==================================================================================

A one-task matrix has no transfer, BWT, forgetting or FWT: those are ``None``.

:data:`METRICS` is the one registry of every number a record, a board, ``compare`` or a figure shows: its name,
whether higher is better, its unit, and where in a record it is read from (:func:`suite.results.records.metric_value`).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from suite.errors import SuiteError
from suite.paths import parse_json, read_text

METRIC_NAMES = ("transfer", "avg", "last", "bwt", "forgetting", "fwt", "avg_incremental", "plasticity")
# The aggregates a run's one-screen summary and a sweep's table show.
HEADLINE = ("transfer", "avg", "last", "bwt", "forgetting")
# The columns `compare` shows by default (the stability-plasticity picture of a method).
COMPARE_METRICS = ("avg", "last", "transfer", "forgetting", "plasticity", "zero_shot_retention", "hallucination_fpr")


@dataclass(frozen=True)
class Metric:
    """One reported number: ``source`` is the record section it lives in (aggregates are always recomputed
    from the matrix); ``unit`` is ``fraction`` (shown as percent), ``bytes``, ``seconds`` or ``count``."""

    name: str
    label: str
    higher_is_better: bool
    unit: str = "fraction"
    source: str = "aggregate"

    @property
    def sign(self) -> int:
        """+1 when higher is better: ``sign * value`` sorts best-last."""
        return 1 if self.higher_is_better else -1


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("transfer", "Transfer", True),
    Metric("avg", "Avg", True),
    Metric("last", "Last", True),
    Metric("bwt", "BWT", True),
    Metric("forgetting", "Forgetting", False),
    Metric("fwt", "FWT", True),
    Metric("avg_incremental", "Avg incremental", True),
    Metric("plasticity", "Plasticity gain", True),
    Metric("zero_shot_retention", "Zero-shot retention", True, source="summary"),
    Metric("pope_auroc", "POPE AUROC", True, source="summary"),
    Metric("hallucination_fpr", "Hallucination FPR", False, source="summary"),
    Metric("hijacking_rate", "Hijacking rate", False, source="summary"),
    Metric("retrieval_confident_mismatch", "Confident mismatch", False, source="summary"),
    Metric("ece", "ECE", False, source="summary"),
    Metric("trainable_parameters", "Trainable params", False, unit="count", source="efficiency"),
    Metric("basis_bytes", "Basis memory", False, unit="bytes", source="efficiency"),
    Metric("wall_time_s", "Wall time", False, unit="seconds", source="efficiency"),
    Metric("attach_cost", "Attach cost", False, source="attach_cost"),
)}


class UnknownMetric(SuiteError, KeyError):
    """A metric name that is not in :data:`METRICS`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise UnknownMetric(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


class MatrixError(SuiteError):
    """An accuracy matrix that cannot be aggregated (wrong shape, NaN, ...)."""


def as_matrix(rows: Any) -> np.ndarray:
    """Validate and convert ``rows`` (list of rows or array) to a square float64 matrix."""
    try:
        a = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MatrixError(f"matrix is not numeric: {exc}") from None
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise MatrixError(f"matrix must be square T x T with T >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise MatrixError(f"matrix has a non-finite value at row {bad[0]}, column {bad[1]}")
    return a


# Each metric reads the last two axes as the matrix (steps x tasks), so a stack of matrices (the bootstrap's
# resamples x seeds, :mod:`suite.results.uncertainty`) goes through the same definition as one record's.
def transfer(a: np.ndarray) -> np.ndarray | None:
    t = a.shape[-1]
    if t < 2:
        return None
    return np.mean([a[..., :d, d].mean(-1) for d in range(1, t)], axis=0)


def avg(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=(-2, -1))


def last(a: np.ndarray) -> np.ndarray:
    return a[..., -1, :].mean(-1)


def bwt(a: np.ndarray) -> np.ndarray | None:
    t = a.shape[-1]
    if t < 2:
        return None
    return np.mean([a[..., -1, d] - a[..., d, d] for d in range(t - 1)], axis=0)


def forgetting(a: np.ndarray) -> np.ndarray | None:
    t = a.shape[-1]
    if t < 2:
        return None
    return np.mean([a[..., d:t - 1, d].max(-1) - a[..., -1, d] for d in range(t - 1)], axis=0)


def _zero_shot(a: np.ndarray, zero_shot: Any) -> np.ndarray:
    z = np.asarray(zero_shot, dtype=np.float64)
    if z.shape[-1:] != (a.shape[-1],):
        raise MatrixError(f"zero-shot vector must have {a.shape[-1]} entries, got {z.shape}")
    return z


def fwt(a: np.ndarray, zero_shot: Any) -> np.ndarray | None:
    t = a.shape[-1]
    if t < 2 or zero_shot is None:
        return None
    z = _zero_shot(a, zero_shot)
    return np.mean([a[..., d - 1, d] - z[..., d] for d in range(1, t)], axis=0)


def avg_incremental(a: np.ndarray) -> np.ndarray:
    return np.mean([a[..., t, : t + 1].mean(-1) for t in range(a.shape[-1])], axis=0)


def plasticity(a: np.ndarray, zero_shot: Any) -> np.ndarray | None:
    if zero_shot is None:
        return None
    z = _zero_shot(a, zero_shot)
    return (np.diagonal(a, axis1=-2, axis2=-1) - z).mean(-1)


def batch_aggregate(a: np.ndarray, zero_shot: Any = None) -> dict[str, np.ndarray | None]:
    """Every aggregate of a stack of matrices ``(..., T, T)`` (zero-shot ``(..., T)``), keyed by :data:`METRIC_NAMES`."""
    return {"transfer": transfer(a), "avg": avg(a), "last": last(a), "bwt": bwt(a), "forgetting": forgetting(a),
            "fwt": fwt(a, zero_shot), "avg_incremental": avg_incremental(a), "plasticity": plasticity(a, zero_shot)}


def aggregate(rows: Any, zero_shot: Sequence[float] | None = None) -> dict[str, float | None]:
    """Every aggregate of one accuracy matrix, keyed by :data:`METRIC_NAMES`."""
    a = as_matrix(rows)
    return {k: None if v is None else float(v) for k, v in batch_aggregate(a, zero_shot).items()}


def load_matrix(path: str | Path) -> np.ndarray:
    """Read a matrix from JSON (list of rows, or an object with ``matrix``), CSV or ``.npy``."""
    p = Path(path)
    if not p.is_file():
        raise MatrixError(f"{p}: (file): no such matrix file")
    suffix = p.suffix.lower()
    text = "" if suffix == ".npy" else read_text(p, "matrix file", MatrixError)
    data = parse_json(text, p, MatrixError) if suffix == ".json" else None  # names the file itself
    try:
        if suffix == ".npy":
            rows = np.load(p, allow_pickle=False)
        elif suffix == ".json":
            rows = data.get("matrix", data.get("accuracy_matrix")) if isinstance(data, dict) else data
            if rows is None:
                raise MatrixError("JSON object has no 'matrix' field")
        elif suffix in (".csv", ".tsv", ".txt"):
            delim = "\t" if suffix == ".tsv" else ","
            rows = [[float(x) for x in r] for r in csv.reader(text.splitlines(), delimiter=delim) if r]
        else:
            raise MatrixError(f"unknown matrix format {suffix!r} (use .json, .csv or .npy)")
        return as_matrix(rows)
    except MatrixError as exc:
        raise MatrixError(f"{p}: {exc}") from None
    except (ValueError, json.JSONDecodeError) as exc:
        raise MatrixError(f"{p}: cannot parse: {exc}") from None
