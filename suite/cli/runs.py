"""Running: ``run`` one configuration, ``sweep`` a grid or plan, ``calibrate`` a sequence's budgets, ``reproduce``
a record. Run options are typed when parsed (:func:`run_config_from_args`)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from suite.cli.verbs import command, count, seed_list
from suite.config.run import TRACKERS
from suite.errors import ConfigError
from suite.registry import METHODS, PETS


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets and braces (so a value may be a YAML list or mapping)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def _kv(text: str | list[str], flag: str = "options") -> dict[str, Any]:
    """``rank=8,towers=vision`` → ``{"rank": 8, "towers": "vision"}``; values are YAML, so nested options work:
    ``thresholds={vision.attn.0: 0.9, text.attn.0: 0.95}``. A repeatable flag gives a list of such texts. A key
    given twice (in one text or across repeats) is refused: which of the two was meant cannot be known."""
    from suite.config.sequences import parse_yaml

    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for part in [p for t in ([text] if isinstance(text, str) else text) for p in _split_top_level(t)]:
        if "=" not in part:
            raise ConfigError(f"--{flag}: {part!r} is not key=value")
        k, v = part.split("=", 1)
        k = k.strip()
        if k in given:
            raise ConfigError(f"--{flag}: {k} is given twice ({given[k][:40]} and {part[:40]}); give it once")
        given[k] = part
        try:
            out[k] = parse_yaml(v)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--{flag}: {k}: {v[:40]!r} is not a YAML value ({str(exc).splitlines()[0][:80]})") from None
    return out


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same fields as the options below (options override it)")
    p.add_argument("--sequence", help="task sequence: shipped name or path to a YAML file (sweep --plan: only the "
                   "plan's runs on this sequence; several comma-separated)")
    p.add_argument("--model", help="backbone: embedded:tiny-clip (default), open_clip:ViT-B-16@openai, hf:/path")
    p.add_argument("--pet", help=f"{', '.join(PETS.builtin)}, a plug-in, or none")
    p.add_argument("--pet-options", action="append", help="PET hyper-parameters, e.g. rank=8,towers=vision,layers=0-5, "
                   "or preset=pegp-official (repeatable; a key given twice is refused)")
    p.add_argument("--method", help=f"{', '.join(METHODS.builtin)}, or a plug-in")
    p.add_argument("--method-options", action="append", help="method hyper-parameters, e.g. threshold=0.99 (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast")
    p.add_argument("--iterations", type=int, help="training iterations per task (overrides the sequence default)")
    p.add_argument("--epochs", type=int, help="training epochs per task (instead of iterations)")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--max-eval", type=int, help="cap on test samples per task (quick runs)")
    p.add_argument("--workers", type=int, help="processes decoding file-backed training images (default: half the "
                   "cores, at most 8; results do not depend on it)")
    p.add_argument("--out", help="folder for the results record (default results/)")
    p.add_argument("--run-dir", help="folder for checkpoints (default runs/)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last finished task")
    p.add_argument("--restart", action="store_true", default=None, help="discard a checkpoint of this run's folder "
                   "(e.g. one of another configuration) and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--log", action="append", choices=TRACKERS, help="experiment tracker (repeatable): tensorboard, "
                   "wandb (offline unless an API key is set) or csv; loss and learning rate per step, every measure "
                   "per task, aggregates, matrix and record at the end (tensorboard and wandb: "
                   "pip install clip-continual-suite[trackers])")
    p.add_argument("--log-dir", help="folder the trackers write under, one subfolder per run (default: the run "
                   "folder, runs/<run id>/)")


# the run options that go to suite.api.run_config under their own names
RUN_OPTIONS = ("sequence", "config", "model", "pet", "method", "seed", "device", "amp", "iterations", "epochs",
               "batch_size", "lr", "max_eval", "workers", "out", "run_dir", "resume", "restart", "log", "log_dir")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's run options as keywords of :func:`suite.api.run_config` (``None``: not given), the
    ``key=value`` options parsed."""
    opts = {key: getattr(args, key, None) for key in RUN_OPTIONS}
    opts["pet_options"] = _kv(args.pet_options, "pet-options") if args.pet_options else None
    opts["method_options"] = _kv(args.method_options, "method-options") if args.method_options else None
    opts["progress"] = not args.quiet
    opts["command"] = "clsuite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    opts["source"] = args.config or "command line"
    return opts


def run_config_from_args(args: argparse.Namespace):
    """The :class:`~suite.config.run.RunConfig` of the command line (:func:`suite.api.run_config`)."""
    from suite.api import run_config

    return run_config(**run_options(args))


@command("run", "run one (sequence, model, PET, method, seed) and write its results record", _add_run_options)
def _run(args: argparse.Namespace) -> int:
    from suite.api import run
    from suite.engine.runner import TrainingFailed

    opts = run_options(args)
    opts["loggers"] = opts.pop("log")
    try:
        rec = run(**opts)
    except TrainingFailed as exc:
        print(f"clsuite: run failed: {exc}", file=sys.stderr)
        return 1
    if rec.path is not None:  # rank 0 under torchrun
        print(rec.table())
        print(f"record: {rec.path}")
    return 0


SLURM_FLAGS = {"slurm_partition": "partition", "slurm_time": "time", "gpus_per_run": "gpus_per_run",
               "cpus_per_run": "cpus_per_run", "mem_per_run": "mem_per_run", "array_parallelism": "array_parallelism",
               "jobs_dir": "jobs_dir"}  # flag (dest) -> key of a plan's executor: section


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["status"], help="status: each run of the plan or grid as done, "
                   "running, pending, failed (with the last line of its error log) or not submitted")
    _add_run_options(p)
    p.add_argument("--plan", help="a plan file (e.g. leaderboards/embedded-plan.yaml) instead of the grid options")
    p.add_argument("--jobs", type=count, default=1, help="local executor: runs at once; the cores are divided between them")
    p.add_argument("--methods", default="seq,pegp", help="comma-separated methods")
    p.add_argument("--pets", default="lora", help="comma-separated PETs (none for PET-less methods)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds")
    p.add_argument("--executor", choices=["local", "slurm"], default="local", help="local: a process pool on this "
                   "machine (default); slurm: one SLURM job array through submitit, one element per run")
    p.add_argument("--wait", action="store_true", help="slurm: block until every run is done or failed, saying each")
    p.add_argument("--slurm-partition", help="slurm: the partition (default: the cluster's default)")
    p.add_argument("--slurm-time", help="slurm: time limit per run, minutes or [D-]HH:MM:SS (default 60)")
    p.add_argument("--gpus-per-run", type=int, help="slurm: GPUs per run; more than 1 starts that many SLURM tasks, "
                   "data parallel (default 0)")
    p.add_argument("--cpus-per-run", type=count, help="slurm: CPU cores per task, also its torch threads (default 1)")
    p.add_argument("--mem-per-run", help="slurm: memory per run, e.g. 16G (default: the partition's)")
    p.add_argument("--array-parallelism", type=count, help="slurm: array elements running at once (default 16)")
    p.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help="slurm: any other sbatch option, "
                   "e.g. account=abc or qos=high (repeatable)")
    p.add_argument("--jobs-dir", help="slurm: job folder with logs and submitit's files (default: beside the "
                   "records folder, <out>-jobs)")


@command("sweep", "run a grid of methods x PETs x seeds, or every run of a plan file, here or on SLURM",
         _sweep_args)
def _sweep(args: argparse.Namespace) -> int:
    from suite.api import plan, sweep
    from suite.experiments.slurm import SlurmOptions, format_statuses, statuses
    from suite.experiments.sweep import finished_check, main_log, plan_executor, sweep_on_slurm

    opts = run_options(args)
    if args.plan:
        if args.config:
            raise ConfigError("--plan: the plan names its runs; give no --config with it")
        del opts["config"]
        cfgs = plan(args.plan, **opts)  # with --sequence: only the plan's runs on it
    else:
        cfgs = plan(methods=args.methods.split(","), pets=args.pets.split(","), seeds=args.seeds, **opts)
    executor = {**(plan_executor(args.plan) if args.plan else {}),
                **{key: getattr(args, flag) for flag, key in SLURM_FLAGS.items() if getattr(args, flag) is not None}}
    if args.slurm_extra:
        executor["extra"] = {**executor.get("extra", {}), **_kv(args.slurm_extra, "slurm-extra")}
    opts = SlurmOptions.from_dict(executor, args.plan or "command line")
    if args.action == "status":
        rows = statuses(cfgs, opts, finished_check())
        print(format_statuses(rows))
        return 0 if all(r.state == "done" for r in rows) else 1
    if args.executor == "slurm":
        rows = sweep_on_slurm(cfgs, opts, resume=bool(args.resume), block=args.wait, log=main_log)
        if args.wait:
            print(format_statuses(rows))
        return 1 if args.wait and any(r.state != "done" for r in rows) else 0
    for p in sweep(cfgs, jobs=args.jobs, resume=bool(args.resume), log=main_log).paths:
        print(p)
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sequence", help="shipped sequence name or file")
    p.add_argument("--pets", help="comma-separated PETs (default: every built-in PET that learns on the sequence's "
                   "track)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds")
    p.add_argument("--jobs", type=count, default=1, help="runs at once; the CPU cores are divided between them")
    p.add_argument("--out", default="calibration", help="folder for the runs' records (default calibration/)")
    p.add_argument("--from", dest="source", help="compute the report from the records in this folder instead of "
                   "running (e.g. results)")
    p.add_argument("--report", help="where the JSON report goes (default OUT/SEQUENCE.calibration.json)")
    p.add_argument("--grid", help="explore candidate budgets on seq only instead, e.g. 'lr=0.002,0.005;iterations=60,120' "
                   "(keys: iterations, lr, batch_size, weight_decay, warmup): gain, forgetting, Last, train − test "
                   "accuracy and the time of each candidate")


@command("calibrate", "does the sequence's budget make naive training learn and forget? zero-shot, seq, PEGP "
         "per PET over seeds, against the calibration targets", _calibrate_args)
def _calibrate(args: argparse.Namespace) -> int:
    from suite.experiments.calibrate import calibrate
    from suite.experiments.sweep import main_log
    from suite.paths import safe_name
    from suite.results.calibration import format_grid, format_report, write_report

    if args.pets is None:
        from suite.config.sequences import load_sequence
        from suite.pet import pets_for_track

        args.pets = ",".join(pets_for_track(load_sequence(args.sequence).track))
    if args.grid:
        from suite.experiments.calibrate import explore

        if args.source:
            raise ConfigError("calibrate: --grid runs its candidates; it does not read --from")
        rep = explore(args.sequence, args.pets.split(","), args.seeds, args.grid, out=args.out, jobs=args.jobs,
                      log=main_log)
        print(format_grid(rep))
        default = Path(args.out) / f"{safe_name(Path(args.sequence).stem)}.grid.json"
        print(f"report: {write_report(rep, args.report or default)}")
        return 0
    rep = calibrate(args.sequence, args.pets.split(","), args.seeds, out=args.out,
                    jobs=args.jobs, source=args.source, log=main_log)
    print(format_report(rep))
    default = Path(args.out) / f"{safe_name(Path(args.sequence).stem)}.calibration.json"
    print(f"report: {write_report(rep, args.report or default)}")
    return 0


def _reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("record")
    p.add_argument("--tolerance", type=float,
                   help="largest difference, in accuracy (0.01 = one point), of any accuracy-matrix entry or aggregate "
                   "for the re-run to count as reproduced (default: one point, REPRODUCE_TOLERANCE in "
                   "suite/experiments/reproduce.py); on the machine that wrote the record a re-run is bit-identical, "
                   "which the result reports as bit_identical")
    p.add_argument("--threads", type=int,
                   help="CPU threads for the re-run (default: the record's environment.threads, which records made "
                   "before it lack; then torch's default). A run is bit-identical on the machine that wrote it at "
                   "the thread count it was made with; the committed results/ ran one thread per run")


@command("reproduce", "re-run a record's configuration; mark it reproduced when the matrix agrees", _reproduce_args)
def _reproduce(args: argparse.Namespace) -> int:
    from suite.experiments.reproduce import reproduce

    res = reproduce(args.record, *([args.tolerance] if args.tolerance is not None else []), threads=args.threads)
    print(json.dumps(res))
    return 0 if res["reproduced"] else 1
