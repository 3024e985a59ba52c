"""Calibrating a sequence's training budgets: does naive training learn and forget enough to measure anything?

``clsuite calibrate SEQUENCE --pets lora,adapter --seeds 0,1,2`` runs zero-shot, seq and PEGP on the sequence's
own budget (``training`` and ``pet_training`` of its file) and reports, per PET, the pretrained accuracy, the seq
diagonal, the plasticity gain (seq diagonal - zero-shot), seq and PEGP forgetting, Last, each with the 95 %
interval over seeds, whether the targets below hold and by how much they are missed, and the wall time; and, per
control set, the pretrained accuracy and the chance level. ``--from results`` computes the report from records
already on disk (how the committed ``tasks/embedded/<name>.calibration.json`` are made). The report itself is
:mod:`suite.results.calibration`.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

from suite.engine.runner import RunConfig
from suite.errors import ConfigError
from suite.experiments.sweep import sweep
from suite.results.calibration import METHODS, calibration_report, grid_report
from suite.results.records import read_records


def calibration_configs(sequence: str, pets: list[str], seeds: list[int], out: str,
                        base: RunConfig | None = None) -> list[RunConfig]:
    """The runs of a calibration: zero-shot once per seed, seq and PEGP per PET and seed, all on the budget."""
    base = dataclasses.replace(base or RunConfig(sequence=sequence), sequence=sequence, out=out,
                               run_dir=str(Path(out) / ".runs"), training={}, max_eval=None,
                               command=f"clsuite calibrate {sequence}")
    cfgs = [dataclasses.replace(base, method="zeroshot", pet=None, seed=s) for s in seeds]
    cfgs += [dataclasses.replace(base, method=m, pet=p, seed=s) for p in pets for m in METHODS[1:] for s in seeds]
    return cfgs


GRID_KEYS = ("iterations", "lr", "batch_size", "weight_decay", "warmup")


def parse_grid(text: str) -> list[dict[str, Any]]:
    """``"lr=0.002,0.005;iterations=60,120"`` → every combination as training overrides; refused in one line."""
    axes: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or key not in GRID_KEYS:
            raise ConfigError(f"--grid {part!r}: give KEY=V1,V2 with KEY one of {', '.join(GRID_KEYS)}")
        if key in axes:
            raise ConfigError(f"--grid: {key} is given twice; give its values once (e.g. {key}=V1,V2)")
        try:
            axes[key] = [float(v) if key in ("lr", "weight_decay") else int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--grid {part!r}: values must be numbers") from None
        if not axes[key]:
            raise ConfigError(f"--grid {part!r}: no values")
    if not axes:
        raise ConfigError("--grid: nothing to explore; e.g. --grid 'lr=0.002,0.005;iterations=60,120'")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def grid_configs(sequence: str, pets: list[str], seeds: list[int], out: str, candidates: list[dict[str, Any]],
                 base: RunConfig | None = None) -> list[RunConfig]:
    """seq only (designs are chosen on seq and zero-shot alone): every candidate budget per PET and seed, and
    zero-shot once per seed."""
    base = dataclasses.replace(base or RunConfig(sequence=sequence), sequence=sequence, out=out,
                               run_dir=str(Path(out) / ".runs"), max_eval=None, command=f"clsuite calibrate {sequence} --grid")
    cfgs = [dataclasses.replace(base, method="zeroshot", pet=None, seed=s, training={}) for s in seeds]
    cfgs += [dataclasses.replace(base, method="seq", pet=p, seed=s, training=dict(c))
             for p in pets for c in candidates for s in seeds]
    return cfgs


def explore(sequence: str, pets: list[str], seeds: list[int], grid: str, out: str = "calibration", jobs: int = 1,
            log=print, base: RunConfig | None = None) -> dict[str, Any]:
    """Run a ``--grid`` of candidate budgets (seq only) and report each: plasticity gain, forgetting, Last, train
    vs test accuracy, and the measured time of a run, from which the plan's cost at 5 seeds is estimated."""
    candidates = parse_grid(grid)
    sweep(grid_configs(sequence, pets, seeds, out, candidates, base), jobs=jobs, resume=True, log=log)
    return grid_report(sequence, pets, seeds, candidates, [r for _, r in read_records([out])[0]])


def calibrate(sequence: str, pets: list[str], seeds: list[int], out: str = "calibration", jobs: int = 1,
              source: str | None = None, log=print, base: RunConfig | None = None) -> dict[str, Any]:
    """Run (or, with ``source``, read) the calibration runs of ``sequence`` and build its report."""
    wall = None
    if source is None:
        t0 = time.perf_counter()
        sweep(calibration_configs(sequence, pets, seeds, out, base), jobs=jobs, resume=True, log=log)
        wall = time.perf_counter() - t0
    return calibration_report(sequence, pets, seeds, [r for _, r in read_records([source or out])[0]], wall)


__all__ = ["calibration_configs", "calibrate", "explore", "grid_configs", "parse_grid"]
