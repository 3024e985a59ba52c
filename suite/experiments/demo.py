"""The main job (``clsuite demo``): zero-shot, sequential PET and PET+PEGP on the embedded sequences, with the
embedded tiny CLIP, on the board's own budgets (the sequence files' training settings: a demo record and a board
record of the same run agree); writes records and a site to its own folder (default ``demo-results/``, never the
committed ``results/``), and returns a table that sets each number beside the committed reference records'
mean over seeds.
"""
from __future__ import annotations

import time
from pathlib import Path

from suite.engine.runner import RunConfig
from suite.errors import ConfigError
from suite.experiments.sweep import sweep
from suite.leaderboard.build import build_site, default_results_dir
from suite.results.analysis import group_records
from suite.results.records import group_key, load_record, load_records

# (sequence, PETs to run with seq and pegp): the four sequences the boards rank (world-class-incremental, where
# nothing forgets, is a control: the quick plan's, where only the pipeline is shown)
DEMO_PLAN = (
    ("mini-xtail", ("lora", "vpt")),
    ("world-domain-incremental", ("lora", "prefix")),
    ("world-cross-modal", ("lora",)),
    ("mini-mtil", ("lora", "adapter")),
)
QUICK_PLAN = (("world-class-incremental", ("lora",)),)


DEFAULT_OUT = "demo-results"


def demo_configs(out: str, quick: bool = False) -> list[RunConfig]:
    cfgs = []
    for seq, pets in (QUICK_PLAN if quick else DEMO_PLAN):
        common = dict(sequence=seq, out=out, run_dir=str(Path(out) / ".runs"), progress=False,
                      command="clsuite demo" + (" --quick" if quick else ""),
                      training={"iterations": 10} if quick else {}, max_eval=40 if quick else None)
        cfgs.append(RunConfig(pet=None, method="zeroshot", **common))
        for pet in pets:
            for method in ("seq", "pegp"):
                cfgs.append(RunConfig(pet=pet, method=method, **common))
    return cfgs


def _references() -> dict:
    """The committed reference records' groups by configuration (read once: every row of the table looks here)."""
    ref = default_results_dir()
    if not ref.is_dir() or not list(ref.glob("*.json")):
        return {}
    return {g.key: g for g in group_records(load_records([ref]))}


def _reference(rec: dict, references: dict) -> str:
    """The committed reference records' mean Last of the same configuration (over their seeds)."""
    g = references.get(group_key(rec))
    s = g.stat("last") if g is not None else None
    return "     -" if s is None else f"{100 * s.mean:6.1f}"


def demo(out: str = DEFAULT_OUT, quick: bool = False, site: bool = True, jobs: int = 2) -> str:

    if Path(out).resolve() == default_results_dir().resolve():
        raise ConfigError(f"{out}: --out: the demo does not write into the committed reference records; choose "
                         f"another folder (default {DEFAULT_OUT})")
    rows = []
    t0 = time.perf_counter()
    # two runs at a time, one thread each, as the board's plan runs (more throughput than one run on two threads
    # for the tiny CLIP; performance page), so seed 0 here is the committed seed-0 record's computation
    paths = sweep(demo_configs(out, quick), jobs=jobs, log=lambda msg: print(msg, flush=True))
    references = _references()
    for path in paths:
        rec = load_record(path)
        agg, summ = rec["aggregates"], rec.get("summary", {})
        rows.append((rec["sequence"]["name"], rec["method"]["name"], rec["pet"]["kind"] or "-", agg["transfer"],
                     agg["avg"], agg["last"], agg["forgetting"], summ.get("zero_shot_retention"), _reference(rec, references),
                     rec["efficiency"]["wall_time_s"]))
    fmt = lambda v: "   n/a" if v is None else f"{100 * v:6.1f}"  # noqa: E731
    lines = [f"{'sequence':26s} {'method':9s} {'pet':7s} {'Transf':>6s} {'Avg':>6s} {'Last':>6s} {'Forget':>6s} "
             f"{'ZSret%':>6s} {'refLast':>7s} {'time':>5s}"]
    for seq, method, pet, tr, av, la, fo, ret, ref, sec in rows:
        lines.append(f"{seq:26s} {method:9s} {pet:7s} {fmt(tr)} {fmt(av)} {fmt(la)} {fmt(fo)} {fmt(ret)} {ref:>7s} {sec:4.0f}s")
    lines.append(f"(accuracies in %, retrieval tracks use mean R@1; refLast: mean Last of the committed reference records "
                 f"(results/, over their seeds) of the same configuration; this demo ran seed 0; records in {out}/; total "
                 f"{time.perf_counter() - t0:.0f}s)")
    if site:

        index = build_site(results=out, out=Path(out) / "site")
        lines.append(f"leaderboard site: {index}")
    return "\n".join(lines)
