"""The results record a run writes: its header (what ran, on what), one entry per evaluated step, and the
aggregates once every task is done. Key order is part of the format (records are compared byte for byte)."""
from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from suite import __version__
from suite.config.run import RunConfig
from suite.engine.distributed import node_count
from suite.results import metrics
from suite.results.records import REFERENCE, SCHEMA_ID, attach_cost, step_summary

# RunConfig fields that say how a run was executed, not what it is: not kept in the record's config
EXECUTION_FIELDS = ("out", "run_dir", "resume", "progress", "command", "threads", "restart", "workers", "log", "log_dir")


def environment(device: torch.device, world: int) -> dict[str, Any]:
    """The software and machine a record was made with."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # read from the installed metadata: importing open_clip costs seconds an embedded run does not need
        open_clip_version = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"suite": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "open_clip": open_clip_version, "numpy": np.__version__, "platform": platform.platform(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "world_size": world, "nodes": node_count(), "git_commit": commit, "threads": torch.get_num_threads()}


def base_record(cfg: RunConfig, run) -> dict[str, Any]:
    """A new record of ``run`` (a :class:`~suite.engine.runner.Runner`), before any evaluation."""
    seq, pet, method = run.seq, run.pet, run.method
    return {
        "schema": SCHEMA_ID, "run_id": cfg.run_id(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": "partial", "error": None,
        "sequence": {"name": seq.name, "version": seq.version, "track": seq.track, "protocol": seq.protocol,
                     "tasks": [t.name for t in seq.tasks], "control_sets": [c.name for c in seq.control_sets],
                     "manifests": {k: v.manifest_sha256 for k, v in run.data.items()}},
        "model": {"spec": cfg.model, "pretrained": bool(run.backbone.pretrained)},
        "pet": {"kind": cfg.pet if pet is not None else None, "options": pet.config.to_dict() if pet is not None else {}},
        "method": {"name": method.name, "options": dict(method.options),
                   "source": f"{type(method).__module__}:{type(method).__qualname__}", "protocol": method.protocol},
        "seed": cfg.seed, "training": run.train.to_dict(),
        "config": {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_FIELDS},
        "fingerprint": run.fingerprint(),
        "zero_shot": {"tasks": [], "controls": {}}, "matrix": [], "steps": [],
        "aggregates": {k: None for k in metrics.METRIC_NAMES}, "summary": {},
        "efficiency": {"trainable_parameters": int(sum(p.numel() for p in run.params)), "world_size": run.world},
        "environment": environment(run.device, run.world), "command": cfg.command or " ".join(sys.argv),
    }


def add_zero_shot(rec: dict[str, Any], step: dict[str, Any], seconds: float, attached: dict[str, Any] | None) -> None:
    """The reference row (the pretrained model, no PET attached) and, where a PET was attached, what attaching
    alone cost: :func:`suite.results.records.attach_cost`."""
    rec["zero_shot"] = {"reference": REFERENCE, "tasks": step["accuracy"], "controls": step["control_accuracy"]}
    rec["zero_shot_step"] = step
    rec["attach_cost"] = attach_cost(step, attached) if attached is not None else None
    rec["efficiency"]["zero_shot_eval_time_s"] = seconds


def add_step(rec: dict[str, Any], step: dict[str, Any], method_report: dict[str, Any], n_tasks: int) -> None:
    """Append an evaluated step (with its timings and the method's report) and refresh what depends on it."""
    step["method"] = method_report
    rec["steps"].append(step)
    rec["matrix"].append(step["accuracy"])
    rec["efficiency"].update(method_report)
    rec["efficiency"]["wall_time_s"] = float(sum(s["wall_time_s"] for s in rec["steps"]))
    rec["efficiency"]["peak_memory_mb"] = float(max(s["peak_memory_mb"] for s in rec["steps"]))
    finish(rec, n_tasks)


def finish(rec: dict[str, Any], n_tasks: int) -> None:
    """Aggregates once the matrix is square (status ``complete``), and the last step's summary."""
    if rec["matrix"] and len(rec["matrix"]) == n_tasks:
        rec["aggregates"] = metrics.aggregate(rec["matrix"], rec["zero_shot"]["tasks"])
        rec["status"] = "complete"
    rec["summary"] = step_summary(rec["steps"][-1]) if rec["steps"] else {}


__all__ = ["EXECUTION_FIELDS", "add_step", "add_zero_shot", "base_record", "environment", "finish"]
