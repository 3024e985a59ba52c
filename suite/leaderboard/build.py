"""Build the static leaderboard site from results records: index, one page per board, one per entry, a copy of
every listed record (``records/``), and a page of the records that were refused with their reasons.

Pages are Jinja2 templates with autoescaping on (anything from a record is text, never markup; what the page's script
filters on sits in ``data-`` attributes); the site uses no server and fetches nothing, so it works opened from disk.
Stale entries (an older sequence version, an incompatible suite version:
:func:`suite.leaderboard.boards.stale_reason`) get their own table and are never ranked, tied or shown as leaders.

The build is safe to point anywhere: it writes into a temporary folder beside the target and swaps it in only when
complete, and it replaces only a folder that holds its own marker file — never the working directory, the
repository, a results folder, or any other folder that already has content.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from suite._version import __version__
from suite.config.sequences import SequenceError
from suite.leaderboard.boards import (
    BoardError,
    Stale,
    Triage,
    board_sequences,
    boards_dir,
    load_boards,
    load_verifications,
    series_label,
    triage,
)
from suite.leaderboard.plots import curves_figure, entry_figures, save_figure, tradeoff_figure
from suite.leaderboard.reported import METRICS as REPORTED_METRICS
from suite.leaderboard.reported import load_reported, reported_rows
from suite.paths import inside, repo_root, safe_name
from suite.results.analysis import Group, Stat, format_interval, format_value, relabel
from suite.results.calibration import control_rows, load_committed_report, pairs_line, report_rows, targets_line
from suite.results.metrics import METRICS
from suite.results.records import read_records

MARKER = ".clsuite-site"
LEADERS_ON_INDEX = 3
IN_FIGURES = 8  # a board's figures show its best-ranked entries; `clsuite plot` draws any selection


def default_site_dir() -> Path:
    """``leaderboards/site`` in a checkout; ``./leaderboard-site`` for an installed suite (never site-packages)."""
    root = boards_dir()
    installed = any(part in ("site-packages", "dist-packages") for part in root.parts)
    return Path("leaderboard-site") if installed else root / "site"


def default_results_dir() -> Path:
    """The checkout's ``results/`` wherever the command runs from; ``./results`` for an installed suite."""
    root = repo_root()
    return root / "results" if root else Path("results")


def check_out_dir(out: Path, results: Path) -> None:
    """Refuse an output folder the build must not replace (one line, nothing deleted)."""
    target = out.resolve()
    protected = {Path.cwd().resolve(): "the working directory", Path.home().resolve(): "the home folder",
                 results.resolve(): "the results folder"}
    if repo_root():
        protected[repo_root()] = "the repository root"
    for path, what in protected.items():
        if target == path or target in path.parents:
            raise BoardError(f"{out}: --out: refusing to build the site over {what} ({path})")
    if not target.exists():
        return
    if not target.is_dir():
        raise BoardError(f"{out}: --out: exists and is not a folder")
    entries = list(target.iterdir())
    if any(p.suffix == ".json" for p in entries):
        raise BoardError(f"{out}: --out: the folder holds .json files (records?); refusing to replace it")
    if entries and not (target / MARKER).is_file():
        raise BoardError(f"{out}: --out: exists and is not a site clsuite built (no {MARKER} marker); "
                         f"choose an empty or new folder")


def load_named_records(results: Path) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """``(file name, record)`` for every ``*.json`` in ``results``, and ``(file name, reason)`` for unreadable ones."""
    good, bad = read_records([results], validate=False)  # the board's triage validates, naming each refusal
    return ([(p.name, rec) for p, rec in good],
            [(p.name, f"{p.name}: {reason.split(': ', 1)[1][:120]}") for p, reason in bad])


def build_site(results: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Build the site from ``results`` into ``out``; returns the path of its ``index.html``."""
    results = Path(results) if results is not None else default_results_dir()
    if not results.is_dir():
        raise BoardError(f"{results}: --results: no such folder of records")
    out = Path(out) if out is not None else default_site_dir()
    check_out_dir(out, results)
    boards = load_boards()
    reported = load_reported(boards=boards)
    named, unreadable = load_named_records(results)
    tri = triage(named, boards, load_verifications())
    tri.rejected = unreadable + tri.rejected
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _render(tmp, boards, tri, n_records=len(named) + len(unreadable), reported=reported, results=results)
        (tmp / MARKER).write_text("built by clsuite leaderboard build; this folder is replaced on every build\n")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _swap(new: Path, out: Path) -> None:
    """Put the finished ``new`` site at ``out``; an old site (marker checked before) is removed only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "site")
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------------------------- pages
def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(boards_dir() / "templates")), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _cell(name: str, s: Stat | None) -> dict:
    if s is None:
        return {"text": "–", "sort": ""}
    return {"text": format_value(name, s.mean, s.ci) + format_interval(name, s.items), "sort": f"{s.mean:.10g}"}


def rank_entries(groups: list[Group], rank_by: str) -> list[dict]:
    """Order groups by ``rank_by`` (missing values last) and label ranks; groups whose interval overlaps the
    leader's share its rank and are marked tied."""
    m = METRICS[rank_by]
    have = [g for g in groups if g.stat(rank_by) is not None]
    missing = [g for g in groups if g.stat(rank_by) is None]
    have.sort(key=lambda g: (-m.sign * g.stat(rank_by).mean, g.label))
    out = [{"group": g, "rank": str(i + 1), "tied": False} for i, g in enumerate(have)]
    if have:
        leader = have[0].stat(rank_by)
        for item in out[1:]:
            if item["group"].stat(rank_by).overlaps(leader):
                item["rank"], item["tied"] = "=1", True
                out[0]["tied"] = True
    return out + [{"group": g, "rank": "–", "tied": False} for g in missing]


def ece_halfwidth(g: Group) -> float | None:
    """Mean over seeds of the half-width of the last step's bootstrap ECE interval (sampling uncertainty)."""
    widths = [(e["high"] - e["low"]) / 2 for r in g.records if isinstance(e := r["steps"][-1].get("ece"), dict)]
    return sum(widths) / len(widths) if widths else None


def unresolved_ece(groups: list[Group]) -> dict[int, float]:
    """Groups whose ECE interval is wider than the gap to the nearest other entry's ECE: the board cannot rank
    them on it, so it shows the interval instead of a value. Maps ``id(group)`` to the half-width."""
    means = {id(g): s.mean for g in groups if (s := g.stat("ece")) is not None}
    out = {}
    for g in groups:
        hw = ece_halfwidth(g)
        if hw is None or id(g) not in means:
            continue
        gaps = [abs(means[id(g)] - m) for k, m in means.items() if k != id(g)]
        if gaps and hw >= min(gaps):
            out[id(g)] = hw
    return out


def _render(out: Path, boards: dict, tri: Triage, n_records: int, reported: dict[str, dict] | None = None,
            results: Path | None = None) -> None:
    reported = reported or {}
    env = _env()
    for static in ("style.css", "board.js"):
        shutil.copy(boards_dir() / "templates" / static, out / static)
    (out / "entries").mkdir()
    (out / "figures").mkdir()
    (out / "records").mkdir()
    common = {"built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "n_records": n_records,
              "n_refused": len(tri.rejected) + len(tri.off_budget), "suite": __version__,
              "suite_series": series_label(__version__)}
    ctx = _Context(out, env, tri, common, Path(results) if results is not None else default_results_dir())
    index = []
    for board in boards.values():
        blocks, leaders, figure = [], [], None
        for seq in board_sequences(board):
            mine = [g for g in tri.groups if g.sequence == seq]
            old = [s for s in tri.stale if s.group.sequence == seq]
            if not mine and not old and seq not in reported:
                continue
            # the suite's runs, ranked; a sequence with published numbers only gets its page with this part empty
            block = _sequence_block(ctx, board, seq, mine, old, control=board["control_sequences"].get(seq, ""))
            block["reported"] = _reported_block(reported.get(seq))  # apart: never ranked or pooled with the runs
            blocks.append(block)
            leaders += [{"sequence": seq, **row} for row in block["rows"][:LEADERS_ON_INDEX]]  # never a stale one
            figure = figure or next(iter(block["figures"]), None)
        page = f"{safe_name(board['name'])}.html"
        inside(out, page).write_text(board_page(env, board, blocks, common))
        index.append({"file": page, "title": board["title"], "track": board["track"], "rank_by": board["rank_by"],
                      "n_entries": sum(len(b["rows"]) + len(b["unranked"]) for b in blocks),
                      "n_stale": sum(len(b["stale"]) for b in blocks),
                      "n_reported": sum(len(b["reported"]["rows"]) for b in blocks if b["reported"]),
                      "sequences": board["sequences"], "controls": list(board["control_sequences"]),
                      "leaders": leaders, "figure": figure})
    (out / "index.html").write_text(env.get_template("index.html.j2").render(boards=index, root="", **common))
    (out / "refused.html").write_text(env.get_template("refused.html.j2").render(
        rejected=tri.rejected, off_budget=tri.off_budget, root="", **common))


def board_page(env: Environment, board: dict, blocks: list[dict], common: dict) -> str:
    """One board's page from its sequence blocks (the build's, or generated ones a load test renders)."""
    return env.get_template("board.html.j2").render(
        board=board, sequences=blocks, summary_columns=_headers(board["summary_columns"]),
        detail_columns=_headers([c for c in board["columns"] if c not in board["summary_columns"]]),
        root="", **common)


@dataclass
class _Context:
    """What every entry of one build needs: the site folder, templates, triage, page footer, the results folder."""

    out: Path
    env: Environment
    tri: Triage
    common: dict
    results: Path
    copied: dict[str, str] = field(default_factory=dict)  # record file name -> its copy's name under records/


def _reported_block(data: dict | None) -> dict | None:
    """The page's *reported* table of a sequence: published numbers with their sources, in the file's order."""
    if data is None:
        return None
    return {"backbone": data["backbone"], "note": data.get("note", ""), "rows": reported_rows(data),
            "columns": [{"name": m, "label": METRICS[m].label} for m in REPORTED_METRICS]}


def _headers(names: list[str]) -> list[dict]:
    return [{"name": n, "label": METRICS[n].label, "lower": not METRICS[n].higher_is_better} for n in names]


def _sequence_block(ctx: _Context, board: dict, seq: str, groups: list[Group], stale: list[Stale],
                    control: str = "") -> dict:
    """A sequence's part of its board page; a control sequence (``control``: why it is one) lists every entry
    unranked, in the order ranking would give, and never has leaders."""
    relabel(groups)  # labels unique within this sequence: method/PET (+ options where they differ)
    enough = [g for g in groups if len(g.seeds) >= board["min_seeds"]]
    ordered = rank_entries(enough, board["rank_by"])
    order = [item["group"] for item in ordered]  # the figures' entries
    unranked = [g for g in groups if len(g.seeds) < board["min_seeds"]]
    if control:
        ordered, unranked = [], order + unranked
    figures = []
    shown = order[:IN_FIGURES]
    if shown:
        stem = safe_name(f"{board['name']}--{seq}")
        folder = ctx.out / "figures"
        curves = save_figure(curves_figure(shown, "avg"), inside(folder, f"{stem}--curves.svg"))
        trade = save_figure(tradeoff_figure(shown, "plasticity", "last"), inside(folder, f"{stem}--tradeoff.svg"))
        figures = [{"src": f"figures/{curves.name}", "alt": f"Mean accuracy on the tasks trained so far after each task "
                    f"of {seq}, one line per method with 95% bands over seeds"},
                   {"src": f"figures/{trade.name}", "alt": f"Last accuracy against plasticity gain on {seq}, one point "
                    f"per method with 95% intervals over seeds"}]
    columns = board["summary_columns"] + [c for c in board["columns"] if c not in board["summary_columns"]]
    rows = [_row(ctx, item["group"], columns, rank=item["rank"], tied=item["tied"]) for item in ordered]
    unranked_rows = [_row(ctx, g, columns, rank="–", tied=False) for g in unranked]
    old = [s.group for s in stale]
    relabel(old)  # apart from the current entries: labels unique among the stale ones
    stale_rows = [_row(ctx, s.group, columns, rank="–", tied=False, stale=s) for s in stale]
    if "ece" in columns:  # resolved among the entries compared: the current ones, and the stale ones apart
        current = [item["group"] for item in ordered] + unranked
        for part, part_rows in ((current, rows + unranked_rows), (old, stale_rows)):
            hidden = unresolved_ece(part)
            for g, row in zip(part, part_rows):
                if id(g) in hidden:
                    row["cells"]["ece"] = {"text": f"n.s. (±{100 * hidden[id(g)]:.1f})", "sort": ""}
    note = f"Figures: the {len(shown)} best-ranked of {len(order)} entries." if len(order) > len(shown) else ""
    everything = rows + unranked_rows + stale_rows
    return {"name": seq, "control": control, "rows": rows, "unranked": unranked_rows, "stale": stale_rows, "figures": figures,
            "min_seeds": board["min_seeds"], "figure_note": note, "calibration": _calibration(seq),
            "filters": filter_options(everything)}


def filter_options(rows: list[dict]) -> dict[str, list[str]]:
    """The choices of a sequence's filter controls: the methods, PETs and tiers its entries have, sorted."""
    return {key: sorted({r[key] for r in rows}) for key in ("method", "pet", "tier")}


def _calibration(seq: str) -> dict | None:
    """The sequence's committed budget calibration (``clsuite calibrate``), formatted for the board page."""

    try:
        rep = load_committed_report(seq)
    except SequenceError:
        return None
    if rep is None:
        return None
    return {"seeds": rep["seeds"], "version": rep["version"], "rows": report_rows(rep),
            "controls": control_rows(rep), "targets": targets_line(rep), "pairs": pairs_line(rep)}


def reproduce_command(results: Path, name: str) -> str:
    """The ``clsuite reproduce`` command of record ``name`` in ``results``, quoted for a POSIX shell
    (:func:`shlex.quote`): the path relative to the repository root when the record lies in the checkout (the
    command is run from there), else its absolute path, so it pastes as it stands."""
    path = (results / name).absolute()
    text = str(_in_checkout(path) or path)
    return shlex.join(["clsuite", "reproduce", f"./{text}" if text.startswith("-") else text])


def _in_checkout(path: Path) -> Path | None:
    """``path`` relative to the repository root, ``None`` when it lies outside a checkout."""
    root = repo_root()
    if root is None or root.resolve() not in path.resolve().parents:
        return None
    return path.resolve().relative_to(root.resolve())


def _copy_record(ctx: _Context, rec: dict) -> tuple[str, str]:
    """Copy one record file into the site's ``records/`` (once); returns its file name there and in results."""
    name = ctx.tri.files.get(id(rec), f"{rec.get('run_id') or 'record'}.json")
    if name not in ctx.copied:
        copy = f"{safe_name(Path(name).stem, max_len=90)}.json"
        source = ctx.results / name
        target = inside(ctx.out / "records", copy)
        if source.is_file():
            shutil.copyfile(source, target)
        else:  # records handed over without their files: the record as read
            target.write_text(json.dumps(rec, indent=1))
        ctx.copied[name] = copy
    return ctx.copied[name], name


def _versions(g: Group) -> tuple[str, str]:
    """The suite versions and sequence versions that made a group's seeds, as shown on the board."""
    suites = sorted({str((r.get("environment") or {}).get("suite") or "unknown") for r in g.records})
    seqs = sorted({int(r["sequence"]["version"]) for r in g.records})
    return ", ".join(suites), ", ".join(f"v{v}" for v in seqs)


def _row(ctx: _Context, g: Group, columns: list[str], rank: str, tied: bool, stale: Stale | None = None) -> dict:
    tier = stale.tier if stale else ctx.tri.tiers.get(g.key, "self-reported")
    why = stale.reason if stale else ""
    options = hashlib.sha256(json.dumps([g.key, why]).encode()).hexdigest()[:8]
    slug = safe_name(f"{g.sequence}--{g.method}--{g.pet}--{'stale-' if stale else ''}{options}", max_len=80)
    folder = inside(ctx.out / "entries", slug)
    folder.mkdir(parents=True, exist_ok=True)
    figs = entry_figures(g, folder)
    rec = g.records[0]
    suite, seq_version = _versions(g)
    stats = [{"label": METRICS[n].label, "text": _cell(n, g.stat(n))["text"], "lower": not METRICS[n].higher_is_better}
             for n in METRICS]
    seeds = []
    for r in g.records:
        copy, name = _copy_record(ctx, r)
        seeds.append({"seed": r["seed"], "record": f"../../records/{copy}", "file": name,
                      "reproduce": reproduce_command(ctx.results, name), "suite": (r.get("environment") or {}).get("suite"),
                      "config": json.dumps(r.get("config") or {}, indent=2, sort_keys=True)})
    inside_repo = _in_checkout(ctx.results.absolute() / "x.json") is not None
    page = ctx.env.get_template("entry.html.j2").render(
        e={"label": g.label, "method": g.method, "pet": g.pet, "sequence": g.sequence, "tier": tier, "seeds": g.seeds,
           "model": rec["model"]["spec"], "pet_options": json.dumps(rec["pet"]["options"]),
           "method_options": json.dumps(rec["method"]["options"]),
           "training": json.dumps(rec.get("training") or {}, sort_keys=True), "source": rec["method"].get("source", ""),
           "command": rec["command"], "manifests": rec["sequence"]["manifests"], "stats": stats,
           "suite": suite, "seq_version": seq_version, "stale": why, "runs": seeds, "from_root": inside_repo,
           "stale_sequence": "sequence v" in why,
           "figures": [{"src": p.name, "alt": f"{k} of {g.label} on {g.sequence}", "name": k} for k, p in figs.items()]},
        root="../../", **ctx.common)
    (folder / "index.html").write_text(page)
    variant = g.label.partition(" [")[2].rstrip("]")
    search = " ".join(w for w in (g.method, g.pet, variant, tier, f"suite {suite}", seq_version, why and f"stale {why}") if w)
    return {"rank": rank, "tied": tied, "method": g.method, "pet": g.pet, "label": g.label, "variant": variant,
            "n": len(g.seeds), "tier": tier, "suite": suite, "seq_version": seq_version, "stale": why,
            "search": search.lower(), "cells": {c: _cell(c, g.stat(c)) for c in columns},
            "href": f"entries/{slug}/index.html"}
