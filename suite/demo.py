"""The main job (``clsuite demo``): zero-shot, sequential PET and PET+PEGP on the embedded sequences, with the
embedded tiny CLIP; writes records, builds the leaderboard site, and returns a table.
"""
from __future__ import annotations

import time
from pathlib import Path

from .runner import RunConfig, Runner

# (sequence, PETs to run with seq and pegp)
DEMO_PLAN = (
    ("world-class-incremental", ("lora", "vpt")),
    ("world-domain-incremental", ("lora", "prefix")),
    ("world-cross-modal", ("lora",)),
    ("mini-mtil", ("lora", "adapter")),
)
QUICK_PLAN = (("world-class-incremental", ("lora",)),)


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


def demo(out: str = "results", quick: bool = False, site: bool = True) -> str:
    rows = []
    t0 = time.perf_counter()
    for cfg in demo_configs(out, quick):
        t = time.perf_counter()
        rec = Runner(cfg).run()
        agg, summ = rec["aggregates"], rec.get("summary", {})
        rows.append((rec["sequence"]["name"], rec["method"]["name"], rec["pet"]["kind"] or "-", agg["transfer"],
                     agg["avg"], agg["last"], agg["forgetting"], summ.get("zero_shot_retention"), time.perf_counter() - t))
        print(f"  done {cfg.sequence} {cfg.method}/{cfg.pet or '-'} in {rows[-1][-1]:.0f}s", flush=True)
    fmt = lambda v: "   n/a" if v is None else f"{100 * v:6.1f}"  # noqa: E731
    lines = [f"{'sequence':26s} {'method':9s} {'pet':7s} {'Transf':>6s} {'Avg':>6s} {'Last':>6s} {'Forget':>6s} {'ZSret%':>6s} {'time':>5s}"]
    for seq, method, pet, tr, av, la, fo, ret, sec in rows:
        lines.append(f"{seq:26s} {method:9s} {pet:7s} {fmt(tr)} {fmt(av)} {fmt(la)} {fmt(fo)} {fmt(ret)} {sec:4.0f}s")
    lines.append(f"(accuracies in %, retrieval tracks use mean R@1; records in {out}/; total {time.perf_counter() - t0:.0f}s)")
    if site:
        from .leaderboard.build import build_site

        index = build_site(results=out)
        lines.append(f"leaderboard site: {index}")
    return "\n".join(lines)
