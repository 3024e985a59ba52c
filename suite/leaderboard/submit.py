"""Submissions: pack run records, validate them (recomputing every aggregate), check the submitter's checklist
against them, and reproduce an entry.

A pull request adds a submission as a folder ``submissions/<name>/`` holding the packed file
(:data:`SUBMISSION_FILE`, made by :func:`pack`) and the submitter's :data:`CHECKLIST_FILE`
(``suite/schemas/checklist.schema.json``): what the method is, where its code lives, and what it uses (memory, task
id at test, routing, extra data, pretrained weights). Nothing in the checklist is taken on trust: each declaration
the records also state must agree with every record, so a reviewer reads declarations that the records back."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from suite.config.run import RunIdentity
from suite.config.sequences import read_yaml
from suite.errors import SuiteError, schema_field
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
from suite.paths import inside, parse_json, read_json, safe_name, write_atomic
from suite.results.records import (
    RecordError,
    load_record,
    record_digest,
    write_json_atomic,
)

SUBMISSION_SCHEMA = "clsuite/submission/v1"
SUBMISSION_FILE = "submission.json"  # the packed file in a submission folder (submissions/<name>/)
CHECKLIST_FILE = "checklist.yaml"  # the submitter's declarations beside it
# method.protocol of a record that predates the field: what every method of that time used (boards.protocol_conflict
# judges such records the same way)
PROTOCOL_DEFAULTS: dict[str, Any] = {"memory": 0, "task_id_test": False, "routing": "none"}


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


def submission_files(path: str | Path, checklist: str | Path | None = None) -> tuple[Path, Path | None]:
    """The packed file and the checklist of a submission named by ``path``: a submission folder gives its
    :data:`SUBMISSION_FILE` and :data:`CHECKLIST_FILE` (the folder of a pull request must have both); a file gives
    itself and the checklist beside it when there is one. An explicit ``checklist`` wins over either."""
    p = Path(path)
    if p.is_dir():
        return p / SUBMISSION_FILE, Path(checklist) if checklist else p / CHECKLIST_FILE
    beside = p.parent / CHECKLIST_FILE
    return p, Path(checklist) if checklist else (beside if beside.is_file() else None)


def check_submission(path: str | Path, checklist: str | Path | None = None) -> list[str]:
    """Everything ``clsuite validate`` checks of a submission file or folder: :func:`validate_submission`, then the
    checklist (when there is one, see :func:`submission_files`) against the records. One-line reasons; empty when
    valid."""
    sub, found = submission_files(path, checklist)
    problems = validate_submission(sub)
    if found is not None:
        problems += check_checklist(found, sub)
    return problems


@lru_cache(maxsize=1)
def _checklist_schema() -> dict:
    return parse_json(resources.files("suite").joinpath("schemas/checklist.schema.json").read_text(),
                      "checklist.schema.json")


def load_checklist(path: str | Path) -> dict:
    """A checklist file, parsed and checked against ``suite/schemas/checklist.schema.json``; a missing, malformed
    or incomplete one is :class:`RecordError` in one line naming the file and field (the unfilled template fails
    here too: its values are empty)."""
    data = read_yaml(path, RecordError, "checklist")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_checklist_schema()).iter_errors(data))
    if err is not None:
        raise RecordError(f"{path}: {schema_field(err)}: {err.message}"[:400])
    return data


def _show(value: object) -> str:
    """A value from a file for a one-line message: JSON (newlines escaped), cut short."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def _declared_weights(checklist: dict) -> list[str]:
    weights = checklist["protocol"]["pretrained_weights"]
    return [weights] if isinstance(weights, str) else list(weights)


def check_checklist(checklist: str | Path, submission: str | Path) -> list[str]:
    """The checklist's declarations against the submission's records, each disagreement one line naming the
    checklist file and field: the method's name, its protocol (memory, task id at test, routing), the pretrained
    weights (the records' ``model.spec``) and the list of run ids. A submission that cannot be read gives no
    reasons here (:func:`validate_submission` names them)."""
    if not Path(checklist).exists():
        return [f"{checklist}: (file): no such checklist; copy submissions/TEMPLATE.checklist.yaml there and fill it in"]
    try:
        declared = load_checklist(checklist)
    except RecordError as exc:
        return [str(exc)]
    try:
        sub = read_json(submission, "submission")
    except SuiteError:
        return []
    records = sub.get("records") if isinstance(sub, dict) else None
    if not isinstance(records, list):
        return []
    recs = [(i, r) for i, r in enumerate(records) if isinstance(r, dict)]

    def run_id(rec: dict) -> str:
        return _show(rec.get("run_id"))

    def disagree(field: str, claim: object, got: list[tuple[int, dict, object]], what: str) -> list[str]:
        """One reason for ``field`` when some records state other than ``claim``: the first of them, and how many."""
        off = [(i, rec, value) for i, rec, value in got if value != claim]
        if not off:
            return []
        i, rec, value = off[0]
        more = f" (and {len(off) - 1} more record(s))" if len(off) > 1 else ""
        return [f"{checklist}: {field}: declares {_show(claim)}, but records.{i} (run_id {run_id(rec)}) states "
                f"{what} {_show(value)}{more}"]

    def method(rec: dict) -> dict:
        return rec.get("method") if isinstance(rec.get("method"), dict) else {}

    def protocol(rec: dict) -> dict:
        used = method(rec).get("protocol")
        return {**PROTOCOL_DEFAULTS, **(used if isinstance(used, dict) else {})}

    problems = disagree("method", declared["method"], [(i, r, method(r).get("name")) for i, r in recs], "method.name")
    for key in ("memory", "task_id_test", "routing"):
        problems += disagree(f"protocol.{key}", declared["protocol"][key],
                             [(i, r, protocol(r)[key]) for i, r in recs], f"method.protocol.{key}")
    weights = _declared_weights(declared)
    specs = [(i, r, (r.get("model") if isinstance(r.get("model"), dict) else {}).get("spec")) for i, r in recs]
    off = [(i, r, spec) for i, r, spec in specs if spec not in weights]
    if off:
        i, rec, spec = off[0]
        more = f" (and {len(off) - 1} more record(s))" if len(off) > 1 else ""
        problems.append(f"{checklist}: protocol.pretrained_weights: declares "
                        f"{_show(declared['protocol']['pretrained_weights'])}, but records.{i} (run_id {run_id(rec)}) "
                        f"ran on model.spec {_show(spec)}{more}")
    unused = [w for w in weights if w not in [spec for _, _, spec in specs]]
    if unused and not off:  # one reason per wrong declaration
        problems.append(f"{checklist}: protocol.pretrained_weights: declares {_show(unused[0])}, which no record "
                        f"of the submission ran on")
    listed, ids = declared["records"], [r.get("run_id") for _, r in recs]
    missing = [(i, r) for i, r in recs if r.get("run_id") not in listed]
    if missing:
        i, rec = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(f"{checklist}: records: does not list records.{i} of the submission (run_id "
                        f"{run_id(rec)}){more}")
    extra = [x for x in listed if x not in ids]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        problems.append(f"{checklist}: records: lists run_id {_show(extra[0])}, which is not a record of the "
                        f"submission{more}")
    return problems


def describe_checklist(path: str | Path) -> str:
    """What a valid checklist declares, in one line (the validation report shows it to the reviewer)."""
    c = load_checklist(path)
    p = c["protocol"]
    extra = f"yes ({p['extra_data']['what'].strip()})" if p["extra_data"]["used"] else "none"
    text = (f"method {c['method']} at {c['method_source']} ({c['code_version']}); memory {p['memory']}, task id at "
            f"test {'yes' if p['task_id_test'] else 'no'}, routing {p['routing']}, extra data {extra}, pretrained "
            f"weights {', '.join(_declared_weights(c))}; {len(c['records'])} record(s)")
    return " ".join(text.split())[:400]


def accept(submission: str | Path, results: str | Path, checklist: str | Path | None = None) -> list[Path]:
    """Put a valid submission's records into ``results`` (the folder the board is built from): the submission
    (a file, or a ``submissions/<name>/`` folder) is validated first, its checklist included
    (:func:`check_submission`), and refused whole with its reasons; each record goes under its own sanitised run
    name, and a record already there is replaced only by the identical record."""

    problems = check_submission(submission, checklist)
    if problems:
        raise RecordError(f"{submission}: refused ({len(problems)} problem(s)); first: {problems[0]}")
    records = read_json(submission_files(submission)[0], "submission")["records"]
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
