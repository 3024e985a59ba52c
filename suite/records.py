"""Results records: one JSON per run, validated by ``schemas/record.schema.json``, written atomically, and
recomputable (every aggregate follows from the stored matrix by :mod:`suite.metrics`)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from . import metrics
from .errors import SuiteError
from .paths import read_json

SCHEMA_ID = "clsuite/record/v1"


class RecordError(SuiteError):
    pass


@lru_cache(maxsize=1)
def record_schema() -> dict:
    return json.loads(resources.files("suite").joinpath("schemas/record.schema.json").read_text())


def _finite(obj: Any, where: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise RecordError(f"{where or '(top level)'}: non-finite number {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite(v, f"{where}.{i}")


def validate_record(rec: dict, source: str = "<record>") -> None:
    """Schema + shape checks; raises :class:`RecordError` with one line naming the source and field."""
    try:
        _finite(rec)
    except RecordError as exc:
        raise RecordError(f"{source}: {exc}") from None
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(record_schema()).iter_errors(rec))
    if err is not None:
        field = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise RecordError(f"{source}: {field}: {err.message}")
    t = len(rec["sequence"]["tasks"])
    m = rec["matrix"]
    if rec["status"] == "complete" and (len(m) != t or any(len(r) != t for r in m)):
        raise RecordError(f"{source}: matrix: expected {t} x {t} for {t} tasks, got {len(m)} rows")
    if len(rec["zero_shot"]["tasks"]) != t:
        raise RecordError(f"{source}: zero_shot.tasks: expected {t} values")


def recompute_aggregates(rec: dict) -> dict[str, float | None]:
    return metrics.aggregate(rec["matrix"], rec["zero_shot"]["tasks"])


def metric_value(rec: dict, name: str, aggregates: dict[str, float | None] | None = None) -> float | None:
    """A record's value of a registered metric (:data:`suite.metrics.METRICS`). Aggregates are recomputed from
    the matrix (pass ``aggregates`` to reuse a recomputation), never read from what the record claims."""
    m = metrics.metric(name)
    if m.source == "aggregate":
        return (aggregates if aggregates is not None else recompute_aggregates(rec)).get(name)
    value = rec.get(m.source, {}).get(name)
    if value is None and name == "basis_bytes" and m.source == "efficiency":
        return 0  # a method without bases stores none
    return value


def step_summary(step: dict) -> dict[str, float | None]:
    """The summary numbers of one evaluation step (the record's ``summary`` is that of its last step)."""
    out: dict[str, float | None] = {}
    if step.get("retention"):
        vals = [v for v in step["retention"].values() if v is not None]
        out["zero_shot_retention"] = float(sum(vals) / len(vals)) if vals else None
    ece = step.get("ece")
    if isinstance(ece, dict):
        out["ece"] = ece["value"]
    elif ece:  # records before pooled ECE: the mean of per-task values
        out["ece"] = float(sum(ece) / len(ece))
    hall = step.get("hallucination", {})
    if "adversarial" in hall.get("pope", {}):
        out["hallucination_fpr"] = hall["pope"]["adversarial"]["false_positive_rate"]
    if hall.get("pope", {}).get("auroc") is not None:
        out["pope_auroc"] = hall["pope"]["auroc"]
    if "hijacking" in hall:
        out["hijacking_rate"] = hall["hijacking"].get("mean_rate")
    if "retrieval_confident_mismatch" in hall:
        out["retrieval_confident_mismatch"] = hall["retrieval_confident_mismatch"]
    return out


def group_key(rec: dict) -> tuple[str, str, str, str]:
    """Records that are seeds of one configuration share this key: sequence, method, PET, and their options."""
    return (rec["sequence"]["name"], rec["method"]["name"], rec["pet"]["kind"] or "-",
            json.dumps([rec["pet"]["options"], rec["method"]["options"]], sort_keys=True))


def record_digest(rec: dict) -> str:
    """sha256 of a record's content without any ``verification`` field (what a maintainer verified)."""
    body = {k: v for k, v in rec.items() if k != "verification"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to a temporary file beside ``path`` and rename it into place: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_record(path: str | Path) -> dict:
    p = Path(path)
    rec = read_json(p, "record", RecordError)
    if not isinstance(rec, dict):
        raise RecordError(f"{p}: (top level): a record is a JSON object")
    validate_record(rec, str(p))
    return rec


def strip_timings(rec: dict) -> dict:
    """The record without wall-clock and memory fields (for comparing reruns)."""
    drop = {"wall_time_s", "peak_memory_mb", "created", "environment", "command", "zero_shot_eval_time_s", "train_time_s",
            "eval_time_s"}

    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if k not in drop}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return clean(rec)


# Keys whose numbers are fractions of test items (accuracies, and aggregates and retentions made of them): across
# machines they may differ by whole test items, so they get :attr:`Tolerance.accuracy`; every other float
# (losses, ECE, confidences, AUROC) gets the relative tolerance.
ACCURACY_KEYS = frozenset({"matrix", "accuracy", "control_accuracy", "aggregates", "zero_shot", "retention",
                           "zero_shot_retention"})


@dataclass(frozen=True)
class Tolerance:
    """How far two records of one configuration may differ and still state the same result.

    The default is bit-identity, which the suite guarantees on one machine (CPU, fixed seed). Across CPUs,
    floating-point reassociation (other SIMD widths, other BLAS kernels) changes low-order bits, and over many
    steps it can change whole test answers: ``accuracy`` bounds accuracy-valued numbers (absolute),
    ``relative``/``absolute`` every other float (``|a - b| <= absolute + relative * max(|a|, |b|)``).
    Integers, strings, booleans and the record's shape are always compared exactly."""

    accuracy: float = 0.0
    relative: float = 0.0
    absolute: float = 0.0

    def allows(self, a: float, b: float, accuracy_valued: bool) -> bool:
        if accuracy_valued:
            return abs(a - b) <= self.accuracy + 1e-12
        return abs(a - b) <= self.absolute + self.relative * max(abs(a), abs(b))


def record_differences(a: Any, b: Any, tolerance: Tolerance = Tolerance(), path: str = "",
                       accuracy_valued: bool = False) -> list[str]:
    """Where two records (timings stripped) differ beyond ``tolerance``: one ``path: a != b`` line per place."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path or '(top level)'}: keys differ: {sorted(set(a) ^ set(b))[:5]}"]
        return [d for k in sorted(a) for d in record_differences(a[k], b[k], tolerance, f"{path}.{k}" if path else k,
                                                                   accuracy_valued or k in ACCURACY_KEYS)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in record_differences(x, y, tolerance, f"{path}[{i}]",
                                                                                  accuracy_valued)]
    floats = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) and \
        (isinstance(a, float) or isinstance(b, float))
    if floats and math.isfinite(a) and math.isfinite(b):
        return [] if tolerance.allows(float(a), float(b), accuracy_valued) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b or (floats and str(a) == str(b)) else [f"{path}: {a!r} != {b!r}"]
