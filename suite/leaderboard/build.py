"""Build the static leaderboard site from results records: index, one page per board, one page per entry.

Pages are Jinja2 templates with autoescaping on (anything from a record — method names, options, commands —
is text, never markup); the site uses no server and fetches nothing (its CSS and JS are local files).
"""
from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..records import RecordError, load_record
from .boards import LOWER_IS_BETTER, PERCENT, Entry, boards_dir, group_entries, load_boards
from .plots import board_comparison, plot_record


def _fmt(column: str, stat: tuple[float, float] | None) -> tuple[str, float]:
    if stat is None:
        return "–", float("nan")
    mean, ci = stat
    if column in PERCENT:
        return (f"{100 * mean:.1f} ± {100 * ci:.1f}" if ci else f"{100 * mean:.1f}"), mean
    if column == "basis_bytes":
        return f"{mean / 1024:.1f} KiB", mean
    if column == "wall_time_s":
        return f"{mean:.1f} s", mean
    return f"{mean:,.0f}", mean


def load_results(results: str | Path) -> list[dict]:
    recs = []
    for p in sorted(Path(results).glob("*.json")):
        try:
            rec = load_record(p)
        except RecordError as exc:
            print(f"clsuite: skipping {exc}", file=sys.stderr)
            continue
        if rec["status"] == "complete":
            recs.append(rec)
    return recs


def default_site_dir() -> Path:
    """``leaderboards/site`` in a checkout; ``./leaderboard-site`` for an installed suite (never site-packages)."""
    root = boards_dir()
    installed = any(part in ("site-packages", "dist-packages") for part in root.parts)
    return Path("leaderboard-site") if installed else root / "site"


def build_site(results: str | Path = "results", out: str | Path | None = None) -> Path:
    out = Path(out) if out else default_site_dir()
    records = load_results(results)
    boards = load_boards()
    env = Environment(loader=FileSystemLoader(str(boards_dir() / "templates")), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    if out.exists():
        shutil.rmtree(out)
    (out / "entries").mkdir(parents=True)
    for static in ("style.css", "sort.js"):
        shutil.copy(boards_dir() / "templates" / static, out / static)
    common = {"built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "n_records": len(records)}
    entries = group_entries(records)
    index = []
    for board in boards.values():
        seq_blocks = []
        n_entries = 0
        for seq in board["sequences"]:
            mine = [e for e in entries if e.sequence == seq and len(set(e.seeds)) >= board["min_seeds"]]
            if not mine:
                continue
            key = board["rank_by"]
            sign = 1 if key in LOWER_IS_BETTER else -1
            mine.sort(key=lambda e: sign * (e.stat(key) or (float("-inf") * sign, 0))[0])
            rows = [_entry_row(e, board["columns"], out, env, common) for e in mine]
            comp = [(f"{e.method}/{e.pet}", *(e.stat(key) or (0.0, 0.0))) for e in mine]
            board_comparison(comp, key, out / f"{board['name']}--{seq}.png")
            seq_blocks.append({"name": seq, "entries": rows, "comparison": f"{board['name']}--{seq}.png"})
            n_entries += len(mine)
        page = f"{board['name']}.html"
        (out / page).write_text(env.get_template("board.html.j2").render(
            board=board, sequences=seq_blocks, columns=board["columns"], root="", **common))
        index.append({"file": page, "title": board["title"], "n_entries": n_entries, "sequences": board["sequences"]})
    (out / "index.html").write_text(env.get_template("index.html.j2").render(boards=index, root="", **common))
    return out / "index.html"


def _entry_row(e: Entry, columns: list[str], out: Path, env: Environment, common: dict) -> dict:
    cells, sort = {}, {}
    for c in columns:
        cells[c], sort[c] = _fmt(c, e.stat(c))
    rec = min(e.records, key=lambda r: r["seed"])
    folder = out / "entries" / e.slug
    plots = {k: f"{p.name}" for k, p in plot_record(rec, folder).items()}
    headline = {k: ("n/a" if v is None else f"{100 * v:.2f}") for k, v in rec["aggregates"].items()}
    headline.update({k: ("n/a" if v is None else f"{v:.4f}") for k, v in rec.get("summary", {}).items()})
    page = env.get_template("entry.html.j2").render(
        e={"method": e.method, "pet": e.pet, "sequence": e.sequence, "tier": e.tier, "seeds": e.seeds,
           "model": rec["model"]["spec"], "pet_options": json.dumps(rec["pet"]["options"]),
           "method_options": json.dumps(rec["method"]["options"]), "source": rec["method"].get("source", ""),
           "command": rec["command"], "manifests": rec["sequence"]["manifests"], "plot_seed": rec["seed"],
           "headline": headline, "plots": plots},
        root="../../", **common)
    (folder / "index.html").write_text(page)
    return {"method": e.method, "pet": e.pet, "n": len(e.records), "tier": e.tier, "cells": cells,
            "sort": {k: ("" if v != v else v) for k, v in sort.items()}, "href": f"entries/{e.slug}/index.html"}
