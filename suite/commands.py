"""Subcommands beyond tasks/metrics: run, sweep, summarize, demo, pretrain, zeroshot-report, bench.

Each handler parses nothing itself: it maps arguments onto one public function of the package.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .verbs import arguments, command, count, seed_list


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


def _kv(text: str, flag: str = "options") -> dict[str, Any]:
    """``rank=8,towers=vision`` → ``{"rank": 8, "towers": "vision"}``; values are YAML, so nested options work:
    ``thresholds={vision.attn.0: 0.9, text.attn.0: 0.95}``."""

    out: dict[str, Any] = {}
    for part in _split_top_level(text):
        if "=" not in part:
            raise ConfigError(f"--{flag}: {part!r} is not key=value")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"--{flag}: {k.strip()}: {v!r} is not a YAML value") from None
    return out


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same fields as the options below (options override it)")
    p.add_argument("--sequence", help="task sequence: shipped name or path to a YAML file")
    p.add_argument("--model", help="backbone: embedded:tiny-clip (default), open_clip:ViT-B-16@openai, hf:/path")
    p.add_argument("--pet", help="lora, adapter, prefix, vpt, coop, gated-prefix, gated-prompt, a plug-in, or none")
    p.add_argument("--pet-options", help="PET hyper-parameters, e.g. rank=8,towers=vision,layers=0-5, or preset=pegp-official")
    p.add_argument("--method", help="zeroshot, seq, pegp, finetune, lwf, ewc, wiseft, zscl, l2p, gpm, or a plug-in")
    p.add_argument("--method-options", help="method hyper-parameters, e.g. threshold=0.99")
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


def run_config_from_args(args: argparse.Namespace):
    from .runner import RunConfig
    from .sequences import read_yaml

    data: dict[str, Any] = {}
    if args.config:
        data = read_yaml(args.config, ConfigError, "config file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: (top level): a run config is a mapping")
    for key in ("sequence", "model", "method", "seed", "device", "amp", "max_eval", "out", "run_dir", "resume", "restart",
                "workers"):
        val = getattr(args, key, None)
        if val is not None:
            data[key] = val
    if args.pet is not None:
        data["pet"] = None if args.pet == "none" else args.pet
    if args.pet_options:
        data["pet_options"] = {**data.get("pet_options", {}), **_kv(args.pet_options, "pet-options")}
    if args.method_options:
        data["method_options"] = {**data.get("method_options", {}), **_kv(args.method_options, "method-options")}
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise ConfigError(f"{args.config or 'command line'}: training: expected a mapping")
    training = dict(training)
    for key in ("iterations", "epochs", "batch_size", "lr"):
        val = getattr(args, key, None)
        if val is not None:
            training[key] = val
    data["training"] = training
    data["progress"] = not args.quiet
    data["command"] = "clsuite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return RunConfig.from_dict(data, args.config or "command line")


@command("run")
def _run(args: argparse.Namespace) -> int:
    from .runner import Runner, TrainingFailed, summary_table

    cfg = run_config_from_args(args)
    runner = Runner(cfg)
    try:
        rec = runner.run()
    except TrainingFailed as exc:
        print(f"clsuite: run failed: {exc}; finished tasks are kept in {runner.run_dir}/record.partial.json",
              file=sys.stderr)
        return 1
    if runner.rank == 0:
        print(summary_table(rec))
        print(f"record: {runner.out_path()}")
    return 0


@command("sweep")
def _sweep(args: argparse.Namespace) -> int:
    from .sweep import grid, load_plan, main_log, sweep

    if args.plan:
        if args.sequence or args.config:
            raise ConfigError("--plan: the plan names the sequences; give no --sequence or --config with it")
        args.sequence = "-"  # the plan's runs replace it
        cfgs = load_plan(args.plan, run_config_from_args(args))
    else:
        cfgs = grid(run_config_from_args(args), methods=args.methods.split(","), pets=args.pets.split(","),
                    seeds=args.seeds)
    for p in sweep(cfgs, jobs=args.jobs, resume=bool(args.resume), log=main_log):
        print(p)
    return 0


@command("calibrate")
def _calibrate(args: argparse.Namespace) -> int:
    from .budgets import calibrate, format_report, write_report
    from .paths import safe_name
    from .sweep import main_log

    rep = calibrate(args.sequence, args.pets.split(","), args.seeds, out=args.out,
                    jobs=args.jobs, source=args.source, log=main_log)
    print(format_report(rep))
    default = Path(args.out) / f"{safe_name(Path(args.sequence).stem)}.calibration.json"
    print(f"report: {write_report(rep, args.report or default)}")
    return 0


@command("summarize")
def _summarize(args: argparse.Namespace) -> int:
    from .sweep import summarize_table

    print(summarize_table(args.records))
    return 0


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from .demo import demo

    print(demo(out=args.out, quick=args.quick, site=not args.no_site))
    return 0


@command("pretrain")
def _pretrain(args: argparse.Namespace) -> int:
    from .pretrain import pretrain

    res = pretrain(args.recipe, args.out, steps=args.steps)
    losses = res["losses"]
    k = max(1, min(50, len(losses) // 4))
    print(f"loss: first {sum(losses[:k]) / k:.4f} → last {sum(losses[-k:]) / k:.4f} over {len(losses)} steps; "
          f"{res['train_seconds']:.0f}s training" + (f"; weights sha256 {res['sha256']}" if "sha256" in res else ""))
    return 0


@command("zeroshot-report")
def _zs_report(args: argparse.Namespace) -> int:
    from .models import create_model_and_transforms
    from .zeroshot_report import zero_shot_report

    rep = {"model": args.model, "command": "clsuite zeroshot-report --model " + args.model,
           **zero_shot_report(create_model_and_transforms(args.model))}
    text = json.dumps(rep, indent=1)
    print(text)
    if args.out:
        from .records import write_json_atomic

        write_json_atomic(args.out, rep)
    return 0


@command("bench")
def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    print(run_bench(args.what, quick=args.quick, model=args.model))
    return 0


@command("leaderboard build")
def _lb_build(args: argparse.Namespace) -> int:
    from .leaderboard.build import build_site

    print(build_site(args.results, args.out))
    return 0


def _records_from(args: argparse.Namespace) -> list[dict]:
    """Records named on the command line (files or folders), or ``--results DIR`` filtered by ``--sequence``."""
    from .sweep import collect

    records = collect(list(args.records) + ([args.results] if getattr(args, "results", None) else []))
    if getattr(args, "sequence", None):
        records = [r for r in records if r["sequence"]["name"] == args.sequence]
    if getattr(args, "method", None):
        records = [r for r in records if r["method"]["name"] in args.method]
    if getattr(args, "pet", None):
        records = [r for r in records if (r["pet"]["kind"] or "none") in args.pet]
    if not records:
        raise ConfigError("no records: name record files or folders, or --results DIR [--sequence NAME]")
    return records


@command("plot")
def _plot(args: argparse.Namespace) -> int:
    from .leaderboard.plots import plot_records

    print(plot_records(_records_from(args), args.kind, args.out, args.metric, args.x, args.y))
    return 0


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    from .analysis import COMPARE_METRICS, compare, format_compare

    pairs = []
    for text in args.pair or []:
        a, sep, b = text.partition(":")
        if not sep or not a or not b:
            raise ConfigError(f"--pair {text!r}: give A:B, e.g. --pair pegp/lora:seq/lora")
        pairs.append((a, b))
    names = tuple(args.metrics.split(",")) if args.metrics else COMPARE_METRICS
    print(format_compare(compare(_records_from(args), names, pairs), args.format))
    return 0


@command("submit")
def _submit(args: argparse.Namespace) -> int:
    from .leaderboard.submit import pack

    print(pack(args.records, args.out, args.method_source or ""))
    return 0


@command("validate")
def _validate(args: argparse.Namespace) -> int:
    from .leaderboard.submit import validate_submission

    problems = validate_submission(args.submission)
    for line in problems:
        print(f"rejected: {line}")
    if not problems:
        print(f"valid: {args.submission}")
    return 1 if problems else 0


@command("accept")
def _accept(args: argparse.Namespace) -> int:
    from .leaderboard.build import default_results_dir
    from .leaderboard.submit import accept

    for path in accept(args.submission, args.results or default_results_dir()):
        print(path)
    return 0


@command("reproduce")
def _reproduce(args: argparse.Namespace) -> int:
    from .leaderboard.submit import reproduce

    res = reproduce(args.record, *([args.tolerance] if args.tolerance is not None else []))
    print(json.dumps(res))
    return 0 if res["reproduced"] else 1


def _add_record_selection(p: argparse.ArgumentParser) -> None:
    """The options :func:`_records_from` reads."""
    p.add_argument("records", nargs="*", help="record files or folders")
    p.add_argument("--results", help="a folder of records (with --sequence to pick one sequence)")
    p.add_argument("--sequence", help="only records of this sequence")
    p.add_argument("--method", action="append", help="only records of this method (repeatable)")
    p.add_argument("--pet", action="append", help="only records of this PET, or none (repeatable)")


@arguments
def register(sub: argparse._SubParsersAction) -> None:
    lb = sub.add_parser("leaderboard", help="build the static leaderboard site")
    lsub = lb.add_subparsers(dest="sub", required=True)
    p = lsub.add_parser("build", help="turn results/*.json into a static site (default leaderboards/site/)")
    p.add_argument("--results", help="folder of results records (default: the checkout's results/)")
    p.add_argument("--out", help="site folder (default leaderboards/site); only a folder clsuite built is replaced")
    p = sub.add_parser("plot", help="one figure comparing records: seeds grouped, mean with a 95%% band per method")
    _add_record_selection(p)
    p.add_argument("--kind", default="curves", choices=["curves", "matrix", "retention", "hallucination", "tradeoff"])
    p.add_argument("--metric", default="avg", help="curves: avg, first-task, task:<name> or control:<name>")
    p.add_argument("--x", default="plasticity", help="tradeoff: the x metric (plasticity, zero_shot_retention, ...)")
    p.add_argument("--y", default="last", help="tradeoff: the y metric (last, forgetting, ...)")
    p.add_argument("--out", default="figure.svg", help="the figure file: .svg, .png or .pdf")
    p = sub.add_parser("compare", help="mean ± 95%% CI per method group, and paired-by-seed differences")
    _add_record_selection(p)
    p.add_argument("--pair", action="append", help="A:B — print A − B per metric, paired by seed (repeatable); "
                   "A and B are group labels such as pegp/lora")
    p.add_argument("--metrics", help="comma-separated metrics (default: avg,last,transfer,forgetting,plasticity,"
                   "zero_shot_retention,hallucination_fpr)")
    p.add_argument("--format", default="text", choices=["text", "md", "csv", "json"])
    p = sub.add_parser("submit", help="pack run records into one submission file")
    p.add_argument("records", nargs="+")
    p.add_argument("--out", default="submission.json")
    p.add_argument("--method-source", help="where the method's code lives (URL, package==version)")
    p = sub.add_parser("validate", help="check a submission: schema, board, manifests, seeds, recomputed aggregates")
    p.add_argument("submission")
    p = sub.add_parser("accept", help="validate a submission and put its records into results/ (the board's input)")
    p.add_argument("submission")
    p.add_argument("--results", help="the records folder (default: the checkout's results/)")
    p = sub.add_parser("reproduce", help="re-run a record's configuration; mark it reproduced when the matrix agrees")
    p.add_argument("record")
    p.add_argument("--tolerance", type=float,
                   help="largest difference, in accuracy (0.01 = one point), of any accuracy-matrix entry or aggregate "
                   "for the re-run to count as reproduced (default: one point, REPRODUCE_TOLERANCE in "
                   "suite/leaderboard/submit.py); on the machine that wrote the record a re-run is bit-identical, which "
                   "the result reports as bit_identical")

    p = sub.add_parser("run", help="run one (sequence, model, PET, method, seed) and write its results record")
    _add_run_options(p)
    p = sub.add_parser("sweep", help="run a grid of methods x PETs x seeds, or every run of a plan file")
    _add_run_options(p)
    p.add_argument("--plan", help="a plan file (e.g. leaderboards/embedded-plan.yaml) instead of the grid options")
    p.add_argument("--jobs", type=count, default=1, help="runs at once; the CPU cores are divided between them")
    p.add_argument("--methods", default="seq,pegp", help="comma-separated methods")
    p.add_argument("--pets", default="lora", help="comma-separated PETs (none for PET-less methods)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds")
    p = sub.add_parser("calibrate", help="does the sequence's budget make naive training learn and forget? "
                       "zero-shot, seq, PEGP per PET over seeds, against the calibration targets")
    p.add_argument("sequence", help="shipped sequence name or file")
    p.add_argument("--pets", default="lora,adapter,prefix,vpt,coop,gated-prefix,gated-prompt", help="comma-separated PETs")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds")
    p.add_argument("--jobs", type=count, default=1, help="runs at once; the CPU cores are divided between them")
    p.add_argument("--out", default="calibration", help="folder for the runs' records (default calibration/)")
    p.add_argument("--from", dest="source", help="compute the report from the records in this folder instead of "
                   "running (e.g. results)")
    p.add_argument("--report", help="where the JSON report goes (default OUT/SEQUENCE.calibration.json)")
    p = sub.add_parser("summarize", help="mean ± 95%% CI across seeds of records")
    p.add_argument("records", nargs="+", help="record files or folders")
    p = sub.add_parser("demo", help="the main job: zero-shot, seq-PET and PET+PEGP on the embedded sequences")
    p.add_argument("--out", default="demo-results", help="folder for records and site (default demo-results/)")
    p.add_argument("--quick", action="store_true", help="one sequence, short training (a smoke test; its numbers "
                   "are not the board's)")
    p.add_argument("--no-site", action="store_true", help="do not build the leaderboard site")
    p = sub.add_parser("pretrain", help="pretrain an embedded CLIP with a recipe (suite/models/recipes)")
    p.add_argument("--recipe", default="tiny-world")
    p.add_argument("--out", help="folder for <model>.safetensors and <model>.json")
    p.add_argument("--steps", type=count, help="override the recipe's step count (short checks)")
    p = sub.add_parser("zeroshot-report", help="zero-shot accuracy of a backbone on held-out world splits and real sets")
    p.add_argument("--model", default="embedded:tiny-clip")
    p.add_argument("--out", help="also write the report to this JSON file")
    p = sub.add_parser("bench", help="speed/memory benchmarks that print ratios")
    p.add_argument("what", choices=["runner", "pegp", "memory", "loader", "text", "all", "projection"],
                   help="projection is the older name of pegp")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke test of the bench)")
    p.add_argument("--model", help="backbone instead of each bench's default (tiny CLIP; loader: open_clip ViT-B-16)")

