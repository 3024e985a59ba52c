"""A plan's runs as one SLURM job array, through submitit: one array element per run, each a normal ``Runner``
run (several SLURM tasks for a multi-GPU run, data parallel through :mod:`suite.engine.distributed`).

The job folder (``--jobs-dir``) holds submitit's files and each element's stdout/stderr (``<array>_<i>_<task>_
log.out/.err``), and ``runs.json``: which job ran which run. The status of a run comes from what is on disk and in
the queue, not from ``sacct`` (a cluster without accounting storage answers nothing there): *done* is a complete
record of this configuration; *running*/*pending* is its job in ``squeue``; *failed* is a job that left the queue
without a record (the last line of its error log says why); *not submitted* has no job yet. Submitted runs always
resume from their run folder's checkpoint, so a run the scheduler killed (time limit, preemption, ``scancel``)
continues after its last finished task when it is submitted again.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from suite.config.run import RunConfig
from suite.engine.runner import Runner
from suite.errors import ConfigError, SuiteError
from suite.paths import read_json, write_atomic

INDEX = "runs.json"  # run id -> {"job": "<array>_<i>", "out": record path}, in the job folder


class ClusterError(SuiteError):
    """SLURM or submitit cannot do what was asked (no sbatch here, a submission refused)."""


@dataclass
class SlurmOptions:
    """Resources of one run (one array element) and of the array; the same keys a plan's ``executor:`` takes."""

    partition: str | None = None
    time: str = "60"  # minutes, or [D-]HH:MM:SS
    gpus_per_run: int = 0  # > 1 starts that many SLURM tasks per run (data parallel)
    cpus_per_run: int = 1  # CPU cores per task; also the run's torch threads
    mem_per_run: str | None = None  # e.g. 16G
    array_parallelism: int = 16  # array elements running at once
    extra: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "abc"}
    jobs_dir: str | None = None  # default: beside the plan's records folder, <out>-jobs

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "SlurmOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: executor.{unknown[0]}: unknown key; known: {', '.join(sorted(known))}")
        opts = cls(**data)
        opts.minutes()  # the time limit is readable
        for key in ("gpus_per_run", "cpus_per_run", "array_parallelism"):
            value, low = getattr(opts, key), 0 if key == "gpus_per_run" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{where}: executor.{key}: {value!r} must be an integer >= {low}")
        return opts

    def minutes(self) -> int:
        """The time limit in minutes (``90``, ``1:30:00``, ``2-00:00:00``)."""
        text = str(self.time).strip()
        try:
            days, _, clock = text.rpartition("-")
            parts = [int(p) for p in clock.split(":")]
            if len(parts) == 1:
                minutes = parts[0]
            else:
                parts = [0] * (3 - len(parts)) + parts
                minutes = parts[0] * 60 + parts[1] + (parts[2] > 0)
            minutes += int(days or 0) * 24 * 60
        except ValueError:
            raise ConfigError(f"--slurm-time: {self.time!r} is not minutes or [D-]HH:MM:SS") from None
        if minutes < 1:
            raise ConfigError(f"--slurm-time: {self.time!r} must be at least a minute")
        return minutes


def jobs_dir(cfgs: list[RunConfig], opts: SlurmOptions) -> Path:
    if opts.jobs_dir:
        return Path(opts.jobs_dir)
    out = Path(cfgs[0].out) if cfgs else Path("results")
    return out.with_name(out.name + "-jobs")


def run_in_job(cfg: RunConfig) -> str:
    """What one array element (each of its SLURM tasks) executes: the run, resumed from its checkpoint."""
    runner = Runner(cfg)
    runner.run()
    return str(runner.out_path())


def _executor(folder: Path, opts: SlurmOptions):
    import submitit  # the SLURM executor's own dependency: imported only when a plan goes to a cluster

    if shutil.which("sbatch") is None:
        raise ClusterError("--executor slurm: no sbatch on this machine (run it on a SLURM login node)")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    tasks = max(1, opts.gpus_per_run)
    params: dict[str, Any] = {"timeout_min": opts.minutes(), "tasks_per_node": tasks, "cpus_per_task": opts.cpus_per_run,
                              "slurm_array_parallelism": opts.array_parallelism, "name": "clsuite"}
    if opts.gpus_per_run:
        params["gpus_per_node"] = opts.gpus_per_run
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.mem_per_run:
        params["slurm_mem"] = opts.mem_per_run
    if opts.extra:
        params["slurm_additional_parameters"] = dict(opts.extra)
    executor.update_parameters(**params)
    return executor


def submit(cfgs: list[RunConfig], opts: SlurmOptions) -> str:
    """Submit ``cfgs`` as one job array; returns its id. The job folder's index records which job runs which run."""
    folder = jobs_dir(cfgs, opts)
    folder.mkdir(parents=True, exist_ok=True)
    cfgs = [dataclasses.replace(c, resume=True, progress=False, threads=c.threads or opts.cpus_per_run) for c in cfgs]
    try:
        jobs = _executor(folder, opts).map_array(run_in_job, cfgs)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        raise ClusterError(f"--executor slurm: the submission was refused: {str(exc).strip().splitlines()[-1][:200]}") \
            from None
    index = load_index(folder)
    for cfg, job in zip(cfgs, jobs):
        index[cfg.run_id()] = {"job": str(job.job_id), "out": str(Path(cfg.out) / f"{cfg.run_id()}.json")}
    write_atomic(folder / INDEX, lambda fh: fh.write(json.dumps(index, indent=1).encode()))
    return str(jobs[0].job_id).split("_")[0]


def load_index(folder: Path) -> dict[str, dict[str, str]]:
    path = Path(folder) / INDEX
    return read_json(path, "job index", ClusterError) if path.is_file() else {}


def queue() -> dict[str, str]:
    """Every array element and job in SLURM's queue with its state (``R``, ``PD``, ...), one per element; nothing
    where SLURM is not installed."""
    if shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %t"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ClusterError(f"squeue: {out.stderr.strip()[:200]}")
    return dict(line.split()[:2] for line in out.stdout.splitlines() if line.strip())


@dataclass
class RunStatus:
    run_id: str
    state: str  # done, running, pending, failed, not submitted
    job: str | None = None
    detail: str = ""


def statuses(cfgs: list[RunConfig], opts: SlurmOptions, finished: Callable[[RunConfig], bool]) -> list[RunStatus]:
    """The state of every run of a plan (see the module doc), from records, the queue and the job folder."""
    folder = jobs_dir(cfgs, opts)
    index = load_index(folder)
    queued = queue() if any(cfg.run_id() in index for cfg in cfgs) else {}  # nothing submitted: no cluster asked
    out = []
    for cfg in cfgs:
        rid = cfg.run_id()
        job = index.get(rid, {}).get("job")
        if finished(cfg):
            out.append(RunStatus(rid, "done", job))
        elif job is None:
            out.append(RunStatus(rid, "not submitted"))
        elif job in queued:
            out.append(RunStatus(rid, "running" if queued[job] in ("R", "CG") else "pending", job, queued[job]))
        else:
            out.append(RunStatus(rid, "failed", job, _last_error(folder, job)))
    return out


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Interrupt)\b")


def _last_error(folder: Path, job: str) -> str:
    """Why a job failed, from its first task's error log: the last exception line (the run's own error, not
    srun's exit notice after it), else the log's last line (e.g. slurmstepd's CANCELLED); and the log's path."""
    log = folder / f"{job}_0_log.err"
    if not log.is_file():
        return f"no error log ({log} is missing: cancelled before it started?)"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if _EXCEPTION.match(ln)]
    line = (errors or lines or ["the error log is empty"])[-1]
    return f"{line[:240]} ({log})"


def wait(cfgs: list[RunConfig], opts: SlurmOptions, finished: Callable[[RunConfig], bool], log=print,
         poll_s: float = 2.0, known: dict[str, str] | None = None) -> list[RunStatus]:
    """Block until no run of ``cfgs`` is queued or running; say each run as it finishes or fails (``known``: the
    states of runs not submitted now, which are not announced again)."""
    seen: dict[str, str] = dict(known or {})
    while True:
        now = statuses(cfgs, opts, finished)
        for s in now:
            if s.state in ("done", "failed") and seen.get(s.run_id) != s.state and s.job is not None:
                log(f"  {s.state:6s} {s.run_id}" + (f": {s.detail}" if s.state == "failed" else ""))
            seen[s.run_id] = s.state
        if not any(s.state in ("running", "pending") for s in now):
            return now
        time.sleep(poll_s)


def format_statuses(rows: list[RunStatus]) -> str:
    counts = {k: sum(r.state == k for r in rows) for k in ("done", "running", "pending", "failed", "not submitted")}
    lines = [f"{r.state:13s} {r.job or '-':12s} {r.run_id}" + (f"\n              {r.detail}" if r.state == "failed" else "")
             for r in rows]
    return "\n".join(lines + [", ".join(f"{n} {k}" for k, n in counts.items())])


__all__ = ["ClusterError", "RunStatus", "SlurmOptions", "format_statuses", "jobs_dir", "load_index", "queue",
           "run_in_job", "statuses", "submit", "wait"]
