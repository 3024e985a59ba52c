"""The *reported* tier: published numbers of a sequence (``leaderboards/reported/<sequence>.yaml``), shown on its
board page beside the suite's own runs and never ranked, pooled or compared with them.

A reported entry is a paper's table row, not a record: it has no accuracy matrix, seeds or item outcomes, its data
splits and evaluation code are its authors', and nothing in it was recomputed. So the board lists it in a separate
table with its source and protocol notes, and only the maintainers' files under ``reported/`` can hold one: a
submission or a record that claims the tier is refused (:func:`suite.leaderboard.boards.claims_reported`).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema

from suite.config.sequences import read_yaml
from suite.errors import schema_field
from suite.leaderboard.boards import REPORTED_DIR, BoardError, board_for, boards_dir

METRICS = ("transfer", "avg", "last")  # what papers on these sequences publish, in percent


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(resources.files("suite").joinpath("schemas/reported.schema.json").read_text())


def check_reported(data: object, path: Path | str) -> dict:
    """Validate one reported file's content; raises :class:`BoardError` with one line naming the file and field."""
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(data))
    if err is not None:
        raise BoardError(f"{path}: {schema_field(err)}: {err.message}"[:400])
    stem = Path(path).stem
    if data["sequence"] != stem:
        raise BoardError(f"{path}: sequence: {data['sequence']!r}, but the file is named for {stem!r}")
    return data


def load_reported(root: Path | None = None, boards: dict[str, dict] | None = None) -> dict[str, dict]:
    """Sequence name -> its validated reported file (``sequence``, ``backbone``, ``note``, ``entries``); with
    ``boards``, a file whose sequence is on none of them is refused (its numbers would be shown nowhere)."""
    folder = (root or boards_dir()) / REPORTED_DIR
    if not folder.is_dir():
        return {}
    out = {}
    for p in sorted(folder.glob("*.yaml")):
        out[p.stem] = check_reported(read_yaml(p, BoardError, "reported file"), p)
        if boards is not None and board_for(boards, p.stem) is None:
            raise BoardError(f"{p}: sequence: {p.stem!r} is on no board")
    return out


def reported_rows(data: dict) -> list[dict]:
    """The board's rows of one reported file, in the file's order (never sorted by a metric: not a ranking)."""
    rows = []
    for e in data["entries"]:
        src = e["source"]
        rows.append({"method": e["method"], "variant": e.get("variant", ""),
                     "cells": {m: f"{e[m]:.1f}" for m in METRICS}, "numbers": {m: e[m] for m in METRICS},
                     "title": src["title"], "venue": src["venue"], "arxiv": src["arxiv"], "table": src.get("table", ""),
                     "checked": e["checked"], "checked_text": e.get("checked_where") or e.get("taken_from", ""),
                     "protocol_note": e.get("protocol_note", "")})
    return rows
