"""Grids of runs — from the command line or from a plan file — and their summary across seeds (mean ± 95 %
confidence interval, Student t; see :mod:`suite.results.analysis`).

A plan file (``clsuite sweep --plan leaderboards/embedded-plan.yaml``) lists groups of runs::

    out: results                  # where records go (relative to the plan file's repository root)
    seeds: [0, 1, 2]              # default seeds of every group
    log: [tensorboard]            # optional: experiment trackers of every run (as clsuite run --log)
    groups:
      - sequences: [world-class-incremental, mini-mtil]
        methods: [seq, pegp]
        pets: [lora, adapter]     # omit (or [none]) for methods without a PET
        method_options: {}        # optional, the same for the whole group
        pet_options: {}

``--jobs N`` runs N runs at once in separate processes with the machine's cores divided between them (each run
sets its torch threads explicitly, so processes never oversubscribe cores) that end when the sweep does, killed
or not; a run that fails is logged as it ends, the others go on, and the first failure is raised once they are
done. ``--resume`` skips runs whose record already exists and is complete.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import jsonschema
import torch

from suite.config.run import sequence_label
from suite.config.sequences import load_sequence, read_yaml
from suite.data.loading import available_cores
from suite.engine.runner import RunConfig, Runner, check_options
from suite.errors import SuiteError, schema_field
from suite.experiments.slurm import RunStatus, SlurmOptions, jobs_dir, statuses, submit, wait
from suite.paths import parse_json
from suite.results.analysis import group_records
from suite.results.metrics import HEADLINE
from suite.results.records import load_record, load_records


class PlanError(SuiteError):
    """A plan file that is malformed; one line naming the file and field."""


@lru_cache(maxsize=1)
def _plan_schema() -> dict:
    return parse_json(resources.files("suite").joinpath("schemas/plan.schema.json").read_text(), "plan.schema.json")


def load_plan(path: str | Path, base: RunConfig | None = None, sequences: list[str] | None = None) -> list[RunConfig]:
    """Every run of a plan file, in order (groups, then sequences, methods, PETs, seeds); with ``sequences``, only
    the runs on those (so one board sequence's records can be made again); a name the plan lacks is a PlanError."""
    path = Path(path)
    data = read_yaml(path, PlanError, "plan file")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_plan_schema()).iter_errors(data))
    if err is not None:
        raise PlanError(f"{path}: {schema_field(err)}: {err.message}")
    base = base or RunConfig(sequence="")
    for key in ("model", "device", "amp"):  # the plan's own backbone and device, unless the command line gave one
        if key in data and getattr(base, key) == getattr(RunConfig, key):
            base = dataclasses.replace(base, **{key: data[key]})
    if data.get("log") and not base.log:  # the plan's trackers, unless the command line gave --log
        base = dataclasses.replace(base, log=list(data["log"]))
    out = data.get("out", base.out)
    planned = [seq for g in data["groups"] for seq in g["sequences"]]
    missing = [name for name in sequences or [] if name not in planned]
    if missing:
        raise PlanError(f"{path}: sequence {missing[0]!r} is not in the plan; it has: {', '.join(dict.fromkeys(planned))}")
    command = f"clsuite sweep --plan {path}" + (f" --sequence {','.join(sequences)}" if sequences else "")
    cfgs = []
    for g in data["groups"]:
        for seq in g["sequences"]:
            if sequences and seq not in sequences:
                continue
            for method in g["methods"]:
                for pet in g.get("pets", ["none"]):
                    for seed in g.get("seeds", data.get("seeds", [0])):
                        cfgs.append(dataclasses.replace(
                            base, sequence=seq, method=method, pet=None if pet == "none" else pet, seed=seed,
                            method_options=dict(g.get("method_options", {})), pet_options=dict(g.get("pet_options", {})),
                            out=out, run_dir=str(Path(out) / ".runs"), command=command))
    return cfgs


def plan_executor(path: str | Path) -> dict[str, Any]:
    """The plan's ``executor:`` section (defaults of ``--executor slurm``), already checked by the plan schema."""
    return dict(read_yaml(path, PlanError, "plan file").get("executor") or {})


def sweep_on_slurm(cfgs: list[RunConfig], opts: SlurmOptions, resume: bool = False, block: bool = False,
                   log=print) -> list[RunStatus]:
    """Submit the runs of ``cfgs`` as one SLURM job array (:mod:`suite.experiments.slurm`). With ``resume``, only
    runs neither done nor queued are submitted; without it, a plan with runs still queued is refused (two jobs
    would write one run). With ``block``, wait until every run is done or failed. Returns every run's status."""
    done = finished_check()
    before = {s.run_id: s.state for s in statuses(cfgs, opts, done)}
    queued = [rid for rid, state in before.items() if state in ("running", "pending")]
    if queued and not resume:
        raise PlanError(f"--executor slurm: {len(queued)} run(s) of this sweep are queued or running (e.g. "
                        f"{queued[0]}); wait for them, or give --resume to submit only the rest")
    todo = [c for c in cfgs if before[c.run_id()] not in ("running", "pending") and not
            (resume and before[c.run_id()] == "done")]
    for c in todo:  # every run's method and PET options, before anything is submitted
        check_options(c)
    folder = jobs_dir(cfgs, opts)
    if todo:
        array = submit(todo, opts)
        log(f"sweep: submitted {len(todo)} of {len(cfgs)} runs as SLURM array {array} (job folder {folder}); follow "
            f"with `clsuite sweep status` and the same plan or grid options, or `squeue -r -j {array}`")
    else:
        log(f"sweep: nothing to submit ({len(cfgs)} runs done or queued)")
    if not block:
        return statuses(cfgs, opts, done)
    return wait(cfgs, opts, done, log, known={c.run_id(): before[c.run_id()] for c in cfgs if c not in todo})


def grid(base: RunConfig, methods: list[str], pets: list[str], seeds: list[int]) -> list[RunConfig]:
    return [dataclasses.replace(base, method=m, pet=None if p == "none" else p, seed=s)
            for m in methods for p in pets for s in seeds]


def finished(cfg: RunConfig, labels: dict[str, str] | None = None) -> bool:
    """Whether ``cfg``'s record is on disk, complete, and of the sequence file as it is now (its fingerprint's
    sequence label; a record older than fingerprints counts by its status): such a run is not run again by
    ``--resume``, locally or on a cluster. ``labels`` keeps each sequence's label across calls (a plan has
    hundreds of runs on a few sequences, and parsing a sequence file is most of the cost)."""
    path = Path(cfg.out) / f"{cfg.run_id()}.json"
    try:
        rec = load_record(path) if path.is_file() else None
        if rec is None or rec["status"] != "complete":
            return False
        labels = {} if labels is None else labels
        if cfg.sequence not in labels:
            labels[cfg.sequence] = sequence_label(load_sequence(cfg.sequence))
    except SuiteError:
        return False
    return rec.get("fingerprint", {}).get("fields", {}).get("sequence", labels[cfg.sequence]) == labels[cfg.sequence]


def finished_check() -> Callable[[RunConfig], bool]:
    """:func:`finished` for one sweep or status pass: each sequence's label is computed once."""
    labels: dict[str, str] = {}
    return lambda cfg: finished(cfg, labels)


def _run_one(cfg: RunConfig) -> tuple[str, float]:
    t = time.perf_counter()
    runner = Runner(cfg)
    runner.run()
    return str(runner.out_path()), time.perf_counter() - t


def _init_worker(threads: int, sweep_pid: int) -> None:
    """A worker's share of the cores: torch's threads, and the BLAS and OpenMP pools numpy and scipy loaded while
    the worker imported this module (their size was read from the environment then, so setting
    ``OMP_NUM_THREADS`` now would not reach them: numpy's OpenBLAS kept one thread per core)."""
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = str(threads)
    threadpool_limits(limits=threads)
    torch.set_num_threads(threads)
    _end_with(sweep_pid)


def _end_with(sweep_pid: int, every_s: float = 1.0) -> None:
    """End this worker once the sweep that started it is gone (killed: a pool that shuts down ends its workers
    itself). Without this, the workers of a killed sweep went on taking its queued runs and writing their records.
    Records and checkpoints are written atomically, so ending mid-run leaves no half-written file."""
    def watch() -> None:
        while os.getppid() == sweep_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-sweep", daemon=True).start()


def worker_pool(jobs: int, threads: int) -> ProcessPoolExecutor:
    """``jobs`` fresh processes (spawned: no state of this one is shared) with ``threads`` threads each, which end
    when this process does."""
    return ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, os.getpid()))


def worker_threads() -> dict[str, int]:
    """The threads of this process's pools: torch's, and each BLAS or OpenMP library loaded (what a sweep
    worker runs with; tested)."""
    from threadpoolctl import threadpool_info

    return {"torch": torch.get_num_threads(),
            **{f"{d['internal_api']}:{d['prefix']}": int(d["num_threads"]) for d in threadpool_info()}}


def sweep(cfgs: list[RunConfig], jobs: int = 1, resume: bool = False, log=print) -> list[Path]:
    """Run ``cfgs`` (``jobs`` at a time, cores divided between them); returns the record paths in order."""
    cores = available_cores()
    jobs = max(1, min(int(jobs), cores))
    threads = max(1, cores // jobs)
    cfgs = [dataclasses.replace(c, threads=c.threads or threads, progress=False if jobs > 1 else c.progress,
                                resume=c.resume or resume) for c in cfgs]
    done = finished_check()
    todo = [c for c in cfgs if not (resume and done(c))]
    for c in todo:  # every run's method and PET options, before any run starts
        check_options(c)
    log(f"sweep: {len(cfgs)} runs, {len(cfgs) - len(todo)} already done, {jobs} at a time with {threads} thread(s) each")
    t0 = time.perf_counter()
    if jobs == 1:
        for i, c in enumerate(todo, 1):
            path, sec = _run_one(c)
            log(f"  [{i}/{len(todo)}] {Path(path).name} {sec:.0f}s")
    else:

        failed: list[Exception] = []
        with worker_pool(jobs, threads) as pool:
            futures = {pool.submit(_run_one, c): c for c in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                try:
                    path, sec = fut.result()
                except Exception as exc:  # the pool finishes the other runs anyway: say so as they end
                    failed.append(exc)
                    log(f"  [{i}/{len(todo)}] {futures[fut].run_id()}.json failed: {exc}")
                    continue
                log(f"  [{i}/{len(todo)}] {Path(path).name} {sec:.0f}s")
        if failed:  # the first failure, as a one-job sweep raises it; every other run's record is kept
            raise failed[0]
    log(f"sweep: done in {time.perf_counter() - t0:.0f}s wall")
    return [Path(c.out) / f"{c.run_id()}.json" for c in cfgs]


def summarize(records: list[dict]) -> list[dict]:
    """Per configuration and headline metric: mean, 95 % half-width over seeds (0 for one seed), and the 95 %
    interval over seeds and test items (``None`` where records keep no items); aggregates recomputed."""
    rows = []
    for g in group_records(records):
        row = {"sequence": g.sequence, "method": g.method, "pet": g.pet, "seeds": g.seeds}
        for k in HEADLINE:
            s = g.stat(k)
            row[k] = None if s is None else (s.mean, s.ci or 0.0, s.items)
        rows.append(row)
    return rows


def summarize_table(paths: list[str]) -> str:
    """``clsuite summarize``: :func:`format_summary` of the records among ``paths``."""
    return format_summary(summarize(load_records(paths)))


def format_summary(rows: list[dict]) -> str:
    """:func:`summarize`'s rows as the table ``clsuite summarize`` prints (percent, ± 95 % CI over seeds)."""
    head = f"{'sequence':26s} {'method':9s} {'pet':12s} {'n':>2s} " + " ".join(f"{k:>24s}" for k in HEADLINE)
    out = [head]
    for r in rows:
        cells = ["n/a" if r[k] is None else f"{100 * r[k][0]:.1f}±{100 * r[k][1]:.1f}"
                 + ("" if r[k][2] is None else f" [{100 * r[k][2][0]:.1f},{100 * r[k][2][1]:.1f}]") for k in HEADLINE]
        out.append(f"{r['sequence']:26s} {r['method']:9s} {r['pet']:12s} {len(r['seeds']):2d} "
                   + " ".join(f"{c:>24s}" for c in cells))
    out.append("(percent; ± 95 % CI over seeds; [ ] 95 % interval over seeds and test items)")
    return "\n".join(out)


def main_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


__all__ = ["PlanError", "finished", "finished_check", "format_summary", "grid", "load_plan", "plan_executor", "summarize",
           "summarize_table", "sweep", "sweep_on_slurm"]

