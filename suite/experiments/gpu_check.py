"""One command that checks the suite's GPU paths and measures them (``scripts/gpu-check``, ``clsuite bench gpu``).

On whatever GPUs are visible: build open_clip ViT-B/16 with random weights (nothing downloads), write a small
synthetic sequence in the real formats (task 1 an ImageFolder tree of PNGs, task 2 webdataset shards) to a
temporary folder, then

1. every PET x {seq, pegp} x {fp32, bf16 autocast}: the runner learns task 1 (warm-up; PEGP collects its bases
   there, so task 2's steps project), then task 2's training steps are timed through the runner's own loop;
2. a 2-task run end to end (:func:`suite.engine.runner.run`);
3. with more than one GPU, the same run under ``torchrun --nproc_per_node N`` over all of them.

Per configuration it prints the step time (median of the steps after the first of task 2), images/s, the peak
memory (``torch.cuda.max_memory_allocated``), the FLOPs of one step (``FlopCounterMode``, forward and backward)
and the TFLOP/s that makes against the card's peak (:data:`PEAK_TFLOPS`, by ``torch.cuda.get_device_name()``), and
the data loader's stall share: the time spent waiting for the next batch over the step's wall time, measured around
the training loop's iterator. Any failure makes the exit status non-zero, with one line saying what failed.

``--cpu --quick`` runs the same path on the CPU with the embedded micro model and two steps (the tests run it).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from suite.data.loading import default_workers
from suite.engine.runner import RunConfig, Runner, run
from suite.models import create_model_and_transforms
from suite.pet import available_pets
from suite.results.records import write_json_atomic

GPU_MODEL = "open_clip:ViT-B-16"  # random weights: no tag, nothing downloads
CPU_MODEL = "embedded:micro-clip@random"
METHODS = ("seq", "pegp")
PRECISIONS = ("fp32", "bf16")

# Dense peak tensor throughput in TFLOP/s by precision (vendor data sheets; bf16 without sparsity, fp32 without
# TF32). Matched as a substring of torch.cuda.get_device_name(), first match wins (PCIe before the SXM default).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
]


def card_peak(name: str, precision: str) -> float | None:
    """The card's peak TFLOP/s at ``precision`` (``fp32``/``bf16``), or None for a card not in the table."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks[precision]
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# ------------------------------------------------------------------------------------------------ the data
def _texture(rng: np.random.Generator, size: int, tint: int):
    """A smooth random RGB image of ``size`` px (upsampled noise: compresses like a photo, not like static)."""
    from PIL import Image

    small = (rng.random((max(2, size // 8), max(2, size // 8), 3)) * 160 + 40 * (tint % 3)).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BILINEAR)


def write_sequence(root: Path, size: int, train_per_class: int, test_per_class: int, iterations: int,
                   batch_size: int, classes: int = 4, shards: int = 4) -> Path:
    """A two-task class-incremental sequence in the real formats under ``root``: task ``folders`` an ImageFolder
    tree of PNGs, task ``shards`` webdataset tar shards (``png`` + ``cls``, the layout
    :func:`suite.data.shards.index_shards` reads); returns the sequence YAML's path."""
    import webdataset as wds
    import yaml

    rng = np.random.default_rng(0)
    names = [f"class{c}" for c in range(2 * classes)]
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in names[:classes]:
            d = root / "img" / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _texture(rng, size, names.index(c)).save(d / f"{i}.png")
        (root / "shards").mkdir(exist_ok=True)
        count = shards if split == "train" else 1
        samples = [(label, i) for label in range(classes) for i in range(n)]
        for s in range(count):
            with wds.TarWriter(str(root / "shards" / f"shards-{split}-{s:06d}.tar")) as sink:
                for k, (label, i) in enumerate(samples[s::count]):
                    buf = io.BytesIO()
                    _texture(rng, size, classes + label).save(buf, format="PNG")
                    sink.write({"__key__": f"{split}{s}-{k:05d}", "png": buf.getvalue(), "cls": str(label).encode()})
    tasks = [{"name": "folders", "source": {"adapter": "imagefolder", "root": str(root / "img")},
              "classes": names[:classes], "templates": ["a photo of a {}."], "split": {"rule": "official"}},
             {"name": "shards", "source": {"adapter": "webdataset", "root": str(root / "shards"),
                                           "urls": "shards-{split}-*.tar"},
              "classes": names[classes:], "templates": ["a photo of a {}."], "split": {"rule": "official"}}]
    seq = root / "gpu-check.yaml"
    seq.write_text(yaml.safe_dump({"name": "gpu-check", "version": 1, "track": "class-incremental",
                                   "protocol": "task-agnostic", "tasks": tasks,
                                   "training": {"iterations": iterations, "batch_size": batch_size, "lr": 0.001}}))
    return seq


# ------------------------------------------------------------------------------------------- measurements
class TimedBatches:
    """Wraps a runner's batch maker: around the training loop's iterator, how long each ``next`` waited for its
    batch (the loader's stall) and each step's wall time (from asking for its batch to asking for the next; the
    loop reads the loss as a float every step, so the device has finished the step by then)."""

    def __init__(self, inner: Callable[..., Iterator[dict[str, Any]]], device: torch.device):
        self.inner, self.device = inner, device
        self.waits: list[float] = []
        self.walls: list[float] = []
        self.first: dict[str, Any] | None = None
        self.peak_bytes: int | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, data, steps: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        it = iter(self.inner(data, steps, seed=seed))
        last = None
        while True:
            self._sync()
            now = time.perf_counter()
            if last is not None:
                self.walls.append(now - last)
            last = now
            try:
                batch = next(it)
            except StopIteration:
                if self.device.type == "cuda":  # the training's peak, before any after-task hook
                    self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
                return
            self.waits.append(time.perf_counter() - now)
            if self.first is None:
                self.first = batch
            yield batch


def _step_flops(r: Runner, batch: dict[str, Any]) -> float:
    """FLOPs of one training step's forward and backward (torch's FlopCounterMode), on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        r.method.loss(r.ctx, batch).backward()
    for p in r.params:
        p.grad = None
    return float(counter.get_total_flops())


def measure_steps(seq: Path, model: str, pet: str, method: str, precision: str, device: torch.device, steps: int,
                  batch_size: int, workers: int, max_eval: int, tmp: Path, card: str,
                  method_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One PET x method x precision: task 1 learnt as warm-up, task 2's ``steps`` training steps measured."""
    method_options = method_options or {}
    r = Runner(RunConfig(sequence=str(seq), model=model, pet=pet, method=method, amp=precision == "bf16",
                         device=str(device), training={"iterations": steps, "batch_size": batch_size},
                         method_options=dict(method_options.get(method, {})), max_eval=max_eval, progress=False,
                         workers=workers, out=str(tmp / "out"), run_dir=str(tmp / "runs")))
    r.learn_task(0)
    timed = TimedBatches(r.batches, device)
    r.batches = timed
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    train, seconds = r.learn_task(1)
    r.batches = timed.inner
    if not timed.walls or timed.first is None:
        raise RuntimeError(f"no training step ran (iterations {train.get('iterations')})")
    flops = _step_flops(r, timed.first)
    # the first step of a task also starts the task's loader: the steady steps are the ones after it
    walls, waits = (timed.walls[1:], timed.waits[1:]) if len(timed.walls) > 1 else (timed.walls, timed.waits)
    step_s = statistics.median(walls)
    if not math.isfinite(step_s) or step_s <= 0:
        raise RuntimeError(f"step time {step_s}")
    achieved = flops / step_s / 1e12
    peak = card_peak(card, precision) if device.type == "cuda" else None
    return {"check": "steps", "pet": pet, "method": method, "precision": precision, "steps": len(timed.walls),
            "batch_size": batch_size, "step_s": step_s, "first_step_s": timed.walls[0],
            "images_per_s": batch_size / step_s,
            "peak_memory_mib": timed.peak_bytes / 2**20 if timed.peak_bytes is not None else None,
            "gflop_per_step": flops / 1e9, "tflops": achieved, "peak_tflops": peak,
            "of_peak": achieved / peak if peak else None, "stall_share": sum(waits) / sum(walls),
            "trainable_parameters": sum(p.numel() for p in r.params), "after_task_s": seconds["after_task_s"],
            "final_loss": train.get("final_loss"), "status": "ok"}


def _record_row(check: str, rec: dict[str, Any], wall: float, images: int) -> dict[str, Any]:
    train_s = sum(s["train_time_s"] for s in rec["steps"])
    if rec.get("status") != "complete" or len(rec["steps"]) != 2:
        raise RuntimeError(f"record status {rec.get('status')!r} with {len(rec['steps'])} of 2 tasks: {rec.get('error')}")
    return {"check": check, "pet": rec["pet"]["kind"], "method": rec["method"]["name"], "tasks": len(rec["steps"]),
            "wall_s": wall,
            "train_s": train_s, "images_per_s": images / train_s if train_s > 0 else None,
            "peak_memory_mib": rec["efficiency"].get("peak_memory_mb"),
            "world_size": rec["efficiency"].get("world_size", 1), "last": rec["aggregates"]["last"], "status": "ok"}


def end_to_end(seq: Path, model: str, device: torch.device, steps: int, batch_size: int, workers: int,
               max_eval: int, tmp: Path, pegp_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 2-task PEGP-LoRA run with bf16 autocast through :func:`suite.engine.runner.run`: record written, valid."""
    t0 = time.perf_counter()
    rec = run(RunConfig(sequence=str(seq), model=model, pet="lora", method="pegp", amp=True, device=str(device),
                        method_options=dict(pegp_options or {}),
                        training={"iterations": steps, "batch_size": batch_size}, max_eval=max_eval, progress=False,
                        workers=workers, out=str(tmp / "run-out"), run_dir=str(tmp / "run-dir")))
    return _record_row("run", rec, time.perf_counter() - t0, 2 * steps * batch_size)


def torchrun(seq: Path, model: str, gpus: int, steps: int, batch_size: int, max_eval: int, tmp: Path,
             timeout: float = 900) -> dict[str, Any]:
    """The same run under ``torchrun --nproc_per_node gpus -m suite run``: global batch ``gpus x batch_size``."""
    out = tmp / "torchrun-out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), "-m", "suite",
           "run", "--sequence", str(seq), "--model", model, "--pet", "lora", "--method", "pegp", "--amp",
           "--iterations", str(steps), "--batch-size", str(gpus * batch_size), "--max-eval", str(max_eval),
           "--out", str(out), "--run-dir", str(tmp / "torchrun-runs"), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {tail[-1][:300] if tail else 'no output'}")
    records = sorted(out.glob("*.json"))
    if not records:
        raise RuntimeError(f"torchrun wrote no record under {out}")
    rec = json.loads(records[0].read_text())
    row = _record_row("torchrun", rec, wall, 2 * steps * gpus * batch_size)
    if row["world_size"] != gpus:
        raise RuntimeError(f"torchrun record has world_size {row['world_size']}, expected {gpus}")
    return row


# ------------------------------------------------------------------------------------------------- output
def _num(value: float | None, fmt: str, width: int) -> str:
    return f"{'n/a':>{width}s}" if value is None else f"{value:{width}{fmt}}"


def format_row(row: dict[str, Any]) -> str:
    name = f"{row['pet']}/{row['method']}" + (f"/{row['precision']}" if "precision" in row else "")
    if row["status"] != "ok":
        return f"  {row['check']:8s} {name:28s} FAILED {row['error']}"
    if row["check"] == "steps":
        return (f"  {'steps':8s} {name:28s} {row['step_s'] * 1e3:9.1f} {row['images_per_s']:9.1f} "
                f"{_num(row['peak_memory_mib'], '.0f', 9)} {row['gflop_per_step']:10.3f} {row['tflops']:9.4f} "
                f"{_num(row['peak_tflops'], '.1f', 7) if row['peak_tflops'] else 'unknown':>7s} "
                f"{_num(row['of_peak'], '.1%', 7)} {row['stall_share']:6.1%}")
    return (f"  {row['check']:8s} {name:28s} {row['tasks']} tasks in {row['wall_s']:.1f} s (training "
            f"{row['train_s']:.2f} s, {_num(row['images_per_s'], '.1f', 1)} images/s over {row['world_size']} "
            f"process(es)), peak {_num(row['peak_memory_mib'], '.0f', 1)} MiB, last {row['last']:.3f}")


HEADER = (f"  {'check':8s} {'PET/method/precision':28s} {'ms/step':>9s} {'images/s':>9s} {'peak MiB':>9s} "
          f"{'GFLOP/step':>10s} {'TFLOP/s':>9s} {'peak':>7s} {'of peak':>7s} {'stall':>6s}")


# ---------------------------------------------------------------------------------------------- the command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run the same path on the CPU (micro model unless --model)")
    p.add_argument("--quick", action="store_true", help="two steps per task, a handful of images (a smoke test)")
    p.add_argument("--model", help=f"backbone (default {GPU_MODEL} with random weights; --cpu: {CPU_MODEL})")
    p.add_argument("--pets", help="comma-separated PETs (default: every available PET)")
    p.add_argument("--steps", type=int, help="training steps per task (default 10; --quick 2)")
    p.add_argument("--batch-size", type=int, help="training batch size per process (default 64; --quick 4)")
    p.add_argument("--workers", type=int, help="loader processes (default: the suite's default; --quick 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; --cpu --quick 1, which a "
                   "loaded machine runs steadier)")
    p.add_argument("--out", help="also write the measurements to this JSON file")
    p.add_argument("--fail-on", metavar="PET", help="make PET's configurations raise (checks the failure path)")
    return p


class Refused(Exception):
    """An input refused before anything runs (exit status 2)."""


def check(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every check of :mod:`suite.experiments.gpu_check`; returns the report (rows with their status)."""
    known = available_pets()
    pets = [p.strip() for p in args.pets.split(",")] if args.pets else known
    unknown = [p for p in pets if p not in known]
    if unknown or not pets:
        raise Refused(f"unknown PET {unknown[0] if unknown else '(none given)'!r} (available: {', '.join(known)})")
    for name in ("steps", "batch_size", "workers", "threads"):
        value = getattr(args, name)
        if value is not None and not (0 if name == "workers" else 1) <= value <= 10**6:
            raise Refused(f"--{name.replace('_', '-')}: {value} out of range")
    if args.cpu:
        device, gpus, card = torch.device("cpu"), 0, "cpu"
    else:
        if not torch.cuda.is_available():
            raise Refused("no CUDA GPU is visible (--cpu runs the same path on the CPU)")
        device, gpus, card = torch.device("cuda"), torch.cuda.device_count(), torch.cuda.get_device_name()
    model = args.model or (CPU_MODEL if args.cpu else GPU_MODEL)
    steps = args.steps or (2 if args.quick else 10)
    batch = args.batch_size or (4 if args.quick else 64)
    workers = args.workers if args.workers is not None else (0 if args.quick else default_workers())
    max_eval = 8 if args.quick else 128
    threads = args.threads or (1 if args.cpu and args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    # --quick: PEGP collects its bases from one batch instead of its default 8 (the same code, less of it)
    method_options = {"pegp": {"collect_batches": 1}} if args.quick else {}
    report: dict[str, Any] = {"device": card, "gpus": gpus, "model": model, "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "steps": steps, "batch_size": batch,
                              "workers": workers, "method_options": method_options, "rows": []}

    t0 = time.perf_counter()
    bb = create_model_and_transforms(model, device=device)
    if bb.pretrained:
        raise Refused(f"{model}: has pretrained weights; the check builds a random backbone (no download)")
    report["parameters"] = sum(p.numel() for p in bb.parameters())
    report["image_size"] = size = int(bb.image_size)
    where = "--cpu" if args.cpu else f"{gpus} GPU(s) visible"
    say(f"gpu-check on {card} ({where}; torch {torch.__version__}, {torch.get_num_threads()} threads): "
        f"{model}, random weights, {report['parameters'] / 1e6:.2f} M parameters, {size} px, built in "
        f"{time.perf_counter() - t0:.1f} s")
    del bb

    with tempfile.TemporaryDirectory(prefix="clsuite-gpu-check-") as folder:
        tmp = Path(folder)
        t0 = time.perf_counter()
        per_class = 4 if args.quick else max(8, 2 * batch // 4)
        seq = write_sequence(tmp / "data", size + size // 8, per_class, 2 if args.quick else 16, steps, batch)
        say(f"data: ImageFolder PNGs (task 1) and webdataset shards (task 2), 4 classes x {per_class} training images "
            f"each, written in {time.perf_counter() - t0:.1f} s; batch {batch}, {steps} steps per task, "
            f"{workers} loader worker(s)")
        say("each row: task 1 learnt as warm-up, then task 2 (shards) timed; median over its steps after the first")
        say(HEADER)
        rows = report["rows"]
        for pet in pets:
            for method in METHODS:
                for precision in PRECISIONS:
                    try:
                        if pet == args.fail_on:
                            raise RuntimeError(f"forced failure (--fail-on {pet})")
                        row = measure_steps(seq, model, pet, method, precision, device, steps, batch, workers,
                                            max_eval, tmp / "steps", card, method_options)
                    except Exception as exc:  # noqa: BLE001 — reported as the configuration's one line
                        row = {"check": "steps", "pet": pet, "method": method, "precision": precision,
                               "status": "failed", "error": one_line(exc)}
                    rows.append(row)
                    say(format_row(row))
        attempts = [("run", lambda: end_to_end(seq, model, device, steps, batch, workers, max_eval, tmp,
                                                  method_options.get("pegp")))]
        if gpus > 1:
            attempts.append(("torchrun", lambda: torchrun(seq, model, gpus, steps, batch, max_eval, tmp)))
        for name, fn in attempts:
            try:
                row = fn()
            except Exception as exc:  # noqa: BLE001
                row = {"check": name, "pet": "lora", "method": "pegp", "status": "failed", "error": one_line(exc)}
            rows.append(row)
            say(format_row(row))
        if gpus <= 1:
            label = "--cpu" if args.cpu else ("one GPU visible" if gpus == 1 else "no GPU visible")
            report["torchrun"] = f"skipped: {label}"
            say(f"  torchrun skipped: {label} (it needs more than one GPU)")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        report = check(args)
    except Refused as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 — the model or the data could not be made: one line
        print(f"gpu-check: failed: {one_line(exc)}", file=sys.stderr)
        return 1
    failed = [r for r in report["rows"] if r["status"] != "ok"]
    report["failed"] = len(failed)
    if args.out:
        write_json_atomic(args.out, report)
    if failed:
        first = failed[0]
        name = "/".join(str(first[k]) for k in ("check", "pet", "method", "precision") if k in first)
        print(f"gpu-check: {len(failed)} of {len(report['rows'])} checks failed; first: {name}: {first['error']}",
              file=sys.stderr)
        return 1
    return 0


__all__ = ["PEAK_TFLOPS", "TimedBatches", "card_peak", "check", "end_to_end", "main", "measure_steps", "torchrun",
           "write_sequence"]
