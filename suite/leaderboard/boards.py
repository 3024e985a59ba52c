"""Board definitions (``leaderboards/*.yaml``), the checks every record must pass to be ranked, and the tiers the
maintainers granted (``leaderboards/verified.yaml``).

A record reaches a board only through :func:`triage`: it must be a complete, schema-valid record of a sequence on
the board, of this suite's sequence version and pinned manifests, with a square matrix whose aggregates are
recomputed (claimed aggregates must agree), run on the board's budget (its backbones, the sequence's training
settings, full test sets), not of a method the board lists as not applicable to its track (``not_applicable``), and
not a duplicate seed of its configuration. A board's control sequences (``control_sequences``: kept to show what the
track is not, e.g. one where later tasks teach what earlier ones need, so nothing forgets) are checked alike and
listed on its page apart, never ranked. Everything else is listed with a reason. A record that passes but was
made by an older version of its sequence or by an incompatible suite version (:func:`stale_reason`) is *stale*:
listed apart with the reason, never ranked with current entries.
Nothing a record says about itself decides its tier: that comes from the verification file, keyed by the record's
content digest. The *reported* tier (published numbers, ``reported/``) is never a record's: one that claims it is
refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema

from suite._version import __version__
from suite.config.run import RunIdentity
from suite.config.sequences import SequenceError, load_sequence, load_sequence_version, read_yaml
from suite.errors import SuiteError, field_path, schema_field
from suite.paths import data_dir, parse_json
from suite.results.analysis import Group, group_records
from suite.results.metrics import METRICS
from suite.results.records import REFERENCE, RecordError, has_items, recompute_aggregates, record_digest, validate_record

TOLERANCE = 1e-9
VERIFIED_FILE = "verified.yaml"
REPORTED_DIR = "reported"  # published numbers per sequence: the "reported" tier (suite.leaderboard.reported)
REPORTED_TIER = "reported"
REPORTED_REFUSAL = (f"tier: {REPORTED_TIER!r} is the tier of published numbers, which only the maintainers' files in "
                    f"leaderboards/{REPORTED_DIR}/ hold; a run record or submission cannot claim it")


class BoardError(SuiteError):
    pass


def boards_dir() -> Path:
    return data_dir("leaderboards", "CLSUITE_BOARDS_DIR", "suite.boards_data")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return parse_json(resources.files("suite").joinpath("schemas/board.schema.json").read_text(), "board.schema.json")


def load_boards(root: Path | None = None) -> dict[str, dict]:
    boards = {}
    for p in sorted((root or boards_dir()).glob("*.yaml")):
        if p.name == VERIFIED_FILE or p.name.endswith("-plan.yaml"):  # the maintainers' files beside the boards
            continue
        data = read_yaml(p, BoardError, "board file")
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(data))
        if err is not None:
            raise BoardError(f"{p}: {schema_field(err)}: {err.message}")
        for key in ("columns", "summary_columns"):
            for i, c in enumerate(data.get(key, [])):
                if c not in METRICS:
                    raise BoardError(f"{p}: {key}.{i}: unknown metric {c!r}; known: {', '.join(METRICS)}")
        if data["rank_by"] not in METRICS:
            raise BoardError(f"{p}: rank_by: unknown metric {data['rank_by']!r}")
        data.setdefault("summary_columns", [data["rank_by"], "forgetting", "zero_shot_retention", "hallucination_fpr"])
        data.setdefault("not_applicable", {})  # method -> why it does not apply to the track: shown as n/a, never ranked
        data.setdefault("control_sequences", {})  # sequence -> why it is a control: listed apart, never ranked
        both = [s for s in data["control_sequences"] if s in data["sequences"]]
        if both:
            raise BoardError(f"{p}: control_sequences.{both[0]}: also in sequences (ranked or a control, not both)")
        boards[data["name"]] = data
    return boards


def board_for(boards: dict[str, dict], sequence: str) -> dict | None:
    """The board that ranks ``sequence`` or lists it as a control (``None`` when no board has it)."""
    return next((b for b in boards.values() if sequence in board_sequences(b)), None)


def board_sequences(board: dict) -> list[str]:
    """A board's ranked sequences, then its control sequences (checked alike, never ranked)."""
    return [*board["sequences"], *board.get("control_sequences", {})]


# ----------------------------------------------------------------------------------------- checks
def claims_reported(obj: object) -> bool:
    """Whether a submission or record says it is of the *reported* tier, which only maintainers' files give."""
    tier = obj.get("tier") if isinstance(obj, dict) else None
    return isinstance(tier, str) and tier.strip().lower() == REPORTED_TIER


def check_record(rec: dict, where: str, boards: dict, board_names: list[str] | None = None) -> None:
    """Everything ``validate`` checks of one record; raises :class:`RecordError` with one line naming the field."""
    if claims_reported(rec):
        raise RecordError(f"{where}: {REPORTED_REFUSAL}")
    validate_record(rec, where)
    seq_name = rec["sequence"]["name"]
    board = board_for(boards, seq_name)
    if board is None or (board_names is not None and board["name"] not in board_names):
        named = f" named by the submission ({board_names})" if board_names is not None else ""
        raise RecordError(f"{where}: sequence.name: {seq_name!r} is on no board{named}")
    method, not_applicable = (rec.get("method") or {}).get("name"), board.get("not_applicable") or {}
    if method in not_applicable:  # the board lists it as n/a with the reason; it is never ranked there
        raise RecordError(f"{where}: method.name: {method!r} does not apply on board {board['name']} (n/a: "
                          f"{not_applicable[method]})")
    try:
        load_sequence(seq_name)
    except SequenceError:
        raise RecordError(f"{where}: sequence.name: unknown sequence {seq_name!r}") from None
    try:  # an older version is checked against the file it ran on (tasks/archive/); boards rank the current one
        seq = load_sequence_version(seq_name, rec["sequence"]["version"])
    except SequenceError:
        raise RecordError(f"{where}: sequence.version: {rec['sequence']['version']} is not a version this suite keeps "
                          f"(the current one, or one in tasks/archive/)") from None
    if rec["zero_shot"].get("reference") != REFERENCE:
        raise RecordError(f"{where}: zero_shot.reference: must be {REFERENCE!r} (the pretrained model without a PET); "
                          f"records made before the reference was fixed cannot be ranked — rerun them")
    why = protocol_conflict(rec, board)
    if why:
        raise RecordError(f"{where}: {why}")
    if not has_items(rec):
        raise RecordError(f"{where}: steps.items: every step must keep its item outcomes (boards recompute accuracies "
                          f"and intervals from them) — rerun with this suite")
    t = len(seq.tasks)
    if list(rec["sequence"]["tasks"]) != [x.name for x in seq.tasks]:
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
    for key, claimed in rec["aggregates"].items():
        value = recomputed.get(key)
        field = field_path(("aggregates", key))
        if key not in recomputed:
            raise RecordError(f"{where}: {field}: not an aggregate of this suite")
        differs = value is not None and not math.isclose(claimed, value, rel_tol=0, abs_tol=TOLERANCE)
        if (value is None) != (claimed is None) or differs:
            raise RecordError(f"{where}: {field}: submitted {claimed} but the matrix gives {value}")


def protocol_conflict(rec: dict, board: dict) -> str | None:
    """Why a record's ``method.protocol`` breaks the board's ``protocol`` rules (``None`` when it does not): a
    replay memory on a rehearsal-free board, a task id at test, a routing the board does not rank (per-batch routing
    reveals the task when a test batch holds one task). A record without the field predates it (every method of
    that time declared no memory, no task id at test and no routing) and is judged as those defaults."""
    rules = board.get("protocol")
    if not rules:
        return None
    used = (rec.get("method") or {}).get("protocol") or {}
    name = board["name"]
    memory = used.get("memory", 0)
    if "memory" in rules and memory > rules["memory"]:
        return (f"method.protocol.memory: {memory} stored examples, but board {name} allows {rules['memory']}"
                + (" (rehearsal-free)" if rules["memory"] == 0 else ""))
    if rules.get("task_id_test") is False and used.get("task_id_test", False):
        return f"method.protocol.task_id_test: the method is given the task id at test; board {name} never gives it"
    routing = used.get("routing", "none")
    if "routing" in rules and routing not in rules["routing"]:
        return (f"method.protocol.routing: {routing!r}; board {name} ranks only {', '.join(rules['routing'])} "
                f"(a batch-wise choice reveals the task when a test batch holds one task)")
    return None


def off_budget(rec: dict, board: dict, own_version: bool = False) -> str | None:
    """Why a record was not run on the board's budget (``None`` when it was): backbone, training, eval size.

    By default a record of another sequence version is off budget (what submissions must meet); with
    ``own_version`` the training is checked against the version the record ran on, so a stale record (listed apart,
    never ranked) is still held to the budget of its own time."""
    budget = board.get("budget", {})
    model = rec["model"]["spec"]
    if budget.get("backbones") and model not in budget["backbones"]:
        return f"model.spec: {model!r} is not a backbone of this board ({', '.join(budget['backbones'])})"
    cfg = rec.get("config") or {}
    if cfg.get("max_eval") is not None:
        return f"config.max_eval: {cfg['max_eval']} (boards evaluate full test sets)"
    try:
        seq = load_sequence(rec["sequence"]["name"])
        if own_version:
            seq = load_sequence_version(rec["sequence"]["name"], rec["sequence"]["version"])
    except SequenceError:
        return None
    if rec["sequence"]["version"] != seq.version:
        return f"sequence.version: v{rec['sequence']['version']}, but the board ranks v{seq.version}"
    expected = seq.default_training((rec.get("pet") or {}).get("kind"), (rec.get("method") or {}).get("name"))
    got = rec.get("training") or {}
    diff = [k for k in expected if got.get(k) != expected[k]]
    if diff:
        k = diff[0]
        return f"training.{k}: {got.get(k)!r} but the board's budget is the sequence's {expected[k]!r}"
    return None


# ------------------------------------------------------------------------------------------ staleness
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:[.+-]|$)")


def suite_series(version: str | None) -> str | None:
    """The release series a suite version belongs to (``"0.1"`` for 0.1.x, ``"1"`` for 1.y.z), ``None`` when the
    version does not parse (``0+unknown``, missing)."""
    found = _RELEASE.match(version or "")
    if not found:
        return None
    major, minor = int(found.group(1)), int(found.group(2))
    return f"{major}.{minor}" if major == 0 else str(major)


def suite_compatible(version: str | None, current: str = __version__) -> bool:
    """Whether a record made by suite ``version`` can be ranked with records of the ``current`` suite: the same
    major version and, before 1.0, the same minor. Why: the suite versions itself semantically, and before 1.0 a
    minor release may change what a record's numbers mean (metrics, evaluation, record fields) while a patch
    release does not; from 1.0 only a major release may. A version that does not parse cannot be shown
    compatible. The board's one definition of suite compatibility."""
    series = suite_series(version)
    return series is not None and series == suite_series(current)


def stale_reason(rec: dict, current_sequence_version: int, current_suite: str = __version__) -> str | None:
    """Why a (checked) record is stale — made by another version of its sequence than the current file's, or by a
    suite version :func:`suite_compatible` rejects — as shown on the board (``sequence v2, current v3``; ``suite
    0.0.9, current 0.1.x``); ``None`` for a current record."""
    why = []
    version = rec["sequence"]["version"]
    if version != current_sequence_version:
        why.append(f"sequence v{version}, current v{current_sequence_version}")
    suite = (rec.get("environment") or {}).get("suite")
    if not suite_compatible(suite, current_suite):
        why.append(f"suite {suite or 'unknown'}, current {series_label(current_suite)}")
    return "; ".join(why) or None


def series_label(version: str) -> str:
    """``0.1.x`` for 0.1.3, ``1.x`` for 1.4.0: the releases compatible with ``version`` (the version itself when
    it does not parse)."""
    series = suite_series(version)
    return f"{series}.x" if series else version


def load_verifications(root: Path | None = None) -> dict[str, dict]:
    """Record digest -> the maintainers' verification (tier, date, tolerance), from ``verified.yaml``."""
    path = (root or boards_dir()) / VERIFIED_FILE
    if not path.is_file():
        return {}
    data = read_yaml(path, BoardError, "verification file") or []
    if not isinstance(data, list):
        raise BoardError(f"{path}: (top level): a list of verifications")
    out = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("digest"), str) or item.get("tier") not in ("reproduced",):
            raise BoardError(f"{path}: {i}: needs digest (sha256 of the record) and tier: reproduced")
        out[item["digest"]] = item
    return out


@dataclass
class Stale:
    """Seeds of one configuration made by one older sequence version or incompatible suite series: shown apart
    with ``reason``, never ranked, tied or counted as a leader."""

    group: Group
    reason: str
    tier: str


@dataclass
class Triage:
    """Records sorted for a board build: the groups it ranks, the stale groups it lists apart, and every record it
    refused, with the reason."""

    groups: list[Group] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, one-line reason)
    off_budget: list[tuple[str, str]] = field(default_factory=list)
    tiers: dict[tuple, str] = field(default_factory=dict)  # group key -> "reproduced" when every seed is verified
    stale: list[Stale] = field(default_factory=list)
    files: dict[int, str] = field(default_factory=dict)  # id(record) -> its file name in the results folder


def triage(named: list[tuple[str, dict]], boards: dict, verified: dict[str, dict],
           suite: str = __version__) -> Triage:
    """Apply :func:`check_record`, the budget and duplicate-seed rules to ``(file name, record)`` pairs, and set
    apart the stale records (:func:`stale_reason`) of the ``suite`` version given."""
    out = Triage()
    accepted: list[dict] = []
    stale: dict[tuple, list[dict]] = {}
    reasons: dict[int, str] = {}
    seen: dict[tuple, str] = {}
    digests: dict[int, str] = {}
    for name, rec in named:
        try:
            check_record(rec, name, boards)
        except RecordError as exc:
            out.rejected.append((name, str(exc)))
            continue
        why = stale_reason(rec, load_sequence(rec["sequence"]["name"]).version, suite)
        reason = off_budget(rec, board_for(boards, rec["sequence"]["name"]), own_version=why is not None)
        if reason:
            out.off_budget.append((name, f"{name}: {reason}"))
            continue
        era = (rec["sequence"]["version"], suite_series((rec.get("environment") or {}).get("suite")))
        seed_key = (*RunIdentity.of_record(rec).key(), era if why else None)
        if seed_key in seen:
            out.rejected.append((name, f"{name}: seed: duplicate of seed {rec['seed']} of the same configuration "
                                       f"in {seen[seed_key]}"))
            continue
        seen[seed_key] = name
        digests[id(rec)] = record_digest(rec)
        out.files[id(rec)] = name
        if why:
            reasons[id(rec)] = why
            stale.setdefault(era, []).append(rec)
        else:
            accepted.append(rec)
    out.groups = group_records(accepted)
    for g in out.groups:
        if all(digests[id(r)] in verified for r in g.records):
            out.tiers[g.key] = "reproduced"
    for era in sorted(stale, key=lambda e: (e[0], e[1] or "")):
        for g in group_records(stale[era]):
            tier = "reproduced" if all(digests[id(r)] in verified for r in g.records) else "self-reported"
            why = "; ".join(dict.fromkeys(reasons[id(r)] for r in g.records))  # suite versions of one series may differ
            out.stale.append(Stale(g, why, tier))
    return out
