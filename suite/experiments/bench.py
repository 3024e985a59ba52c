"""Benchmarks that print ratios (``clsuite bench runner|pegp|memory|loader|text|step|run|all``). Targets live here,
not in timed tests: a runner training step ≤ 1.05x a bare PyTorch step; PEGP's projection ≤ +3 % of a training
step; basis memory measured, not computed from shapes; a training step's share of the machine's matmul
throughput, a run's fixed cost and evaluation's share (the performance issue's targets).

Every ratio is measured interleaved: the two loops alternate (and swap order) over repeated rounds, and the
median of the per-round ratios is reported, so machine noise and warm-up hit both alike.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from suite.config.sequences import parse_sequence
from suite.data import materialize
from suite.data.loading import Batches, default_workers
from suite.engine.runner import RunConfig, Runner
from suite.evaluation.evaluator import Evaluator
from suite.models import create_model_and_transforms
from suite.paths import parse_json, read_json
from suite.pet import attach_pet

BENCH_SEQUENCE = "world-class-incremental"


def interleaved(a: Callable[[], None], b: Callable[[], None], rounds: int) -> tuple[float, float, float]:
    """Median seconds of ``a`` and of ``b`` and the median of the per-round ratios ``b / a``; rounds alternate
    which of the two runs first. One warm-up call of each is not counted."""
    a(), b()
    ta, tb, ratios = [], [], []
    for i in range(rounds):
        times = {}
        for name, fn in ((("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))):
            t = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t
        ta.append(times["a"])
        tb.append(times["b"])
        ratios.append(times["b"] / times["a"])
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def _runner(method: str, steps: int | None, model: str, pet_options: dict | None = None, pet: str = "lora") -> Runner:
    """A runner on :data:`BENCH_SEQUENCE` writing to a temporary folder; ``steps=None`` keeps the shipped budget."""
    tmp = tempfile.mkdtemp(prefix="clsuite-bench-")
    return Runner(RunConfig(sequence=BENCH_SEQUENCE, model=model, pet=pet, pet_options=pet_options or {},
                            method=method, training={"iterations": steps} if steps else {}, out=tmp, run_dir=tmp,
                            progress=False))


@contextlib.contextmanager
def _fixed_batches(r: Runner, batches: list[dict]):
    """The runner trains on ``batches`` (prepared once) instead of making its own, inside the block."""
    own = r.batches
    r.batches = lambda d, n, seed=0: iter(batches)
    try:
        yield
    finally:
        r.batches = own


def _machine() -> str:
    dev = "cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{dev}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"


def bench_runner(quick: bool = False, model: str = "embedded:tiny-clip") -> str:
    """The runner's training loop against a bare PyTorch loop doing the same work on the same batches."""
    steps, rounds = (10, 5) if quick else (25, 11)
    r = _runner("seq", steps, model, {"towers": "vision"})
    data = r.data[r.seq.tasks[0].name]
    batches = list(r.batches(data, steps, seed=0))
    text = r.evaluator.class_text_features(data.classnames, data.templates)

    def bare() -> None:
        opt = torch.optim.AdamW(r.params, lr=1e-3)
        for b in batches:
            opt.zero_grad(set_to_none=True)
            img = F.normalize(r.backbone.encode_image(b["images"]).float(), dim=-1)
            F.cross_entropy(r.backbone.logit_scale_value.float() * img @ text.T, b["labels"]).backward()
            opt.step()

    def suite_own_batches() -> None:
        r.learn_task(0)

    def suite_same_batches() -> None:
        with _fixed_batches(r, batches):
            r.learn_task(0)

    tb, ts, ratio = interleaved(bare, suite_same_batches, rounds)
    _, to, ratio_own = interleaved(bare, suite_own_batches, rounds)
    r.evaluator.text_encodes = 0
    r.evaluate(0, None)
    first = r.evaluator.text_encodes
    r.evaluate(0, None)
    again = r.evaluator.text_encodes - first
    return "\n".join([
        f"runner vs bare PyTorch ({model}, vision LoRA, {steps} steps per round, {rounds} interleaved rounds; {_machine()}):",
        f"  same prepared batches:   runner {ts / steps * 1000:7.1f} ms/step, bare {tb / steps * 1000:7.1f} ms/step, "
        f"median ratio {ratio:.3f} (target ≤ 1.05)",
        f"  runner making its batches (data preparation counted on the runner's side only): "
        f"{to / steps * 1000:7.1f} ms/step, median ratio {ratio_own:.3f}",
        f"  text encodes: first evaluation {first}, a second one with the text side unchanged {again} (expected 0)"])


def bench_pegp(quick: bool = False, model: str = "embedded:tiny-clip") -> str:
    """PEGP's cost with bases collected from a real task: per training step, and basis collection per task."""
    steps, rounds = (10, 5) if quick else (30, 11)
    r = _runner("pegp", steps, model)
    _, first = r.learn_task(0)  # trains task 1 and collects its bases exactly as a run does
    rep = r.method.report()
    data = r.data[r.seq.tasks[1].name]
    method = r.method

    def loop(project: bool) -> Callable[[], None]:
        def run() -> None:  # the runner's own training of task 2; without projection the bases are set aside
            done = method.tasks_done
            method.tasks_done = done if project else 0
            try:
                r.train_task(1, data)
            finally:
                method.tasks_done = done
        return run

    tp, tq, ratio = interleaved(loop(False), loop(True), rounds)
    collect = first["after_task_s"]
    budget = r.seq.default_training("lora")["iterations"]
    at_budget = first["train_s"] / steps * budget  # the task's training time at the shipped budget, extrapolated
    return "\n".join([
        f"PEGP with bases from task 1 of {BENCH_SEQUENCE} ({model}, LoRA on both towers; {rep['basis_directions']} "
        f"directions in {rep['spaces']} spaces, {rep['basis_bytes'] / 2**10:.0f} KiB; {_machine()}):",
        f"  training step {tp / steps * 1000:7.1f} ms, with projection {tq / steps * 1000:7.1f} ms: median overhead "
        f"{ratio - 1:+.2%} over {rounds} interleaved rounds (target ≤ +3%)",
        f"  basis collection after task 1: {collect:.2f} s = {collect / first['train_s']:+.1%} of that task's "
        f"{steps} training steps ({first['train_s']:.2f} s); {collect / at_budget:+.1%} of a task at the shipped "
        f"budget of {budget} steps (its time extrapolated from the measured step time)"])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_memory(quick: bool = False, model: str = "embedded:tiny-clip") -> str:
    """Measured memory: the device's peak while learning two tasks with PEGP, and the bases' bytes as held."""
    steps = 10 if quick else 30
    r = _runner("pegp", steps, model)
    cuda = r.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(r.device)
        base = torch.cuda.memory_allocated(r.device) / 2**20
    else:
        base = _rss_mib()
    lines = [f"memory of PEGP on {BENCH_SEQUENCE} ({model}, LoRA on both towers, {steps} steps per task; {_machine()}):"]
    for t in range(2):
        r.learn_task(t)
        held = sum(b.U.element_size() * b.U.numel() for b in r.method.bases.values())
        stacked = sum(g[3].element_size() * g[3].numel() + sum(c.element_size() * c.numel() for c in g[4].values())
                      for g in r.method.projector.groups())
        lines.append(f"  after task {t + 1}: bases {held / 2**10:8.1f} KiB as held (float64), "
                     f"{stacked / 2**10:8.1f} KiB more in the projector's stacked copies; record's basis_bytes "
                     f"{r.method.report()['basis_bytes'] / 2**10:.1f} KiB")
    if cuda:
        peak = torch.cuda.max_memory_allocated(r.device) / 2**20
        lines.append(f"  peak allocated on {r.device}: {peak:.1f} MiB ({peak - base:.1f} MiB above the loaded model)")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        lines.append(f"  process peak resident memory {peak:.1f} MiB; resident after loading model and data {base:.1f} "
                     f"MiB (CPU: the peak includes everything this process did before)")
    return "\n".join(lines)


def _synthetic_imagefolder(root, classes: int, per_class: int, size: int = 224) -> None:
    """JPEGs of random textures, ``classes`` folders × ``per_class`` images, at ``size`` px (made at bench time)."""

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / "train" / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).resize((size, size), Image.BILINEAR).save(d / f"{i}.jpg", quality=90)
    (root / "test").symlink_to(root / "train")


def bench_loader(quick: bool = False, model: str = "open_clip:ViT-B-16") -> str:
    """Images/s of the suite's training input path (seeded batches decoded by DataLoader workers) against a
    plain torchvision ImageFolder + DataLoader with the same transform, batch size and workers."""



    classes, per_class = (4, 50) if quick else (10, 200)
    batch, workers, rounds = 64, max(1, default_workers()), (2 if quick else 5)
    root = Path(tempfile.mkdtemp(prefix="clsuite-loader-"))
    _synthetic_imagefolder(root, classes, per_class)
    bb = create_model_and_transforms(model if model != "embedded:tiny-clip" else "open_clip:ViT-B-16")
    seq = parse_sequence({"name": "bench-loader", "version": 1, "track": "class-incremental", "protocol": "task-id",
                          "tasks": [{"name": "all", "source": {"adapter": "imagefolder", "root": str(root)},
                                     "classes": {"from": "folders"}, "split": {"rule": "official"}}]})
    data = materialize(seq, "all")
    steps = len(data.train) // batch
    suite_batches = Batches(bb, "class-incremental", batch, workers)

    def suite_path() -> None:
        for b in suite_batches(data, steps, seed=0):
            assert b["images"].shape[0] == batch

    def torchvision_path() -> None:
        ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=bb.pil_preprocess)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0), drop_last=True)
        for n, (images, _) in enumerate(loader):
            if n + 1 >= steps:
                break

    tv, su, ratio = interleaved(torchvision_path, suite_path, rounds)
    images = steps * batch
    return "\n".join([
        f"training input path, {len(data.train)} synthetic 224-px JPEGs in {classes} folders, batch {batch}, "
        f"{workers} worker(s), {model}'s transform; {rounds} interleaved rounds ({_machine()}):",
        f"  suite {images / su:7.1f} images/s, torchvision ImageFolder + DataLoader {images / tv:7.1f} images/s: "
        f"suite ÷ torchvision throughput {tv / su:.3f} (median of per-round ratios {1 / ratio:.3f}; target ≥ 0.9)",
    ])


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's native library logs its start and stop on file descriptor 2; keep the bench's output clean."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _text_step_memory(model: str, classes: int, chunk: int) -> tuple[float, float]:
    """One training step of a text-tower LoRA over a head of ``classes`` prompts: the tensor memory it adds at
    its peak, in MiB (CUDA: the allocator's peak; CPU: the profiler's memory timeline, which counts every tensor
    allocation and free), and the median seconds of three more, unprofiled steps."""



    torch.manual_seed(0)
    backbone = create_model_and_transforms(model)
    attach_pet(backbone, "lora", towers="text").to(backbone.device)
    ev = Evaluator(backbone, text_chunk=chunk)
    names = [f"class {i}" for i in range(classes)]
    with torch.no_grad():
        dim = backbone.encode_text(backbone.tokenize(["a"]).to(backbone.device)).shape[-1]
    image = F.normalize(torch.randn(8, dim, device=backbone.device), dim=-1)
    target = torch.arange(8, device=image.device) % classes

    def step() -> None:
        text = ev.class_text_features(names, ["a photo of a {}."], fresh=True)
        F.cross_entropy(image @ text.T * 100, target).backward()

    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        added = torch.cuda.max_memory_allocated() - before
    else:
        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                         record_shapes=True, with_stack=True) as prof:
            step()
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the timeline is the CPU's only per-tensor account
            prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
            _, sizes = read_json(f"{tmp}/timeline.json", "memory timeline")
        totals = [sum(s) for s in sizes]
        added = max(totals) - totals[0]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return added / 2**20, statistics.median(times)


def bench_text(quick: bool = False, model: str = "embedded:tiny-clip") -> str:
    """Memory of a training step when the text tower trains, against the number of classes in the head: the
    prompts encoded in one pass vs in checkpointed chunks (:meth:`Evaluator._encode_prompts`)."""
    counts, chunk = ((8, 64, 256) if quick else (16, 64, 256, 1024)), 32
    modes = {"one pass": 10**9, f"chunks of {chunk}": chunk}
    rows = {(c, m): _text_step_memory(model, c, size) for c in counts for m, size in modes.items()}
    lines = [f"text-tower training step vs head size ({model}, LoRA on the text tower, 1 template, batch 8; "
             f"{_machine()}): tensor memory the step adds at its peak, MiB (median seconds of a step)"]
    lines.append(f"  {'classes':>8s}  " + "  ".join(f"{m:>20s}" for m in modes))
    for c in counts:
        lines.append(f"  {c:8d}  " + "  ".join(f"{rows[c, m][0]:11.1f} ({rows[c, m][1]:5.2f} s)" for m in modes))
    lo, hi = counts[0], counts[-1]
    for m in modes:
        lines.append(f"  {m}: {hi} classes add {rows[hi, m][0] / max(rows[lo, m][0], 1e-9):.1f}x the memory of "
                     f"{lo} classes, in {rows[hi, m][1] / rows[lo, m][1]:.1f}x the time")
    return "\n".join(lines)


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """The machine's measured matrix-multiply throughput (median of ``reps`` n x n products, GFLOP/s): what a
    training step's arithmetic could reach on this device, with the threads torch uses now."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times[2:]) / 1e9


def _step_cost(pet: str, steps: int, model: str) -> tuple[float, float]:
    """FLOPs of one seq training step (forward and backward, torch's FlopCounterMode) and its median seconds over
    ``steps`` steps of the runner's own loop on fixed batches, for ``pet`` at the sequence's budget."""
    from torch.utils.flop_counter import FlopCounterMode

    r = _runner("seq", steps, model, pet=pet)
    data = r.data[r.seq.tasks[0].name]
    batches = list(r.batches(data, steps, seed=0))
    with FlopCounterMode(display=False) as counter:
        r.method.loss(r.ctx, batches[0]).backward()
    flops = counter.get_total_flops()
    with _fixed_batches(r, batches):
        r.learn_task(0)  # warm-up
        rounds = [r.learn_task(0)[1]["train_s"] / steps for _ in range(3)]
    return float(flops), statistics.median(rounds)


def bench_step(quick: bool = False, model: str = "embedded:tiny-clip") -> str:
    """A training step's arithmetic rate against the machine's own matmul throughput (the step's share of it), with
    the threads torch has and, on the CPU, with one thread: how each job of ``sweep --jobs <cores>`` runs."""
    steps = 10 if quick else 30
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    settings = [threads] + ([1] if device.type == "cpu" and threads > 1 else [])
    lines = [f"bench step ({_machine()}): seq training steps on {BENCH_SEQUENCE} at its budget, {steps} steps x 3",
             f"  {'PET':8s} {'threads':>7s} {'GFLOP/step':>10s} {'ms/step':>8s} {'GFLOP/s':>8s} {'matmul':>8s} "
             f"{'of matmul':>9s}"]
    try:
        for n in settings:
            torch.set_num_threads(n)
            peak = matmul_gflops(device)  # fp32, 2048^2, with these threads
            for pet in ("lora", "vpt"):
                flops, sec = _step_cost(pet, steps, model)
                rate = flops / sec / 1e9
                lines.append(f"  {pet:8s} {n:7d} {flops / 1e9:10.2f} {1e3 * sec:8.1f} {rate:8.1f} {peak:8.0f} "
                             f"{rate / peak:9.1%}")
    finally:
        torch.set_num_threads(threads)
    lines.append("  (matmul: the measured fp32 2048^2 product in GFLOP/s with those threads)")
    return "\n".join(lines)


# Run in a new process: seconds from the parent's clock before the process started to the first training step of
# a run (lone), then, in the same process (a sweep worker), from building the next run's Runner to its first step:
# the same sequence and seed (the pretrained evaluation is the process's already) and another seed (evaluated anew).
_FIXED_COST_CHILD = """
import json, sys, tempfile, time
t0 = float(sys.argv[1])
from suite.config.run import RunConfig
from suite.engine.runner import Runner
from suite.methods.seq import SequentialPET


class FirstStep(SequentialPET):
    def loss(self, ctx, batch):
        if not hasattr(self, "first"):
            self.first = time.time()
        return super().loss(ctx, batch)


def one(start, seed):
    tmp, method = tempfile.mkdtemp(), FirstStep()
    Runner(RunConfig(sequence=sys.argv[2], model=sys.argv[3], pet="lora", method="seq", out=tmp, run_dir=tmp, seed=seed,
                     progress=False, training={"iterations": 2}), method=method).run()
    return method.first - start


print(json.dumps([one(t0, 0), one(time.time(), 0), one(time.time(), 1)]))
"""


def _fixed_costs(model: str, cache: str) -> list[float]:
    """[lone, worker same seed, worker new seed] seconds, in a new process whose render cache is ``cache``."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", _FIXED_COST_CHILD, str(t0), BENCH_SEQUENCE, model],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "CLSUITE_CACHE": cache})
    if out.returncode != 0:
        raise RuntimeError(f"bench run: the child run failed: {out.stderr.strip().splitlines()[-1:]}")
    return parse_json(out.stdout.strip().splitlines()[-1], "bench run")


def _evaluation_share(rec: dict) -> tuple[float, float]:
    ev = rec["efficiency"]["zero_shot_eval_time_s"] + sum(s["eval_time_s"] for s in rec["steps"])
    return ev, rec["efficiency"]["zero_shot_eval_time_s"] + rec["efficiency"]["wall_time_s"]


def bench_run(quick: bool = False, model: str = "embedded:tiny-clip") -> str:
    """What a run costs before its first training step, alone (a new process; the rendered data not yet on disk,
    then on disk) and in a sweep worker (a process that already ran one), and evaluation's share of a whole run at
    the shipped budget, alone and as a sweep worker's next run on the same sequence and seed."""
    with tempfile.TemporaryDirectory(prefix="clsuite-bench-cache-") as cache:
        cold = _fixed_costs(model, cache)
        warm = _fixed_costs(model, cache)
    first = _runner("seq", None, model).run()
    alone = _evaluation_share(first)
    worker = _evaluation_share(_runner("seq", None, model).run())  # this process evaluated the pretrained model
    share = "; ".join(f"{name} {ev:.1f} s of {total:.1f} s = {ev / total:.0%}"
                      for name, (ev, total) in (("lone", alone), ("in a sweep worker", worker)))
    return "\n".join([
        f"bench run ({_machine()}): seq-LoRA on {BENCH_SEQUENCE}",
        f"  fixed cost, process start to the first training step: lone {cold[0]:.2f} s with the data to render, "
        f"{warm[0]:.2f} s with it on disk; in a sweep worker {warm[1]:.2f} s (same sequence and seed), "
        f"{warm[2]:.2f} s (another seed: its pretrained evaluation read from the disk cache the first process wrote)",
        f"  evaluation's share of a run at the shipped budget ({len(first['steps'])} tasks): "
        f"{share}"])


BENCHES = {"runner": bench_runner, "pegp": bench_pegp, "memory": bench_memory, "loader": bench_loader,
           "text": bench_text, "step": bench_step, "run": bench_run}


def run_bench(what: str, quick: bool = False, model: str | None = None) -> str:
    """``all`` runs every bench; ``model`` replaces each bench's default backbone."""
    what = "pegp" if what == "projection" else what  # the older name
    names = list(BENCHES) if what == "all" else [what]
    return "\n\n".join(BENCHES[n](quick, model) if model else BENCHES[n](quick) for n in names)
