"""The continual loop: for each task, train → evaluate every task and control set → checkpoint → record.

``run(RunConfig(...))`` is what ``clsuite run`` calls. Randomness is re-seeded per task from (seed, task), so
``--resume`` from the last finished task gives the same record as an uninterrupted run. Under ``torchrun``
each rank trains on its shard of every batch and gradients are averaged (data parallel); rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import metrics
from .data import TaskData, materialize
from .data.shards import ShardError, ShardStream
from .errors import ConfigError, SuiteError
from .evaluation.calibration import ece_with_interval
from .evaluation.evaluator import ConceptProbe, DecodedImages, Evaluator, StreamInput, as_model_batch, batch_images, hijacking
from .evaluation.hallucination import name_words
from .methods import Method, RunContext, make_method
from .models import create_model_and_transforms, weights_digest
from .optim import TrainConfig, make_optimizer, make_scheduler
from .paths import read_json, safe_name
from .pet import attach_pet, available_pets
from .records import SCHEMA_ID, step_summary, strip_timings, validate_record, write_json_atomic
from .sequences import TaskSequence, load_sequence

# Offset of the seeds of batches a method draws itself (ctx.batches: PEGP's basis collection, EWC's Fisher),
# so they never coincide with the training batches of the same task.
METHOD_BATCHES = 10_000


class CheckpointError(SuiteError):
    """A checkpoint that cannot be resumed: unreadable, or of another configuration."""


class TrainingFailed(SuiteError, RuntimeError):
    """A task failed (NaN loss, exception); earlier tasks' results are already on disk."""


@dataclass
class RunConfig:
    sequence: str
    model: str = "embedded:tiny-clip"
    pet: str | None = "lora"
    pet_options: dict[str, Any] = field(default_factory=dict)
    method: str = "seq"
    method_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # overrides of the sequence's defaults
    out: str = "results"
    run_dir: str = "runs"
    resume: bool = False
    eval_batch_size: int = 256
    max_eval: int | None = None
    progress: bool = True
    command: str = ""
    threads: int | None = None  # torch CPU threads for this run (None: torch's default)
    restart: bool = False  # discard a checkpoint of another configuration in the run folder instead of refusing
    workers: int | None = None  # processes decoding file-backed training images (None: default_workers())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<config>") -> "RunConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: {unknown[0]}: unknown field; known: {', '.join(sorted(known))}")
        if "sequence" not in data:
            raise ConfigError(f"{source}: sequence: required field is missing")
        TrainConfig.from_dict(data.get("training") or {}, source)  # unknown keys and bad values, named
        for key in ("out", "run_dir"):
            if key in data and Path(str(data[key])).exists() and not Path(str(data[key])).is_dir():
                raise ConfigError(f"{source}: {key}: {data[key]} is a file, not a folder")
        for key, low in (("seed", 0), ("max_eval", 1), ("eval_batch_size", 1), ("threads", 1), ("workers", 0)):
            v = data.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise ConfigError(f"{source}: {key}: {v!r} must be an integer >= {low}")
        return cls(**data)

    def run_id(self) -> str:
        """File-safe id of the configuration (:func:`suite.paths.safe_name`): it names the record and run folder."""
        opts = json.dumps([self.pet_options, self.method_options, self.training, self.max_eval], sort_keys=True)
        tag = hashlib.sha256(opts.encode()).hexdigest()[:8]
        model = self.model.replace(":", "-").replace("/", "_").replace("@", "-")[-40:]
        return safe_name(f"{Path(self.sequence).stem}__{model}__{self.pet or 'none'}__{self.method}__s{self.seed}__{tag}",
                         max_len=160)


# --------------------------------------------------------------------------------------------- helpers
def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` that exists. Under
    torchrun, ``auto`` and ``cuda`` mean this process's own GPU, ``cuda:$LOCAL_RANK``, made current."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"--device: {name!r}: the suite runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device: {name!r} but this machine has no CUDA device")
    if dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device: cuda:{dev.index} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(dev)
    return dev


def gather_features(local: torch.Tensor) -> torch.Tensor:
    """Features of every process's shard, in rank order; only this process's own rows carry gradients (as
    open_clip's non-local contrastive loss), so a contrastive loss over the result sees the global batch."""
    parts = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts)


def _task_seed(seed: int, t: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{t}".encode()).digest()[:4], "little")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment(device: torch.device) -> dict[str, Any]:
    import open_clip

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    from . import __version__

    return {"suite": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "open_clip": open_clip.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "world_size": _dist()[1], "git_commit": commit}


def default_workers() -> int:
    """Decoding processes for file-backed training data: half the cores, at most 8 (0 on a 1-2 core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores // 2) if cores > 2 else 0


class Batches:
    """Seeded mini-batches of one task's training split; each rank takes its shard of every global batch.

    The order of images depends only on the seed. In-memory (embedded) data is sliced directly; images read
    from files are decoded by ``workers`` DataLoader processes (pinned memory, prefetch) in that same order, so a
    run is identical with any number of workers."""

    def __init__(self, backbone, track: str, batch_size: int, workers: int = 0):
        self.backbone, self.track, self.batch_size, self.workers = backbone, track, batch_size, int(workers)

    def make(self, data: TaskData, idx: list[int], images: torch.Tensor | None = None, draw: int = 0) -> dict[str, Any]:
        """The batch of images ``idx``; on the cross-modal track with each image's caption for its ``draw``-th use."""
        split = data.train
        captions = [split.caption(i, draw) for i in idx] if self.track == "cross-modal" else None
        return self._assemble(data, batch_images(self.backbone, split, idx) if images is None else images,
                              split.labels[idx], captions)

    def _assemble(self, data: TaskData, images: torch.Tensor, labels, captions: list[str] | None) -> dict[str, Any]:
        """A training batch as losses read it: model inputs, labels, the task's data, and caption tokens."""
        batch = {"images": images, "labels": torch.as_tensor(labels, device=self.backbone.device), "data": data}
        if captions is not None:
            batch["tokens"] = self.backbone.tokenize(list(captions)).to(self.backbone.device)
        return batch

    def order(self, data: TaskData, n: int, seed: int = 0) -> list[list[int]]:
        """This rank's image indices of each of ``n`` batches."""
        rank, world = _dist()
        g = torch.Generator().manual_seed(seed)
        total = len(data.train)
        if total == 0:
            return []
        out, perm, pos = [], torch.randperm(total, generator=g), 0
        for _ in range(n):
            if pos + self.batch_size > total:
                perm, pos = torch.randperm(total, generator=g), 0
            out.append(perm[pos:pos + self.batch_size].tolist()[rank::world])
            pos += self.batch_size
        return out

    def epoch_of(self, b: int, total: int) -> int:
        """How many times :meth:`order` has reshuffled before batch ``b`` (each epoch draws the next caption)."""
        return b // max(1, total // self.batch_size)

    def __call__(self, data: TaskData, n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        if data.train_stream is not None:
            yield from self.streamed(data, n, seed)
            return
        order = self.order(data, n, seed)
        total = len(data.train)
        if data.train.images is not None or self.workers == 0 or not order:
            for b, idx in enumerate(order):
                yield self.make(data, idx, draw=self.epoch_of(b, total))
            return
        loader = torch.utils.data.DataLoader(DecodedImages(self.backbone, data.train), batch_sampler=order,
                                             num_workers=self.workers, pin_memory=self.backbone.device.type == "cuda",
                                             prefetch_factor=4)
        for b, (idx, images) in enumerate(zip(order, loader)):
            yield self.make(data, idx, as_model_batch(self.backbone, images), draw=self.epoch_of(b, total))

    def streamed(self, data: TaskData, n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        """``n`` batches read front to back from the task's shards (:class:`~suite.data.shards.ShardStream`): this
        rank's share of every global batch, epoch after epoch; a reader's last incomplete batch is dropped."""
        rank, world = _dist()
        src = data.train_stream
        stream = ShardStream(src.shards, src.fmt, StreamInput(self.backbone), seed, rank, world, src.shuffle)
        workers = min(self.workers, len(src.shards) // world)
        share = len(range(rank, self.batch_size, world))  # this rank's rows of a global batch, as order() deals them
        loader = torch.utils.data.DataLoader(stream, batch_size=share, num_workers=workers, drop_last=True,
                                             pin_memory=self.backbone.device.type == "cuda")
        made, epoch = 0, 0
        while made < n:
            stream.set_epoch(epoch)
            before = made
            for images, labels, captions in loader:
                yield self._assemble(data, as_model_batch(self.backbone, images), labels,
                                     captions if self.track == "cross-modal" else None)
                made += 1
                if made == n:
                    return
            if made == before:
                raise ShardError(f"{data.name}: no reader of {len(src.shards)} shard(s) holds a whole batch of "
                                 f"{share} samples")
            epoch += 1


# ------------------------------------------------------------------------------------------------- run
class Runner:
    def __init__(self, cfg: RunConfig, method: Method | None = None):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = resolve_device(cfg.device)
        init_distributed(self.device)
        self.rank, self.world = _dist()
        self.seq: TaskSequence = load_sequence(cfg.sequence)
        torch.manual_seed(cfg.seed)
        self.backbone = create_model_and_transforms(cfg.model, device=self.device)
        self.weights = weights_digest(self.backbone)  # before any PET or method touches it
        self.method = method or make_method(cfg.method, cfg.method_options)
        if self.method.needs_pet and self.method.trains and not cfg.pet:
            raise ConfigError(f"method {self.method.name} trains a PET: give --pet ({', '.join(available_pets())})")
        use_pet = cfg.pet and self.method.needs_pet
        self.pet = attach_pet(self.backbone, cfg.pet, **cfg.pet_options).to(self.device) if use_pet else None
        self.train = TrainConfig.from_dict({**self.seq.default_training(cfg.pet if self.pet is not None else None),
                                            **cfg.training}, f"{cfg.sequence}: run")
        size = self.backbone.image_size if self.seq.embedded else None
        self.data = {t.name: materialize(self.seq, t, size) for t in self.seq.tasks + self.seq.control_sets}
        amp = cfg.amp and self.device.type in ("cuda", "cpu")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if amp else None
        workers = default_workers() if cfg.workers is None else cfg.workers
        self.evaluator = Evaluator(self.backbone, cfg.eval_batch_size, cfg.max_eval, self.autocast, workers=workers)
        self.batches = Batches(self.backbone, self.seq.track, self.train.batch_size, workers)
        self.ctx = RunContext(backbone=self.backbone, pet=self.pet, device=self.device, sequence=self.seq, seed=cfg.seed,
                              task_loss=self.task_loss, batch_size=int(self.train.batch_size),
                              batches=lambda d, n: self.batches(d, n, seed=_task_seed(
                                  self.cfg.seed, METHOD_BATCHES + self.ctx.task_index)))
        self.ctx.logits = self.logits
        self.method.setup(self.ctx)
        self.params = self.method.trainable(self.ctx) if self.method.trains else []
        self.head = self._head()
        self.probe = ConceptProbe.from_tasks(self.data, [t.name for t in self.seq.tasks])
        self.run_dir = Path(cfg.run_dir) / cfg.run_id()
        self._fingerprint: dict[str, Any] | None = None

    # -- what changes the text side ------------------------------------------------------------------
    @property
    def text_trains(self) -> bool:
        if self.method.text_changes is not None:
            return bool(self.method.text_changes)
        return bool(self.pet is not None and self.pet.touches_tower("text"))

    def _class_templates(self, tasks) -> dict[str, tuple[str, ...]]:
        """Each class of ``tasks`` once, in task order, with the templates of the first task naming it."""
        seen: dict[str, tuple[str, ...]] = {}
        for t in tasks:
            for c in self.data[t.name].classnames:
                seen.setdefault(c, tuple(self.data[t.name].templates))
        return seen

    def _head(self) -> list[tuple[str, tuple[str, ...]]]:
        """Task-agnostic head: every class of the sequence."""
        return list(self._class_templates(self.seq.tasks).items())

    # -- losses ----------------------------------------------------------------------------------------
    def logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        bb = self.backbone
        ctx = self.autocast() if self.autocast else nullcontext()
        with ctx:
            img = F.normalize(bb.encode_image(batch["images"]).float(), dim=-1)
            if self.seq.track == "cross-modal":
                txt = F.normalize(bb.encode_text(batch["tokens"]).float(), dim=-1)
                if self.world > 1:  # every process scores the whole global batch (see gather_features)
                    img, txt = gather_features(img), gather_features(txt)
                return bb.logit_scale_value.float() * img @ txt.T, torch.arange(len(img), device=img.device)
            data: TaskData = batch["data"]
            # a trainable text side is encoded afresh (gradients; feature collection sees the text tower too)
            txt = self.evaluator.class_text_features(data.classnames, data.templates, fresh=self.text_trains)
            return bb.logit_scale_value.float() * img @ txt.T, batch["labels"]

    def task_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        logits, target = self.logits(batch)
        loss = F.cross_entropy(logits, target)
        if self.seq.track == "cross-modal":
            loss = (loss + F.cross_entropy(logits.T, target)) / 2
            if self.world > 1:
                # the global-batch loss, with gradients through this process's features only: the gradients,
                # averaged over processes by the training loop, then sum to the one-process gradient
                loss = loss * self.world
        return loss

    # -- training --------------------------------------------------------------------------------------
    def iterations_for(self, data: TaskData) -> int:
        """Training steps of a task: ``iterations``, or ``epochs`` passes over its training split."""
        tc = self.train
        if tc.epochs:
            return tc.epochs * math.ceil(len(data.train) / tc.batch_size)
        return tc.iterations

    def train_task(self, t: int, data: TaskData) -> dict[str, Any]:
        steps = self.iterations_for(data)
        if not self.method.trains or steps == 0 or not self.params:
            return {"iterations": 0, "final_loss": None}
        from tqdm import tqdm

        opt = make_optimizer(self.params, self.train)
        sched = make_scheduler(opt, steps, self.train.warmup, self.train.schedule)
        self.backbone.train(False)  # frozen backbone statistics; PETs have no train/eval difference
        last = None
        bar = tqdm(self.batches(data, steps, seed=_task_seed(self.cfg.seed, t)), total=steps, leave=False,
                   desc=f"train {t + 1}/{len(self.seq.tasks)} {data.name}", disable=not self.cfg.progress or self.rank)
        for i, batch in enumerate(bar):
            self.ctx.step = i
            opt.zero_grad(set_to_none=True)
            loss = self.method.loss(self.ctx, batch)
            if not torch.isfinite(loss):
                raise TrainingFailed(f"task {t + 1} ({data.name}) step {i}: loss is {float(loss.detach())}")
            loss.backward()
            if self.world > 1:
                for p in self.params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.world)
            self.method.before_step(self.ctx)
            opt.step()
            self.method.after_step(self.ctx)
            sched.step()
            last = float(loss.detach())
            bar.set_postfix(loss=f"{last:.3f}")
        if self.world > 1 and last is not None:  # the final loss as the mean over processes, one reduction per task
            logged = torch.tensor(last, device=self.device)
            dist.all_reduce(logged)
            last = float(logged) / self.world / (self.world if self.seq.track == "cross-modal" else 1)
        if any(not torch.isfinite(p).all() for p in self.params):
            raise TrainingFailed(f"task {t + 1} ({data.name}): parameters became non-finite")
        return {"iterations": steps, "final_loss": last}

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, t: int, zero_shot: dict[str, Any] | None) -> dict[str, Any]:
        """Evaluate on every task and control set after step ``t`` (``t = -1``: the pretrained model)."""
        ev, seq = self.evaluator, self.seq
        acc, confidence, correct, retrieval = [], [], [], {}
        feats: dict[str, torch.Tensor] = {}
        from tqdm import tqdm

        label = "zero-shot" if t < 0 else f"after {t + 1}/{len(seq.tasks)}"
        for task in tqdm(seq.tasks, desc=f"eval {label}", leave=False, disable=not self.cfg.progress or bool(self.rank)):
            data = self.data[task.name]
            img = feats[task.name] = ev.image_features(data.test)
            if seq.track == "cross-modal":
                r = ev.retrieval(img, data.test)
                retrieval[task.name] = r
                acc.append(r["r1_mean"])
                continue
            labels = ev.eval_labels(data.test)
            if seq.protocol == "task-id":
                res = ev.classify(img, labels, data.classnames, [data.templates] * len(data.classnames))
            else:
                names = [c for c, _ in self.head]
                offset_labels = np.array([names.index(data.classnames[int(l)]) for l in labels])
                res = ev.classify(img, offset_labels, names, [list(tp) for _, tp in self.head])
            acc.append(res["accuracy"])
            confidence.append(res["confidence"])
            correct.append(res["correct"])
        controls = {}
        for c in seq.control_sets:
            data = self.data[c.name]
            img = feats[c.name] = ev.image_features(data.test)
            controls[c.name] = ev.classify_control(img, ev.eval_labels(data.test), data.classnames, data.templates,
                                                   c.candidates)
        step: dict[str, Any] = {"task": t, "name": seq.tasks[t].name if t >= 0 else "pretrained", "accuracy": acc,
                                "control_accuracy": controls}
        if confidence:  # pooled over every task's test images of this step, equal-mass bins, bootstrap interval
            step["ece"] = ece_with_interval(np.concatenate(confidence), np.concatenate(correct), seed=self.cfg.seed)
        if retrieval:
            step["retrieval"] = retrieval
        if zero_shot is not None:
            step["retention"] = {k: (v / zero_shot["controls"][k] if zero_shot["controls"][k] > 0 else None)
                                 for k, v in controls.items()}
            undefined = [k for k, v in step["retention"].items() if v is None]
            if undefined:  # a missing number says why
                step["retention_not_applicable"] = {k: "the pretrained model scores 0 on this control: a ratio to it "
                                                       "is undefined" for k in undefined}
        hall: dict[str, Any] = {}
        if self.probe is not None:
            hall["pope"] = self.probe.evaluate(ev, self.cfg.seed)
        if seq.track != "cross-modal" and t >= 0:
            hall["hijacking"] = self._hijacking(t, feats)
        if retrieval:
            hall["retrieval_confident_mismatch"] = float(np.mean(
                [(r["i2t_confident_mismatch"] + r["t2i_confident_mismatch"]) / 2 for r in retrieval.values()]))
        if hall:
            step["hallucination"] = hall
        return step

    def _hijacking(self, t: int, feats: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Images of *unlearned* classes (later tasks, control sets) among a head fixed for this step.

        A class is unlearned when its name shares no word with a learned class (:func:`name_words`: lower case,
        articles dropped, the sequence's synonyms merged); the head is every learned class plus every unlearned
        class of every target. ``not_applicable`` where no class qualifies."""
        learned = self._class_templates(self.seq.tasks[: t + 1])
        taken = set().union(*(name_words(c, self.seq.synonyms) for c in learned))
        targets = [(x.name, self.data[x.name]) for x in list(self.seq.tasks[t + 1:]) + list(self.seq.control_sets)]
        own = {name: [c for c in data.classnames if c not in learned and not name_words(c, self.seq.synonyms) & taken]
               for name, data in targets}
        unlearned: dict[str, tuple[str, ...]] = {}
        for name, data in targets:
            for c in own[name]:
                unlearned.setdefault(c, tuple(data.templates))
        if not unlearned:
            return {"not_applicable": "no class of a later task or control set is name-disjoint from the learned classes"}
        names = list(learned) + list(unlearned)
        temps = [list(tp) for tp in learned.values()] + [list(tp) for tp in unlearned.values()]
        is_learned = np.array([n in learned for n in names])
        out: dict[str, Any] = {"head": {"learned": len(learned), "unlearned": len(unlearned)}}
        rates, confs = [], []
        for name, data in targets:
            labels = self.evaluator.eval_labels(data.test)
            keep = [i for i, l in enumerate(labels) if data.classnames[int(l)] in own[name]]
            if not keep:
                continue
            probs = self.evaluator.classify(feats[name][keep], np.zeros(len(keep), dtype=int), names, temps)["probs"]
            h = hijacking(probs, is_learned)
            out[name] = h["rate"]
            rates.append(h["rate"])
            confs.append(h["confidence"])
        out["mean_rate"] = float(np.mean(rates))
        out["mean_confidence"] = float(np.mean(confs))
        return out

    # -- record & checkpoint ------------------------------------------------------------------------
    def _base_record(self) -> dict[str, Any]:
        cfg = self.cfg
        trainable = int(sum(p.numel() for p in self.params))
        return {
            "schema": SCHEMA_ID, "run_id": cfg.run_id(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": "partial", "error": None,
            "sequence": {"name": self.seq.name, "version": self.seq.version, "track": self.seq.track,
                         "protocol": self.seq.protocol, "tasks": [t.name for t in self.seq.tasks],
                         "control_sets": [c.name for c in self.seq.control_sets],
                         "manifests": {k: v.manifest_sha256 for k, v in self.data.items()}},
            "model": {"spec": cfg.model, "pretrained": bool(self.backbone.pretrained)},
            "pet": {"kind": cfg.pet if self.pet is not None else None,
                    "options": self.pet.config.to_dict() if self.pet is not None else {}},
            "method": {"name": self.method.name, "options": dict(self.method.options),
                       "source": f"{type(self.method).__module__}:{type(self.method).__qualname__}"},
            "seed": cfg.seed, "training": self.train.to_dict(),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "run_dir", "resume", "progress", "command",
                                                                         "threads", "restart", "workers")},
            "fingerprint": self.fingerprint(),
            "zero_shot": {"tasks": [], "controls": {}}, "matrix": [], "steps": [],
            "aggregates": {k: None for k in metrics.METRIC_NAMES}, "summary": {},
            "efficiency": {"trainable_parameters": trainable, "world_size": self.world},
            "environment": environment(self.device), "command": cfg.command or " ".join(sys.argv),
        }

    def _finish_record(self, rec: dict[str, Any]) -> None:
        if rec["matrix"] and len(rec["matrix"]) == len(self.seq.tasks):
            rec["aggregates"] = metrics.aggregate(rec["matrix"], rec["zero_shot"]["tasks"])
            rec["status"] = "complete"
        rec["summary"] = step_summary(rec["steps"][-1]) if rec["steps"] else {}

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs the same run: the sequence file's content and data manifests, backbone spec and
        weights, PET and method with their resolved options, effective training, precision, seed, eval size.
        ``digest`` hashes it; a checkpoint of another digest is never resumed."""
        if self._fingerprint is None:
            seq_file = Path(self.seq.path)
            fields = {
                "sequence": f"{self.seq.name} v{self.seq.version} "
                            + (hashlib.sha256(seq_file.read_bytes()).hexdigest()[:16] if seq_file.is_file() else "-"),
                "manifests": hashlib.sha256(json.dumps({k: v.manifest_sha256 for k, v in self.data.items()},
                                                       sort_keys=True).encode()).hexdigest()[:16],
                "model": self.cfg.model, "weights": self.weights,
                "pet": json.dumps([self.cfg.pet if self.pet is not None else None,
                                   self.pet.config.to_dict() if self.pet is not None else {}], sort_keys=True),
                "method": json.dumps([self.method.name, self.method.options], sort_keys=True, default=str),
                "training": json.dumps(self.train.to_dict(), sort_keys=True),
                "amp": bool(self.cfg.amp), "seed": self.cfg.seed, "max_eval": self.cfg.max_eval,
            }
            digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
            self._fingerprint = {"digest": digest, "fields": fields}
        return self._fingerprint

    def _save(self, rec: dict[str, Any], tasks_done: int) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"tasks_done": tasks_done, "params": [p.detach().cpu().clone() for p in self.params],
                 "method": self.method.state_dict(), "record": json.dumps(rec), "fingerprint": json.dumps(self.fingerprint())}
        tmp = self.run_dir / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir / "checkpoint.pt")
        write_json_atomic(self.run_dir / "record.partial.json", rec)

    def _load(self) -> tuple[dict[str, Any], int] | None:
        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 — a truncated or foreign file, said in one line
            raise CheckpointError(f"{path}: not a checkpoint this suite can read ({type(exc).__name__}); "
                                  f"use --restart to discard it") from None
        old = json.loads(state.get("fingerprint", "null") or "null")
        mine = self.fingerprint()
        if old is None or old.get("digest") != mine["digest"]:
            differ = self._differing_fields(old)
            if self.cfg.restart:
                self._discard_checkpoint()
                return None
            raise CheckpointError(f"{path}: --resume onto a run of another configuration (differs in: "
                                  f"{', '.join(differ) or 'fingerprint missing'}); use --restart to discard it")
        with torch.no_grad():
            for p, v in zip(self.params, state["params"]):
                p.copy_(v)
        self.method.load_state_dict(state["method"])
        return json.loads(state["record"]), int(state["tasks_done"])

    def _discard_checkpoint(self) -> None:
        """Remove only the files this runner writes in its run folder."""
        for name in ("checkpoint.pt", "checkpoint.pt.tmp", "record.partial.json"):
            (self.run_dir / name).unlink(missing_ok=True)

    def out_path(self) -> Path:
        return Path(self.cfg.out) / f"{self.cfg.run_id()}.json"

    def run(self) -> dict[str, Any]:
        if self.rank == 0:
            self._refuse_foreign_record()  # before any work, and again before writing
        if self.cfg.restart and not self.cfg.resume:
            self._discard_checkpoint()
        resumed = self._load() if self.cfg.resume else None
        if resumed:
            rec, start = resumed
            self._say(f"resuming {self.cfg.run_id()} after task {start}/{len(self.seq.tasks)}")
        else:
            rec, start = self._base_record(), 0
            t0 = time.perf_counter()
            zs = self.evaluate(-1, None)
            rec["zero_shot"] = {"tasks": zs["accuracy"], "controls": zs["control_accuracy"]}
            rec["zero_shot_step"] = zs
            rec["efficiency"]["zero_shot_eval_time_s"] = time.perf_counter() - t0
        for t in range(start, len(self.seq.tasks)):
            task = self.seq.tasks[t]
            t0 = time.perf_counter()
            try:
                train, _ = self.learn_task(t)
            except Exception as exc:  # keep what is done; say what failed
                rec["status"], rec["error"] = "failed", f"task {t + 1} ({task.name}): {exc}"
                self._finish_record(rec)
                if self.rank == 0:
                    write_json_atomic(self.run_dir / "record.partial.json", rec)
                raise TrainingFailed(rec["error"]) from exc
            train_time = time.perf_counter() - t0
            if self.method.trains and self.text_trains:
                self.evaluator.invalidate_text()
            t1 = time.perf_counter()
            step = self.evaluate(t, rec["zero_shot"])
            step.update(train)
            step["train_time_s"], step["eval_time_s"] = train_time, time.perf_counter() - t1
            step["wall_time_s"] = train_time + step["eval_time_s"]
            step["peak_memory_mb"] = _peak_memory_mb(self.device)
            step["method"] = self.method.report()
            rec["steps"].append(step)
            rec["matrix"].append(step["accuracy"])
            rec["efficiency"].update(self.method.report())
            rec["efficiency"]["wall_time_s"] = float(sum(s["wall_time_s"] for s in rec["steps"]))
            rec["efficiency"]["peak_memory_mb"] = float(max(s["peak_memory_mb"] for s in rec["steps"]))
            self._finish_record(rec)
            self._save(rec, t + 1)
        validate_record(rec, self.cfg.run_id())
        if self.rank == 0:
            self._refuse_foreign_record()
            write_json_atomic(self.out_path(), rec)
        return rec

    def _differing_fields(self, other: dict | None) -> list[str]:
        """The fingerprint fields in which another fingerprint (of a checkpoint or record) differs from this run's."""
        theirs = (other or {}).get("fields", {})
        return sorted(k for k, v in self.fingerprint()["fields"].items() if theirs.get(k) != v)

    def _refuse_foreign_record(self) -> None:
        """A record of another configuration under this run's name is never overwritten silently."""
        path = self.out_path()
        if not path.is_file() or self.cfg.restart:
            return
        try:
            old = read_json(path, "record").get("fingerprint") or {}
        except (SuiteError, AttributeError):
            old = {}
        if old.get("digest") not in (None, self.fingerprint()["digest"]):
            differ = self._differing_fields(old)
            raise CheckpointError(f"{path}: a record of another configuration has this name (differs in: "
                                  f"{', '.join(differ)}); use --restart to replace it, or another --out")

    def learn_task(self, t: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Task ``t`` as a run learns it: the method's before-task hook, training, then its after-task hook
        (PEGP collects its bases there). Returns the training summary and the seconds of training and hook."""
        data = self.data[self.seq.tasks[t].name]
        self.ctx.task_index, self.ctx.task_data = t, data
        torch.manual_seed(_task_seed(self.cfg.seed, t))
        self.method.before_task(self.ctx, t)
        t0 = time.perf_counter()
        train = self.train_task(t, data)
        t1 = time.perf_counter()
        if self.method.trains:
            self.method.after_task(self.ctx, t)
        return train, {"train_s": t1 - t0, "after_task_s": time.perf_counter() - t1}

    def _say(self, msg: str) -> None:
        if self.rank == 0 and self.cfg.progress:
            print(msg, file=sys.stderr)


def run(cfg: RunConfig, method: Method | None = None) -> dict[str, Any]:
    """Run one (sequence, model, PET, method, seed) and return its validated record (also written to disk)."""
    return Runner(cfg, method).run()


def summary_table(rec: dict[str, Any]) -> str:
    """One screen: the accuracy matrix and the headline metrics of a record."""
    names = rec["sequence"]["tasks"]
    w = max(12, max(len(n) for n in names) + 8)
    lines = [f"{rec['method']['name']} / {rec['pet']['kind'] or '-'} on {rec['sequence']['name']} (seed {rec['seed']})",
             " " * w + "".join(f"{n[:7]:>8s}" for n in names)]
    lines.append(f"{'zero-shot':{w}s}" + "".join(f"{100 * v:8.1f}" for v in rec["zero_shot"]["tasks"]))
    for n, row in zip(names, rec["matrix"]):
        lines.append(f"{'after ' + n:{w}s}"[:w] + "".join(f"{100 * v:8.1f}" for v in row))
    agg = rec["aggregates"]
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines.append("  ".join(f"{k}={fmt(agg.get(k))}" for k in ("transfer", "avg", "last", "bwt", "forgetting")))
    s = rec.get("summary", {})
    if s:
        lines.append("  ".join(f"{k}={v:.3f}" for k, v in s.items() if v is not None))
    return "\n".join(lines)


__all__ = ["RunConfig", "Runner", "TrainingFailed", "run", "summary_table", "strip_timings"]
