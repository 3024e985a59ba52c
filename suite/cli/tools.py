"""The embedded default and the machine: ``demo``, ``pretrain``, ``zeroshot-report``, ``bench``."""
from __future__ import annotations

import argparse
import json

from suite.cli.verbs import command, count


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-results", help="folder for records and site (default demo-results/)")
    p.add_argument("--quick", action="store_true", help="one sequence, short training (a smoke test; its numbers "
                   "are not the board's)")
    p.add_argument("--no-site", action="store_true", help="do not build the leaderboard site")


@command("demo", "the main job: zero-shot, seq-PET and PET+PEGP on the embedded sequences", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    from suite.experiments.demo import demo

    print(demo(out=args.out, quick=args.quick, site=not args.no_site))
    return 0


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="tiny-world")
    p.add_argument("--out", help="folder for <model>.safetensors and <model>.json")
    p.add_argument("--steps", type=count, help="override the recipe's step count (short checks)")


@command("pretrain", "pretrain an embedded CLIP with a recipe (suite/models/recipes)", _pretrain_args)
def _pretrain(args: argparse.Namespace) -> int:
    from suite.experiments.pretrain import pretrain

    res = pretrain(args.recipe, args.out, steps=args.steps)
    losses = res["losses"]
    k = max(1, min(50, len(losses) // 4))
    print(f"loss: first {sum(losses[:k]) / k:.4f} → last {sum(losses[-k:]) / k:.4f} over {len(losses)} steps; "
          f"{res['train_seconds']:.0f}s training" + (f"; weights sha256 {res['sha256']}" if "sha256" in res else ""))
    return 0


def _zs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded:tiny-clip")
    p.add_argument("--out", help="also write the report to this JSON file")


@command("zeroshot-report", "zero-shot accuracy of a backbone on held-out world splits and real sets", _zs_args)
def _zs_report(args: argparse.Namespace) -> int:
    from suite.experiments.zeroshot_report import zero_shot_report
    from suite.models import create_model_and_transforms

    rep = {"model": args.model, "command": "clsuite zeroshot-report --model " + args.model,
           **zero_shot_report(create_model_and_transforms(args.model))}
    text = json.dumps(rep, indent=1)
    print(text)
    if args.out:
        from suite.results.records import write_json_atomic

        write_json_atomic(args.out, rep)
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["runner", "pegp", "memory", "loader", "text", "step", "run", "all", "projection",
                                    "gpu"],
                   help="step: a training step's GFLOP/s against the machine's matmul; run: fixed cost per run and "
                   "evaluation's share; projection is the older name of pegp; gpu: scripts/gpu-check (not in all)")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke test of the bench)")
    p.add_argument("--model", help="backbone instead of each bench's default (tiny CLIP; loader: open_clip ViT-B-16)")
    p.add_argument("--cpu", action="store_true", help="gpu: the same path on the CPU (scripts/gpu-check --cpu)")
    p.add_argument("--out", help="gpu: also write the measurements to this JSON file")


@command("bench", "speed/memory benchmarks that print ratios", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    if args.what == "gpu":
        from suite.experiments.gpu_check import main as gpu_check

        return gpu_check([*(["--cpu"] if args.cpu else []), *(["--quick"] if args.quick else []),
                          *(["--model", args.model] if args.model else []), *(["--out", args.out] if args.out else [])])
    from suite.experiments.bench import run_bench

    print(run_bench(args.what, quick=args.quick, model=args.model))
    return 0
