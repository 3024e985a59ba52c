"""Submissions: pack run records, validate them (recomputing every aggregate), and reproduce an entry."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import SuiteError
from ..paths import read_json
from ..records import RecordError, group_key, load_record, record_differences, record_digest, strip_timings, write_json_atomic
from ..sequences import SequenceError, load_sequence, read_yaml
from .boards import VERIFIED_FILE, board_for, boards_dir, check_record, load_boards, off_budget

SUBMISSION_SCHEMA = "clsuite/submission/v1"


def pack(record_paths: list[str], out: str | Path, method_source: str = "") -> Path:
    """Bundle records (plus their config and environment) into one submission file."""
    records = [load_record(p) for p in record_paths]
    boards = load_boards()
    names = {b["name"] for r in records if (b := board_for(boards, r["sequence"]["name"]))}
    sub = {"schema": SUBMISSION_SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "board": sorted(names)[0] if len(names) == 1 else sorted(names),
           "method_source": method_source or records[0]["method"].get("source", ""), "records": records}
    return write_json_atomic(out, sub)


def validate_submission(path: str | Path) -> list[str]:
    """Check a submission; returns problems as one-line reasons (empty when valid)."""
    p = Path(path)
    try:
        sub = read_json(p, "submission")
    except SuiteError as exc:
        return [str(exc)]
    if not isinstance(sub, dict) or sub.get("schema") != SUBMISSION_SCHEMA or not isinstance(sub.get("records"), list):
        return [f"{p}: schema: not a {SUBMISSION_SCHEMA} file (schema, board, records)"]
    boards = load_boards()
    board_names = sub.get("board") if isinstance(sub.get("board"), list) else [sub.get("board")]
    if not all(isinstance(b, str) for b in board_names):
        return [f"{p}: board: a board name or a list of names, got {json.dumps(sub.get('board'))[:80]}"]
    unknown = [b for b in board_names if b not in boards]
    if unknown:
        return [f"{p}: board: unknown board {unknown[0]!r}; known: {', '.join(boards)}"]
    if not sub["records"]:
        return [f"{p}: records: the submission holds no records"]
    problems, seeds = [], defaultdict(set)
    for i, rec in enumerate(sub["records"]):
        where = f"{p}: records.{i}"
        try:
            if not isinstance(rec, dict):
                raise RecordError(f"{where}: a record is a JSON object")
            check_record(rec, where, boards, board_names)
            reason = off_budget(rec, board_for(boards, rec["sequence"]["name"]))
            if reason:
                raise RecordError(f"{where}: {reason}")
            key = group_key(rec)
            if rec["seed"] in seeds[key]:
                raise RecordError(f"{where}: seed: seed {rec['seed']} of this configuration appears twice")
            seeds[key].add(rec["seed"])
        except RecordError as exc:
            problems.append(str(exc))
    for (seq, method, pet, _), s in seeds.items():
        need = board_for(boards, seq)["min_seeds"]
        if len(s) < need:
            problems.append(f"{p}: records: {method}/{pet} on {seq} has {len(s)} seed(s); the board needs {need}")
    return problems


def accept(submission: str | Path, results: str | Path) -> list[Path]:
    """Put a valid submission's records into ``results`` (the folder the board is built from): the submission
    is validated first and refused whole with its reasons; each record goes under its own sanitised run name, and
    a record already there is replaced only by the identical record."""
    from ..paths import inside, safe_name

    problems = validate_submission(submission)
    if problems:
        raise RecordError(f"{submission}: refused ({len(problems)} problem(s)); first: {problems[0]}")
    records = read_json(submission, "submission")["records"]
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    targets = [inside(out, f"{safe_name(str(r.get('run_id') or 'record'), max_len=160)}.json") for r in records]
    for path, rec in zip(targets, records):
        if path.exists() and read_json(path, "record", RecordError) != rec:
            raise RecordError(f"{path}: another record has this name; nothing was written")
    return [write_json_atomic(path, rec) for path, rec in zip(targets, records)]


# What "reproduced" means (README, "Reproducing a record"): on the machine that wrote a record, a re-run is
# bit-identical (CPU, fixed seed); on another CPU or a GPU, floating-point reassociation can change whole test
# answers over a run's steps, so a re-run reproduces a record when every accuracy-matrix entry and every
# aggregate is within this many accuracy points (absolute; 0.01 = one point).
REPRODUCE_TOLERANCE = 0.01


def reproduce(record_path: str | Path, tolerance: float = REPRODUCE_TOLERANCE, out_dir: str | Path | None = None,
              verified_file: str | Path | None = None) -> dict[str, Any]:
    """Re-run a record's configuration and compare its accuracy matrix and aggregates within ``tolerance``
    (absolute, on accuracies). When they agree, the record's digest is added to the maintainers' verification
    file (default ``leaderboards/verified.yaml``), the board's only source of the ``reproduced`` tier; the record
    itself is not modified. ``bit_identical`` says whether the whole record (timings aside) came out the same."""
    from ..runner import RunConfig, Runner

    rec = load_record(record_path)
    tmp = Path(out_dir or Path(record_path).parent / ".reproduce")
    recorded = dict(rec.get("config") or {})
    sequence = rec["sequence"]["name"]
    if recorded.get("sequence"):  # a sequence given as a file: re-run that file if it still holds this sequence
        try:
            if load_sequence(recorded["sequence"]).name == sequence:
                sequence = recorded["sequence"]
        except SequenceError:
            pass
    recorded.update(sequence=sequence, model=rec["model"]["spec"], pet=rec["pet"]["kind"],
                    pet_options=rec["pet"]["options"], method=rec["method"]["name"], method_options=rec["method"]["options"],
                    seed=rec["seed"], training=rec.get("training", {}))
    cfg = RunConfig.from_dict({**recorded, "out": str(tmp), "run_dir": str(tmp / "runs"), "progress": False,
                               "command": f"clsuite reproduce {record_path}"}, str(record_path))
    new = Runner(cfg).run()
    diff = max(abs(a - b) for ra, rb in zip(rec["matrix"], new["matrix"]) for a, b in zip(ra, rb))
    agg = max((abs(a - new["aggregates"].get(k)) for k, a in rec["aggregates"].items()
               if a is not None and new["aggregates"].get(k) is not None), default=0.0)
    ok = diff <= tolerance and agg <= tolerance
    same = not record_differences(strip_timings(_comparable(rec)), strip_timings(_comparable(new)))
    result = {"reproduced": ok, "bit_identical": same, "max_abs_diff": diff, "max_aggregate_diff": agg,
              "tolerance": tolerance}
    if ok:
        add_verification(rec, diff, verified_file)
    return result


def _comparable(rec: dict) -> dict:
    """A record without what a re-run changes by construction (its command, config paths, run id)."""
    return {k: v for k, v in rec.items() if k not in ("config", "run_id", "command")}


def add_verification(rec: dict, max_abs_diff: float, verified_file: str | Path | None = None) -> Path:
    """Append (or refresh) the record's entry in the verification file, written atomically."""
    import yaml

    path = Path(verified_file) if verified_file else boards_dir() / VERIFIED_FILE
    items = (read_yaml(path, RecordError, "verification file") or []) if path.is_file() else []
    digest = record_digest(rec)
    items = [i for i in items if i.get("digest") != digest]
    items.append({"digest": digest, "tier": "reproduced", "run_id": rec["run_id"], "max_abs_diff": float(max_abs_diff),
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("# Maintainers' verifications (clsuite reproduce); see leaderboards/README.md\n"
                   + yaml.safe_dump(items, sort_keys=False))
    tmp.replace(path)
    return path
