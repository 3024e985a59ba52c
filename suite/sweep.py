"""Grids of runs and their summary across seeds (mean ± 95% confidence interval, Student t; see :mod:`suite.analysis`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .analysis import group_records, mean_ci  # noqa: F401  (mean_ci: re-exported for older callers)
from .records import load_record
from .runner import RunConfig, Runner

HEADLINE = ("transfer", "avg", "last", "bwt", "forgetting")


def sweep(base: RunConfig, methods: list[str], pets: list[str], seeds: list[int]) -> list[Path]:
    paths = []
    for method in methods:
        for pet in pets:
            for seed in seeds:
                cfg = dataclasses.replace(base, method=method, pet=None if pet == "none" else pet, seed=seed)
                runner = Runner(cfg)
                runner.run()
                paths.append(runner.out_path())
    return paths


def collect(paths: list[str]) -> list[dict]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    return [load_record(f) for f in files]


def summarize(records: list[dict]) -> list[dict]:
    """Mean and 95 % half-width (0 for one seed) per configuration, aggregates recomputed from the matrices."""
    rows = []
    for g in group_records(records):
        row = {"sequence": g.sequence, "method": g.method, "pet": g.pet, "seeds": g.seeds}
        for k in HEADLINE:
            s = g.stat(k)
            row[k] = None if s is None else (s.mean, s.ci or 0.0)
        rows.append(row)
    return rows


def summarize_table(paths: list[str]) -> str:
    rows = summarize(collect(paths))
    head = f"{'sequence':26s} {'method':9s} {'pet':8s} {'n':>2s} " + " ".join(f"{k:>14s}" for k in HEADLINE)
    out = [head]
    for r in rows:
        cells = [("n/a" if r[k] is None else f"{100 * r[k][0]:.1f}±{100 * r[k][1]:.1f}") for k in HEADLINE]
        out.append(f"{r['sequence']:26s} {r['method']:9s} {r['pet']:8s} {len(r['seeds']):2d} " + " ".join(f"{c:>14s}" for c in cells))
    return "\n".join(out)
