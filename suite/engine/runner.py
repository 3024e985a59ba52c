"""The continual loop: build → for each task, learn → evaluate every task and control set → checkpoint → record.

``run(RunConfig(...))`` is what ``clsuite run`` calls. The method and PET options are checked before anything
heavy is built (:func:`check_options`). Randomness is re-seeded per task from (seed, task), so ``--resume`` from
the last finished task gives the same record as an uninterrupted run. Under ``torchrun`` each rank trains on its
shard of every batch and gradients are averaged (data parallel); rank 0 writes.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from suite.config.run import RunConfig, RunIdentity, sequence_label
from suite.config.sequences import TaskSequence, load_sequence
from suite.config.train import TrainConfig
from suite.data import TaskData, materialize
from suite.data.loading import Batches, default_workers
from suite.engine import reference_cache
from suite.engine.checkpoint import CheckpointError, Checkpoints, refuse_foreign_record
from suite.engine.distributed import init_distributed, peak_memory_mb, rank_world, resolve_device
from suite.engine.loggers import Logger, RunInfo, make_loggers
from suite.engine.loop import METHOD_BATCHES, TrainingFailed, steps_for, task_seed, train_steps
from suite.engine.objective import make_objective
from suite.engine.record import add_step, add_zero_shot, base_record, finish
from suite.errors import ConfigError
from suite.evaluation.evaluator import Evaluator
from suite.evaluation.step import StepEvaluator
from suite.methods import Method, RunContext, make_method
from suite.models import create_model_and_transforms, weights_digest
from suite.pet import PETConfig, attach_pet, available_pets, make_config
from suite.results.records import validate_record, write_json_atomic


def check_options(cfg: RunConfig, method: Method | None = None) -> tuple[Method, PETConfig | None]:
    """The run's method (built, so its options are checked) and its PET config, refused in one line before any
    model or data is loaded."""
    method = method or make_method(cfg.method, cfg.method_options)
    if method.needs_pet and method.trains and not cfg.pet:
        raise ConfigError(f"method {method.name} trains a PET: give --pet ({', '.join(available_pets())})")
    if method.pets is not None and method.needs_pet and method.trains and cfg.pet not in method.pets:
        raise ConfigError(f"method {method.name} runs on --pet {' or '.join(method.pets)}, not {cfg.pet}")
    pet = make_config(cfg.pet, cfg.pet_options) if cfg.pet and method.needs_pet else None
    if method.tracks is not None or (pet is not None and pet.tracks is not None):
        track = load_sequence(cfg.sequence).track
        if method.tracks is not None and track not in method.tracks:
            raise ConfigError(f"method {method.name} applies to the {' and '.join(method.tracks)} track(s), "
                              f"not {track} ({cfg.sequence})")
        if pet is not None and pet.tracks is not None and track not in pet.tracks:
            raise ConfigError(f"PET {cfg.pet} learns on the {' and '.join(pet.tracks)} track(s), not {track} "
                              f"({cfg.sequence}): {pet.tracks_why}")
    return method, pet


# The pretrained model's evaluations this process made, by what they depend on (Runner._pretrained_evaluation).
_PRETRAINED_EVALUATIONS: dict[tuple, dict[str, Any]] = {}


class Runner:
    """One run: the backbone with its PET, the method, the data, and the loop over the sequence's tasks."""

    def __init__(self, cfg: RunConfig, method: Method | None = None, loggers: Sequence[str | Logger] = ()):
        self.cfg = cfg
        self.method, pet_config = check_options(cfg, method)
        # experiment trackers (cfg.log, and any given here): a missing package is refused before anything is built
        self.loggers = make_loggers([*cfg.log, *loggers])
        self._steps_done = 0  # optimiser steps of the tasks before the current one (the trackers' global step)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = resolve_device(cfg.device)
        init_distributed(self.device)
        self.rank, self.world = rank_world()
        if self.rank:
            self.loggers = []  # rank 0 reports, as it writes
        self.seq: TaskSequence = load_sequence(cfg.sequence)
        torch.manual_seed(cfg.seed)
        self.backbone = create_model_and_transforms(cfg.model, device=self.device)
        self.weights = weights_digest(self.backbone)  # before any PET or method touches it
        self.pet_config = pet_config
        self.train = TrainConfig.from_dict({**self.seq.default_training(cfg.pet if pet_config else None, self.method.name),
                                            **cfg.training}, f"{cfg.sequence}: run")
        size = self.backbone.image_size if self.seq.embedded else None
        self.data: dict[str, TaskData] = {t.name: materialize(self.seq, t, size)
                                          for t in self.seq.tasks + self.seq.control_sets}
        amp = cfg.amp and self.device.type in ("cuda", "cpu")
        autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if amp else None
        workers = default_workers() if cfg.workers is None else cfg.workers
        self.evaluator = Evaluator(self.backbone, cfg.eval_batch_size, cfg.max_eval, autocast, workers=workers)
        self.step_evaluator = StepEvaluator(self.evaluator, self.seq, self.data, cfg.seed, cfg.progress and not self.rank)
        self.run_dir = Path(cfg.run_dir) / cfg.run_id()
        self._fingerprint: dict[str, Any] | None = None
        # The reference of everything "relative to zero-shot" is the pretrained model with no PET attached, so it is
        # measured before the PET goes in (and the model just after attaching, for the attach cost); a run that
        # resumes has both in its checkpointed record already.
        self.reference: tuple[dict[str, Any], float] | None = None
        self.attached: dict[str, Any] | None = None
        fresh = not (cfg.resume and self.checkpoints.resumable())
        if fresh:
            rng = torch.get_rng_state()
            if pet_config:  # a PET that does not fit this backbone is refused before any evaluation
                attach_pet(self.backbone, cfg.pet, **cfg.pet_options).detach_from_model()
                torch.set_rng_state(rng)
            t0 = time.perf_counter()
            self.reference = self._pretrained_evaluation(), time.perf_counter() - t0
            torch.set_rng_state(rng)  # the PET starts from the same random state as without the evaluations
        self.pet = attach_pet(self.backbone, cfg.pet, **cfg.pet_options).to(self.device) if pet_config else None
        self.evaluator.invalidate_text()
        if fresh and self.pet is not None:
            # a PET that adds an exact zero at attach (LoRA, adapter, the gated forms) leaves the pretrained function
            # bit for bit: its evaluation is the reference's (tests/test_reference_and_items.py evaluates both)
            self.attached = copy.deepcopy(self.reference[0]) if self.pet.is_identity() else self.evaluate(-1, None)
        self.batches = Batches(self.backbone, self.seq.track, self.train.batch_size, workers, self.rank, self.world)
        self.objective = make_objective(self.seq.track, self.backbone, self.evaluator, lambda: self.text_trains,
                                        autocast, self.world)
        self.ctx = RunContext(backbone=self.backbone, pet=self.pet, device=self.device, sequence=self.seq, seed=cfg.seed,
                              task_loss=self.objective.loss, logits=self.objective.logits, loss_of=self.objective.loss_of,
                              batch_size=int(self.train.batch_size), batches=self._method_batches)
        self.method.setup(self.ctx)
        self.params = self.method.trainable(self.ctx) if self.method.trains else []
        self.evaluator.images_fixed = self.images_fixed()

    @property
    def text_trains(self) -> bool:
        """Whether training changes the text side (then class prompts are encoded afresh)."""
        if self.method.text_changes is not None:
            return bool(self.method.text_changes)
        return bool(self.pet is not None and self.pet.touches_tower("text"))

    def images_fixed(self) -> bool:
        """Whether image features stay what they are now for the whole run: every trainable parameter is the
        backbone's and none is on its image side (a text-side PET such as CoOp; nothing trains). Then each test
        set's image features are encoded once per run instead of after every task."""
        image = {id(p) for m in self.backbone.image_side() for p in m.parameters()}
        backbone = {id(p) for p in self.backbone.parameters()}
        return all(id(p) in backbone and id(p) not in image for p in self.params)

    def _pretrained_evaluation(self) -> dict[str, Any]:
        """The pretrained model's evaluation (no PET attached). It depends on the sequence, its data, the weights,
        the seed (ECE's and the POPE probe's bootstrap) and the evaluation settings, not on the PET, method or
        training, so a process that runs many runs (a sweep worker) computes it once per such key, and a process
        finds it on disk when an earlier one computed it (:mod:`suite.engine.reference_cache`)."""
        cfg = self.cfg
        key = (sequence_label(self.seq), str(Path(self.seq.path).resolve()), self.weights, cfg.max_eval, cfg.amp,
               cfg.eval_batch_size, cfg.seed, str(self.device), self.world,
               tuple(sorted((k, v.manifest_sha256, v.content_sha256) for k, v in self.data.items())))
        if key not in _PRETRAINED_EVALUATIONS:
            if len(_PRETRAINED_EVALUATIONS) >= 64:
                _PRETRAINED_EVALUATIONS.pop(next(iter(_PRETRAINED_EVALUATIONS)))
            disk = reference_cache.reference_key(key, self.seq.path, self.data)
            stored = reference_cache.load(disk)
            if stored is None:
                stored = self.evaluate(-1, None)
                if self.rank == 0:
                    reference_cache.save(disk, stored)
            _PRETRAINED_EVALUATIONS[key] = stored
        return copy.deepcopy(_PRETRAINED_EVALUATIONS[key])

    def _method_batches(self, data: TaskData, n: int):
        """Batches a method draws itself (PEGP's bases, EWC's Fisher), seeded apart from the training batches."""
        return self.batches(data, n, seed=task_seed(self.cfg.seed, METHOD_BATCHES + self.ctx.task_index))

    def fingerprint(self) -> dict[str, Any]:
        """This run's resolved :class:`~suite.config.run.RunIdentity` and the content it runs on (sequence file,
        data manifests, backbone weights); a checkpoint or record of another digest is never resumed or replaced."""
        if self._fingerprint is None:
            manifests = hashlib.sha256(json.dumps({k: v.manifest_sha256 for k, v in self.data.items()},
                                                  sort_keys=True).encode()).hexdigest()[:16]
            pet = self.pet_config is not None
            identity = RunIdentity(self.seq.name, self.cfg.model, self.cfg.pet if pet else None,
                                   self.pet_config.to_dict() if pet else {}, self.method.name, self.method.options,
                                   self.train.to_dict(), self.cfg.amp, self.cfg.max_eval, self.cfg.seed)
            self._fingerprint = identity.fingerprint(sequence_label(self.seq), manifests, self.weights)
        return self._fingerprint

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.run_dir, self.fingerprint(), self.device)

    def out_path(self) -> Path:
        return Path(self.cfg.out) / f"{self.cfg.run_id()}.json"

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, ckpt = self.cfg, self.checkpoints
        if self.rank == 0 and not cfg.restart:
            refuse_foreign_record(self.out_path(), self.fingerprint())  # before any work, and again before writing
        if cfg.restart and not cfg.resume:
            ckpt.discard()
        state = ckpt.load(cfg.restart) if cfg.resume else None
        if state:
            rec, start = self._restore(state)
            self._say(f"resuming {cfg.run_id()} after task {start}/{len(self.seq.tasks)}")
        else:
            if self.reference is None:  # the checkpoint judged resumable was discarded (--restart) or vanished
                raise CheckpointError(f"{self.run_dir}: the checkpoint to resume from is gone; run again without --resume")
            rec, start = base_record(cfg, self), 0
            add_zero_shot(rec, *self.reference, self.attached)
        self._steps_done = int(sum(s.get("iterations") or 0 for s in rec["steps"]))
        self._log("start", self.run_info())
        try:
            for t in range(start, len(self.seq.tasks)):
                self._task(rec, t, ckpt)
            validate_record(rec, cfg.run_id())
            if self.rank == 0:
                if not cfg.restart:
                    refuse_foreign_record(self.out_path(), self.fingerprint())
                write_json_atomic(self.out_path(), rec)
        except BaseException:
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                self._log("finish", copy.deepcopy(rec))
            raise
        self._log("finish", copy.deepcopy(rec))
        return rec

    # -- experiment trackers (suite.engine.loggers): they are handed copies and only read -------------------
    def log_dir(self) -> Path:
        """Where trackers write: ``cfg.log_dir``, else the run folder."""
        return Path(self.cfg.log_dir) / self.cfg.run_id() if self.cfg.log_dir else self.run_dir

    def run_info(self) -> RunInfo:
        """What a tracker is told at the start: the run's name, options, fingerprint and where things go."""
        cfg, fp = self.cfg, self.fingerprint()
        params = {"run_id": cfg.run_id(), "fingerprint": fp["digest"], "sequence": self.seq.name, "model": cfg.model,
                  "pet": cfg.pet if self.pet_config else None, "method": self.method.name, "seed": cfg.seed,
                  "pet_options": self.pet_config.to_dict() if self.pet_config else {},
                  "method_options": dict(self.method.options), **{f"training.{k}": v for k, v in self.train.to_dict().items()},
                  "amp": cfg.amp, "max_eval": cfg.max_eval}
        return RunInfo(name=cfg.run_id(), config=json.loads(json.dumps(asdict(cfg), default=str)),
                       fingerprint=copy.deepcopy(fp), tasks=[t.name for t in self.seq.tasks],
                       controls=[c.name for c in self.seq.control_sets], record_path=self.out_path(),
                       log_dir=self.log_dir(), first_step=self._steps_done, params=params)

    def _log(self, hook: str, *args: Any) -> None:
        for logger in self.loggers:
            getattr(logger, hook)(*args)

    def _log_step(self, i: int, loss: float, lr: float) -> None:
        self._log("step", self._steps_done + i, loss, lr)

    def _own_params(self) -> list[torch.nn.Parameter]:
        """The trainable parameters a checkpoint keeps by position: the method's own (outside the PET, whose state
        is saved whole, every branch included)."""
        pet = {id(p) for p in self.pet.parameters()} if self.pet is not None else set()
        return [p for p in self.params if id(p) not in pet]

    def _restore(self, state: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if "pet" in state and self.pet is not None:
            self.pet.grow_to(int(state.get("branches", 1)))
            self.pet.load_state_dict(state["pet"])
            own = self._own_params()
        else:  # a checkpoint of an earlier version: every trainable parameter by position
            own = self.params
        with torch.no_grad():
            for p, v in zip(own, state["params"]):
                p.copy_(v)
        self.method.load_state_dict(state["method"])
        return state["record"], state["tasks_done"]

    def _task(self, rec: dict[str, Any], t: int, ckpt: Checkpoints) -> None:
        """Learn task ``t``, evaluate, add the step to ``rec`` and checkpoint; a failure keeps what is done."""
        t0 = time.perf_counter()
        try:
            train, _ = self.learn_task(t)
        except Exception as exc:  # keep what is done; say what failed
            rec["status"], rec["error"] = "failed", f"task {t + 1} ({self.seq.tasks[t].name}): {exc}"
            finish(rec, len(self.seq.tasks))
            if self.rank == 0:
                ckpt.save_partial(rec)
            raise TrainingFailed(rec["error"]) from exc
        train_time = time.perf_counter() - t0
        # the most parameters any task trained (a per-task-branch method trains a new set each task)
        trained = int(sum(p.numel() for p in self.params))
        rec["efficiency"]["trainable_parameters"] = max(rec["efficiency"]["trainable_parameters"], trained)
        if self.method.trains and self.text_trains:
            self.evaluator.invalidate_text()
        t1 = time.perf_counter()
        # the method may route each test image to its own parameters or own the scores (suite.models.inference)
        self.evaluator.set_inference(self.method.inference(self.ctx))
        try:
            step = self.evaluate(t, rec["zero_shot"])
            step["train_accuracy"] = self.step_evaluator.train_accuracy(t)
        finally:
            self.evaluator.set_inference(None)
        step.update(train)
        step["train_time_s"], step["eval_time_s"] = train_time, time.perf_counter() - t1
        step["wall_time_s"] = train_time + step["eval_time_s"]
        step["peak_memory_mb"] = peak_memory_mb(self.device)
        add_step(rec, step, self.method.report(), len(self.seq.tasks))
        rec["method"]["protocol"] = self.method.protocol  # a method's use may grow with the tasks (a stored memory)
        self._steps_done += int(step.get("iterations") or 0)
        if self.loggers:
            self._log("task", t, copy.deepcopy(step))
        if self.rank == 0:
            ckpt.save(rec, t + 1, self._own_params(), self.method.state_dict(),
                      pet=self.pet.state_dict() if self.pet is not None else None,
                      branches=self.pet.branch_count() if self.pet is not None else 1)

    def learn_task(self, t: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Task ``t`` as a run learns it: the method's before-task hook, training, then its after-task hook
        (PEGP collects its bases there). Returns the training summary and the seconds of training and hook."""
        data = self.data[self.seq.tasks[t].name]
        self.ctx.task_index, self.ctx.task_data = t, data
        torch.manual_seed(task_seed(self.cfg.seed, t))
        self.method.before_task(self.ctx, t)
        if self.method.trains:  # a method may open a per-task branch (or freeze parameters) before each task
            self.params = self.method.trainable(self.ctx)
        t0 = time.perf_counter()
        train = self.train_task(t, data)
        t1 = time.perf_counter()
        if self.method.trains:
            self.method.after_task(self.ctx, t)
        return train, {"train_s": t1 - t0, "after_task_s": time.perf_counter() - t1}

    def train_task(self, t: int, data: TaskData) -> dict[str, Any]:
        steps = steps_for(self.train, len(data.train))
        if not self.method.trains or steps == 0 or not self.params:
            return {"iterations": 0, "final_loss": None}
        last = train_steps(self.method, self.ctx, self.params, self.batches(data, steps, seed=task_seed(self.cfg.seed, t)),
                           steps, self.train, f"{t + 1} ({data.name})", self.world, self.seq.track == "cross-modal",
                           progress=self.cfg.progress and not self.rank,
                           on_step=self._log_step if self.loggers else None)
        return {"iterations": steps, "final_loss": last}

    def evaluate(self, t: int, zero_shot: dict[str, Any] | None) -> dict[str, Any]:
        """Evaluate on every task and control set after step ``t`` (``t = -1``: the pretrained model)."""
        return self.step_evaluator(t, zero_shot)

    def _say(self, msg: str) -> None:
        if self.rank == 0 and self.cfg.progress:
            print(msg, file=sys.stderr)


def run(cfg: RunConfig, method: Method | None = None, loggers: Sequence[str | Logger] = ()) -> dict[str, Any]:
    """Run one (sequence, model, PET, method, seed) and return its validated record (also written to disk);
    ``loggers`` (tracker names or :class:`~suite.engine.loggers.Logger` objects) are told its progress."""
    return Runner(cfg, method, loggers).run()


__all__ = ["CheckpointError", "RunConfig", "Runner", "TrainingFailed", "check_options", "run"]
