"""Board definitions (``leaderboards/*.yaml``) and the entries a board ranks, built from results records."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

import jsonschema
import yaml

from ..records import recompute_aggregates
from ..sweep import mean_ci

LOWER_IS_BETTER = {"forgetting", "hallucination_fpr", "hijacking_rate", "retrieval_confident_mismatch", "ece",
                   "trainable_parameters", "basis_bytes", "wall_time_s"}
PERCENT = {"transfer", "avg", "last", "forgetting", "bwt", "fwt", "avg_incremental", "zero_shot_retention",
           "hallucination_fpr", "hijacking_rate", "retrieval_confident_mismatch", "ece"}


class BoardError(ValueError):
    pass


def boards_dir() -> Path:
    env = os.environ.get("CLSUITE_BOARDS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "leaderboards"
    return repo if repo.is_dir() else _installed_data_dir("suite.boards_data")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(resources.files("suite").joinpath("schemas/board.schema.json").read_text())


def load_boards(root: Path | None = None) -> dict[str, dict]:
    boards = {}
    for p in sorted((root or boards_dir()).glob("*.yaml")):
        data = yaml.safe_load(p.read_text())
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(data))
        if err is not None:
            raise BoardError(f"{p}: {'.'.join(map(str, err.absolute_path)) or '(top level)'}: {err.message}")
        boards[data["name"]] = data
    return boards


def board_for(boards: dict[str, dict], sequence: str) -> dict | None:
    return next((b for b in boards.values() if sequence in b["sequences"]), None)


def column_value(rec: dict, column: str) -> float | None:
    """One record's value of a board column; aggregates are recomputed from the matrix, never trusted."""
    if column in ("transfer", "avg", "last", "forgetting", "bwt", "fwt", "avg_incremental"):
        return recompute_aggregates(rec).get(column)
    if column in ("trainable_parameters", "basis_bytes", "wall_time_s"):
        return rec["efficiency"].get(column, 0 if column == "basis_bytes" else None)
    return rec.get("summary", {}).get(column)


@dataclass
class Entry:
    """All seeds of one (sequence, method, PET, options) on a board."""

    sequence: str
    method: str
    pet: str
    records: list[dict] = field(default_factory=list)
    tier: str = "self-reported"

    @property
    def slug(self) -> str:
        import hashlib

        key = json.dumps([self.sequence, self.method, self.pet, self.records[0]["pet"]["options"],
                          self.records[0]["method"]["options"]], sort_keys=True)
        return f"{self.sequence}--{self.method}--{self.pet}--{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    @property
    def seeds(self) -> list[int]:
        return sorted(r["seed"] for r in self.records)

    def stat(self, column: str) -> tuple[float, float] | None:
        vals = [v for v in (column_value(r, column) for r in self.records) if v is not None]
        return mean_ci(vals) if vals else None


def group_entries(records: list[dict], tiers: dict[str, str] | None = None) -> list[Entry]:
    groups: dict[tuple, Entry] = {}
    for r in records:
        key = (r["sequence"]["name"], r["method"]["name"], r["pet"]["kind"] or "-",
               json.dumps([r["pet"]["options"], r["method"]["options"]], sort_keys=True))
        e = groups.setdefault(key, Entry(key[0], key[1], key[2]))
        e.records.append(r)
        if r.get("verification", {}).get("tier") == "reproduced":
            e.tier = "reproduced"
    return sorted(groups.values(), key=lambda e: (e.sequence, e.method, e.pet))


def _installed_data_dir(package: str) -> Path:
    """Folder of a data package installed without ``__init__`` (a namespace package) by ``pip install .``."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package}: data folder not installed")
    return Path(list(spec.submodule_search_locations)[0])
