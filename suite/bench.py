"""Benchmarks that print ratios (``clsuite bench projection|runner|memory|all``). Targets live here, not in
timed tests: PEGP projection ≤ 3 % of a training step; a runner step ≤ 1.05x a bare PyTorch step; basis
memory per task, with the ViT-B-16 + LoRA (both towers) 11-task budget of 25 MB.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from .models import create_model_and_transforms
from .pet import attach_pet
from .projection import FeatureBasis


def _time_pair(a: Callable[[], None], b: Callable[[], None], repeat: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, measured interleaved so that machine noise hits both alike."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return sorted(ta)[len(ta) // 2], sorted(tb)[len(tb) // 2]


def _step_fns(model: str, batch: int, rank_fraction: float):
    from .methods.pegp import PEGP
    from .methods.base import RunContext

    torch.manual_seed(0)
    bb = create_model_and_transforms(model)
    pet = attach_pet(bb, "lora", towers="both", rank=4)
    params = list(pet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, bb.image_size, bb.image_size)
    tokens = bb.tokenize(["a photo of a red circle."] * batch)
    method = PEGP()
    ctx = RunContext(backbone=bb, pet=pet, device=torch.device("cpu"), sequence=None)
    method.setup(ctx)
    for b in method.bases.values():  # pretend several tasks were learned: bases of the given size
        k = max(1, int(rank_fraction * b.dim))
        b.U = torch.linalg.qr(torch.randn(b.dim, k, dtype=torch.float64))[0]
    method.tasks_done = 1

    def forward_backward() -> None:
        opt.zero_grad(set_to_none=True)
        img = F.normalize(bb.encode_image(x), dim=-1)
        txt = F.normalize(bb.encode_text(tokens), dim=-1)
        F.cross_entropy(img @ txt.T * 10, torch.arange(batch)).backward()

    def plain() -> None:
        forward_backward()
        opt.step()

    def projected() -> None:
        forward_backward()
        method.before_step(ctx)
        opt.step()
        method.after_step(ctx)

    return plain, projected, method


def bench_projection(quick: bool = False) -> str:
    lines = ["PEGP projection overhead (LoRA r=4 on both towers, AdamW, bases at 1/4 of each space):"]
    models = [("embedded:tiny-clip", 64, 40), ("embedded:tiny-clip", 256, 15)] + ([] if quick else [("open_clip:ViT-B-16", 8, 5)])
    for model, batch, repeat in models:
        plain, projected, method = _step_fns(model, batch, 0.25)
        tp, tq = _time_pair(plain, projected, repeat)
        feats = torch.randn(4096, 768 if "ViT" in model else 128)
        b = FeatureBasis(feats.shape[1], 0.97)
        b.observe(feats)
        t = time.perf_counter()
        b.update()
        svd = time.perf_counter() - t
        lines.append(f"  {model:22s} batch {batch:3d}: step {tp * 1000:8.1f} ms, with projection {tq * 1000:8.1f} ms, "
                     f"overhead ratio {tq / tp - 1:+.2%} (target ≤ +3%); one basis update ({feats.shape[1]}-d) {svd * 1000:.1f} ms")
    return "\n".join(lines)


def bench_runner(quick: bool = False) -> str:
    """Runner training step vs a bare loop over the same batches; and text re-encodes for a vision-only PET."""
    import tempfile

    from .runner import RunConfig, Runner

    tmp = tempfile.mkdtemp()
    cfg = RunConfig(sequence="world-class-incremental", model="embedded:tiny-clip", pet="lora",
                    pet_options={"towers": "vision"}, method="seq", training={"iterations": 30 if quick else 100},
                    out=tmp, run_dir=tmp, progress=False)
    r = Runner(cfg)
    data = r.data[r.seq.tasks[0].name]
    r.ctx.task_index, r.ctx.task_data = 0, data
    t = time.perf_counter()
    r.train_task(0, data)
    runner_s = time.perf_counter() - t
    batches = list(r.batches(data, r._iterations(data), seed=0))
    opt = torch.optim.AdamW(r.params, lr=1e-3)
    text = r.evaluator.class_text_features(data.classnames, data.templates)
    t = time.perf_counter()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        img = F.normalize(r.backbone.encode_image(b["images"]), dim=-1)
        F.cross_entropy(r.backbone.logit_scale_value * img @ text.T, b["labels"]).backward()
        opt.step()
    bare_s = time.perf_counter() - t
    r.evaluator.text_encodes = 0
    r.evaluate(0, None)
    first = r.evaluator.text_encodes
    r.evaluate(0, None)
    again = r.evaluator.text_encodes - first
    return (f"runner step vs bare PyTorch step (tiny CLIP, vision LoRA, {len(batches)} steps; the bare loop reuses the "
            f"runner's prepared batches, so data preparation is inside the runner's time only): "
            f"{runner_s / len(batches) * 1000:.1f} ms vs {bare_s / len(batches) * 1000:.1f} ms, ratio {runner_s / bare_s:.3f} "
            f"(target ≤ 1.05)\ntext encodes: first evaluation {first}, a second one with the text side unchanged {again} "
            f"(vision-only PET: expected 0)")


def bench_memory(quick: bool = False) -> str:
    """Basis memory: measured on the embedded sequences; for ViT-B-16 + LoRA, the per-space bound."""
    import open_clip

    lines = []
    m = open_clip.create_model("ViT-B-16") if not quick else None
    if m is not None:
        vis, txt = m.visual.transformer, m.transformer
        spaces = [(vis.width, 4)] * (len(vis.resblocks) * 4) + [(txt.width, 4)] * (len(txt.resblocks) * 4)
        full = sum(d * d * 4 + r * r * 4 for d, r in spaces)
        lines.append(f"ViT-B-16 LoRA(q,k,v,out; r=4) on both towers: {len(spaces)} A-spaces; bases if every space were "
                     f"full rank: {full / 2**20:.1f} MiB. The 25 MB target allows on average "
                     f"{int((25e6 / 4 / len(spaces)) / 640)} directions per A-space (mean width 640).")
    lines.append("Measured per task on embedded runs: see efficiency.basis_bytes and steps[*].method in results records "
                 "(clsuite demo writes them).")
    return "\n".join(lines)


def run_bench(what: str, quick: bool = False) -> str:
    parts = {"projection": bench_projection, "runner": bench_runner, "memory": bench_memory}
    names = list(parts) if what == "all" else [what]
    return "\n\n".join(parts[n](quick) for n in names)
