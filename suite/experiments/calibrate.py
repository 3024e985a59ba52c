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
import time
from pathlib import Path
from typing import Any

from suite.engine.runner import RunConfig
from suite.experiments.sweep import sweep
from suite.results.calibration import METHODS, calibration_report
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


def calibrate(sequence: str, pets: list[str], seeds: list[int], out: str = "calibration", jobs: int = 1,
              source: str | None = None, log=print, base: RunConfig | None = None) -> dict[str, Any]:
    """Run (or, with ``source``, read) the calibration runs of ``sequence`` and build its report."""
    wall = None
    if source is None:
        t0 = time.perf_counter()
        sweep(calibration_configs(sequence, pets, seeds, out, base), jobs=jobs, resume=True, log=log)
        wall = time.perf_counter() - t0
    return calibration_report(sequence, pets, seeds, [r for _, r in read_records([source or out])[0]], wall)


__all__ = ["calibration_configs", "calibrate"]
