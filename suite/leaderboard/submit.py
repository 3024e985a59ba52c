"""Submissions: pack run records, validate them (recomputing every aggregate), and reproduce an entry."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import yaml

from suite.config.run import RunIdentity
from suite.config.sequences import read_yaml
from suite.errors import SuiteError
from suite.leaderboard.boards import (
    REPORTED_REFUSAL,
    VERIFIED_FILE,
    board_for,
    boards_dir,
    check_record,
    claims_reported,
    load_boards,
    off_budget,
)
from suite.paths import inside, read_json, safe_name, write_atomic
from suite.results.records import (
    RecordError,
    load_record,
    record_digest,
    write_json_atomic,
)

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
    if claims_reported(sub):
        return [f"{p}: {REPORTED_REFUSAL}"]
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
            key = RunIdentity.of_record(rec).configuration()
            if rec["seed"] in seeds[key]:
                raise RecordError(f"{where}: seed: seed {rec['seed']} of this configuration appears twice")
            seeds[key].add(rec["seed"])
        except RecordError as exc:
            problems.append(str(exc))
    for (seq, method, pet, *_), s in seeds.items():
        need = board_for(boards, seq)["min_seeds"]
        if len(s) < need:
            problems.append(f"{p}: records: {method}/{pet} on {seq} has {len(s)} seed(s); the board needs {need}")
    return problems


def accept(submission: str | Path, results: str | Path) -> list[Path]:
    """Put a valid submission's records into ``results`` (the folder the board is built from): the submission
    is validated first and refused whole with its reasons; each record goes under its own sanitised run name, and
    a record already there is replaced only by the identical record."""

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


def add_verification(rec: dict, max_abs_diff: float, verified_file: str | Path | None = None) -> Path:
    """Append (or refresh) the record's entry in the verification file, written atomically."""

    path = Path(verified_file) if verified_file else boards_dir() / VERIFIED_FILE
    items = (read_yaml(path, RecordError, "verification file") or []) if path.is_file() else []
    digest = record_digest(rec)
    items = [i for i in items if i.get("digest") != digest]
    items.append({"digest": digest, "tier": "reproduced", "run_id": rec["run_id"], "max_abs_diff": float(max_abs_diff),
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    text = ("# Maintainers' verifications (clsuite reproduce); see leaderboards/README.md\n"
            + yaml.safe_dump(items, sort_keys=False))
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
