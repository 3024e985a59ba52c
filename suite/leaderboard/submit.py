"""Submissions: pack run records, validate them (recomputing every aggregate), and reproduce an entry."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..records import RecordError, load_record, recompute_aggregates, validate_record, write_json_atomic
from ..sequences import SequenceError, load_sequence
from .boards import board_for, load_boards

SUBMISSION_SCHEMA = "clsuite/submission/v1"
TOLERANCE = 1e-9


def pack(record_paths: list[str], out: str | Path, method_source: str = "") -> Path:
    """Bundle records (plus their config and environment) into one submission file."""
    records = [load_record(p) for p in record_paths]
    boards = load_boards()
    names = {b["name"] for r in records if (b := board_for(boards, r["sequence"]["name"]))}
    sub = {"schema": SUBMISSION_SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "board": sorted(names)[0] if len(names) == 1 else sorted(names),
           "method_source": method_source or records[0]["method"].get("source", ""), "records": records}
    return write_json_atomic(out, sub)


def _check_record(rec: dict, where: str, boards: dict, board_names: list[str]) -> None:
    validate_record(rec, where)
    seq_name = rec["sequence"]["name"]
    board = board_for(boards, seq_name)
    if board is None or board["name"] not in board_names:
        raise RecordError(f"{where}: sequence.name: {seq_name!r} is on no board named by the submission ({board_names})")
    try:
        seq = load_sequence(seq_name)
    except SequenceError:
        raise RecordError(f"{where}: sequence.name: unknown sequence {seq_name!r}") from None
    if rec["sequence"]["version"] != seq.version:
        raise RecordError(f"{where}: sequence.version: {rec['sequence']['version']} but this suite has v{seq.version}")
    t = len(seq.tasks)
    if [x["name"] if isinstance(x, dict) else x for x in rec["sequence"]["tasks"]] != [x.name for x in seq.tasks]:
        raise RecordError(f"{where}: sequence.tasks: do not match {seq_name} v{seq.version}")
    if rec["status"] != "complete" or len(rec["matrix"]) != t or any(len(row) != t for row in rec["matrix"]):
        raise RecordError(f"{where}: matrix: must be complete {t} x {t}")
    for spec in seq.tasks + seq.control_sets:
        pinned = spec.pinned_manifest
        got = rec["sequence"]["manifests"].get(spec.name)
        if pinned and got != pinned:
            raise RecordError(f"{where}: sequence.manifests.{spec.name}: {str(got)[:12]}… does not match the pinned "
                              f"{pinned[:12]}… of {seq_name}")
    recomputed = recompute_aggregates(rec)
    for key, value in recomputed.items():
        claimed = rec["aggregates"].get(key)
        if (value is None) != (claimed is None) or (value is not None and not math.isclose(claimed, value, rel_tol=0, abs_tol=TOLERANCE)):
            raise RecordError(f"{where}: aggregates.{key}: submitted {claimed} but the matrix gives {value}")


def validate_submission(path: str | Path) -> list[str]:
    """Check a submission; returns problems as one-line reasons (empty when valid)."""
    p = Path(path)
    try:
        sub = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{p}: cannot read submission ({exc})"]
    if not isinstance(sub, dict) or sub.get("schema") != SUBMISSION_SCHEMA or not isinstance(sub.get("records"), list):
        return [f"{p}: schema: not a {SUBMISSION_SCHEMA} file (schema, board, records)"]
    boards = load_boards()
    board_names = sub.get("board") if isinstance(sub.get("board"), list) else [sub.get("board")]
    unknown = [b for b in board_names if b not in boards]
    if unknown:
        return [f"{p}: board: unknown board {unknown[0]!r}; known: {', '.join(boards)}"]
    problems, seeds = [], defaultdict(set)
    for i, rec in enumerate(sub["records"]):
        where = f"{p}: records.{i}"
        try:
            if not isinstance(rec, dict):
                raise RecordError(f"{where}: a record is a JSON object")
            _check_record(rec, where, boards, board_names)
            key = (rec["sequence"]["name"], rec["method"]["name"], rec["pet"]["kind"],
                   json.dumps([rec["pet"]["options"], rec["method"]["options"]], sort_keys=True))
            seeds[key].add(rec["seed"])
        except RecordError as exc:
            problems.append(str(exc))
    for (seq, method, pet, _), s in seeds.items():
        need = board_for(boards, seq)["min_seeds"]
        if len(s) < need:
            problems.append(f"{p}: records: {method}/{pet} on {seq} has {len(s)} seed(s); the board needs {need}")
    return problems


def reproduce(record_path: str | Path, tolerance: float = 1e-4, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-run a record's configuration and compare matrices; marks the record ``reproduced`` when they agree."""
    from ..runner import RunConfig, Runner

    rec = load_record(record_path)
    tmp = Path(out_dir or Path(record_path).parent / ".reproduce")
    recorded = dict(rec.get("config") or {})
    recorded.update(sequence=rec["sequence"]["name"], model=rec["model"]["spec"], pet=rec["pet"]["kind"],
                    pet_options=rec["pet"]["options"], method=rec["method"]["name"], method_options=rec["method"]["options"],
                    seed=rec["seed"], training=rec.get("training", {}))
    cfg = RunConfig.from_dict({**recorded, "out": str(tmp), "run_dir": str(tmp / "runs"), "progress": False,
                               "command": f"clsuite reproduce {record_path}"}, str(record_path))
    new = Runner(cfg).run()
    diff = max(abs(a - b) for ra, rb in zip(rec["matrix"], new["matrix"]) for a, b in zip(ra, rb))
    ok = diff <= tolerance
    result = {"reproduced": ok, "max_abs_diff": diff, "tolerance": tolerance}
    if ok:
        rec["verification"] = {"tier": "reproduced", "max_abs_diff": diff,
                               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(record_path, rec)
    return result
