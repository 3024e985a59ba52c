"""Results records: one JSON per run, validated by ``schemas/record.schema.json``, written atomically, and
recomputable (every aggregate follows from the stored matrix by :mod:`suite.results.metrics`)."""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from suite.config.run import RunIdentity
from suite.errors import SuiteError, field_path, schema_field
from suite.paths import parse_json, read_json, write_atomic
from suite.results import items, metrics

SCHEMA_ID = "clsuite/record/v1"
# What every number "relative to zero-shot" (plasticity gain, FWT, retention) is measured against: the pretrained
# model with no PET attached. Records without ``zero_shot.reference`` were made against the model just after the
# PET was attached (before this was fixed); boards refuse them.
REFERENCE = "pretrained"


class RecordError(SuiteError):
    pass


@lru_cache(maxsize=1)
def record_schema() -> dict:
    return parse_json(resources.files("suite").joinpath("schemas/record.schema.json").read_text(), "record.schema.json")


def _finite(obj: Any, where: tuple = ()) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise RecordError(f"{field_path(where)}: non-finite number {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, (*where, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite(v, (*where, i))


def validate_record(rec: dict, source: str = "<record>") -> None:
    """Schema + shape checks; raises :class:`RecordError` with one line naming the source and field."""
    try:
        _finite(rec)
    except RecordError as exc:
        raise RecordError(f"{source}: {exc}") from None
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(record_schema()).iter_errors(rec))
    if err is not None:
        raise RecordError(f"{source}: {schema_field(err)}: {err.message}")
    t = len(rec["sequence"]["tasks"])
    m = rec["matrix"]
    if rec["status"] == "complete" and (len(m) != t or any(len(r) != t for r in m)):
        raise RecordError(f"{source}: matrix: expected {t} x {t} for {t} tasks, got {len(m)} rows")
    if len(rec["zero_shot"]["tasks"]) != t:
        raise RecordError(f"{source}: zero_shot.tasks: expected {t} values")
    steps = [("zero_shot_step", rec["zero_shot_step"])] if "zero_shot_step" in rec else []
    for where, step in steps + [(f"steps[{i}]", s) for i, s in enumerate(rec["steps"])]:
        why = items.check_step(step, where)
        if why:
            raise RecordError(f"{source}: {why}")


def has_items(rec: dict) -> bool:
    """Whether every evaluated step of a record keeps its item-level outcomes."""
    return all("items" in s for s in [rec.get("zero_shot_step", {})] + rec["steps"])


def attach_cost(pretrained: dict[str, Any], attached: dict[str, Any]) -> dict[str, Any]:
    """Accuracy lost by attaching a PET before any training (pretrained − attached), per task and per control;
    0 for forms that start as the identity (LoRA, adapter), the price of random prompts for the others."""
    return {"tasks": [p - a for p, a in zip(pretrained["accuracy"], attached["accuracy"])],
            "controls": {k: v - attached["control_accuracy"][k] for k, v in pretrained["control_accuracy"].items()}}


def recompute_aggregates(rec: dict) -> dict[str, float | None]:
    return metrics.aggregate(rec["matrix"], rec["zero_shot"]["tasks"])


def mean_attach_cost(rec: dict) -> float | None:
    """The attach cost averaged over a record's tasks (``None`` where no PET was attached or it was not measured)."""
    cost = rec.get("attach_cost")
    return float(sum(cost["tasks"]) / len(cost["tasks"])) if cost and cost["tasks"] else None


def metric_value(rec: dict, name: str, aggregates: dict[str, float | None] | None = None) -> float | None:
    """A record's value of a registered metric (:data:`suite.results.metrics.METRICS`). Aggregates are recomputed from
    the matrix (pass ``aggregates`` to reuse a recomputation), never read from what the record claims."""
    m = metrics.metric(name)
    if name == "attach_cost":
        return mean_attach_cost(rec)
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


def group_key(rec: dict) -> tuple[str, ...]:
    """Records that are seeds of one configuration share this key (:meth:`RunIdentity.configuration`)."""
    return RunIdentity.of_record(rec).configuration()


def record_digest(rec: dict) -> str:
    """sha256 of a record's content without any ``verification`` field (what a maintainer verified)."""
    body = {k: v for k, v in rec.items() if k != "verification"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON, written atomically (:func:`suite.paths.write_atomic`)."""
    text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def load_record(path: str | Path) -> dict:
    p = Path(path)
    rec = read_json(p, "record", RecordError)
    if not isinstance(rec, dict):
        raise RecordError(f"{p}: (top level): a record is a JSON object")
    validate_record(rec, str(p))
    return rec


def read_records(paths: list[str | Path], validate: bool = True) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Every record among ``paths`` (files, or folders of ``*.json``): ``(path, record)`` for those that read (and,
    with ``validate``, pass :func:`validate_record`), ``(path, one-line reason)`` for the rest. The suite's one
    reader of record files; a path that does not exist is refused."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RecordError(f"{p}: no such record file or folder")
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    good, bad = [], []
    for f in files:
        try:
            rec = read_json(f, "record", RecordError)
            if not isinstance(rec, dict):
                raise RecordError(f"{f}: (top level): a record is a JSON object")
            if validate:
                validate_record(rec, str(f))
            good.append((f, rec))
        except RecordError as exc:
            bad.append((f, str(exc)))
    return good, bad


def load_records(paths: list[str | Path]) -> list[dict]:
    """The valid records among ``paths``; the first bad one is refused with its reason."""
    good, bad = read_records(paths)
    if bad:
        raise RecordError(bad[0][1])
    return [rec for _, rec in good]


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
        return [d for k in sorted(a) for d in (
            _items_differences(a[k], b[k], tolerance, _key_path(path, k)) if k == "items" else
            record_differences(a[k], b[k], tolerance, _key_path(path, k), accuracy_valued or k in ACCURACY_KEYS))]
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


def _key_path(path: str, key: Any) -> str:
    """``path.key``, or ``path['key']`` (escaped) for a key that a dot would make ambiguous or a line break split, so
    each difference stays one unambiguous line."""
    if isinstance(key, str) and re.fullmatch(r"[\w-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _items_differences(a: Any, b: Any, tolerance: Tolerance, path: str) -> list[str]:
    """Two steps' packed item outcomes (:mod:`suite.results.items`) agree when their sets hold as many items and
    differ on at most ``tolerance.accuracy`` of them (a whole test answer may flip across CPUs, as accuracies may)."""
    if not (isinstance(a, dict) and isinstance(b, dict)) or set(a) != set(b):
        return [f"{path}: item sets differ"]
    pairs = [(f"{path}.tasks[{i}]", x, y) for i, (x, y) in enumerate(zip(a.get("tasks", []), b.get("tasks", [])))]
    if len(a.get("tasks", [])) != len(b.get("tasks", [])) or set(a.get("controls", {})) != set(b.get("controls", {})):
        return [f"{path}: item sets differ"]
    pairs += [(_key_path(f"{path}.controls", k), v, b["controls"][k]) for k, v in a.get("controls", {}).items()]
    out = []
    for where, x, y in pairs:
        try:
            hx, hy = items.hits(x), items.hits(y)
        except ValueError as exc:
            out.append(f"{where}: unreadable item outcomes ({exc})")
            continue
        if hx.shape != hy.shape:
            out.append(f"{where}: {hx.shape[0]} outcomes != {hy.shape[0]}")
        elif (flipped := int((hx != hy).sum())) > tolerance.accuracy * max(1, items.size(x)) + 1e-9:
            out.append(f"{where}: {flipped} of {items.size(x)} item outcomes differ")
    return out


def summary_table(rec: dict[str, Any]) -> str:
    """One screen: the accuracy matrix and the headline metrics of a record."""
    names = rec["sequence"]["tasks"]
    w = max(12, max(len(n) for n in names) + 8)
    lines = [f"{rec['method']['name']} / {rec['pet']['kind'] or '-'} on {rec['sequence']['name']} (seed {rec['seed']})",
             " " * w + "".join(f"{n[:7]:>8s}" for n in names)]
    lines.append(f"{'zero-shot':{w}s}" + "".join(f"{100 * v:8.1f}" for v in rec["zero_shot"]["tasks"]))
    for n, row in zip(names, rec["matrix"]):
        lines.append(f"{'after ' + n:{w}s}"[:w] + "".join(f"{100 * v:8.1f}" for v in row))
    agg = rec["aggregates"]
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines.append("  ".join(f"{k}={fmt(agg.get(k))}" for k in metrics.HEADLINE))
    s = rec.get("summary", {})
    if s:
        lines.append("  ".join(f"{k}={v:.3f}" for k, v in s.items() if v is not None))
    return "\n".join(lines)
