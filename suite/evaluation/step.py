"""One evaluation step of a run: after a task (or before any, ``t = -1``, the pretrained model), every task's and
control set's accuracy (or retrieval), ECE, retention against the pretrained model, and hallucination probes."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from suite.config.sequences import TaskSequence
from suite.data.base import Split, TaskData
from suite.evaluation.calibration import ece_with_interval
from suite.evaluation.evaluator import ConceptProbe, Evaluator, hijacking, stratified_sample
from suite.evaluation.hallucination import name_words
from suite.results.items import pack_correct, pack_hits

TRAIN_SAMPLE = 512  # training images scored after each task (train vs test accuracy)


def class_templates(data: dict[str, TaskData], tasks) -> dict[str, tuple[str, ...]]:
    """Each class of ``tasks`` once, in task order, with the templates of the first task naming it."""
    seen: dict[str, tuple[str, ...]] = {}
    for t in tasks:
        for c in data[t.name].classnames:
            seen.setdefault(c, tuple(data[t.name].templates))
    return seen


class StepEvaluator:
    """Evaluates a run's model on every task and control set of its sequence (the task-agnostic head holds every
    class of the sequence)."""

    def __init__(self, evaluator: Evaluator, seq: TaskSequence, data: dict[str, TaskData], seed: int,
                 progress: bool = False):
        self.evaluator, self.seq, self.data, self.seed, self.progress = evaluator, seq, data, seed, progress
        self.head = list(class_templates(data, seq.tasks).items())
        self.probe = ConceptProbe.from_tasks(data, [t.name for t in seq.tasks])

    def __call__(self, t: int, zero_shot: dict[str, Any] | None) -> dict[str, Any]:
        """The measures after step ``t``; ``zero_shot`` (the pretrained model's) gives retention."""
        feats: dict[str, torch.Tensor] = {}
        acc, confidence, correct, retrieval, task_items = self._tasks(t, feats)
        controls, control_items = {}, {}
        for c in self.seq.control_sets:
            data = self.data[c.name]
            img = feats[c.name] = self.evaluator.image_features(data.test)
            right = self.evaluator.classify_control(img, self.evaluator.eval_labels(data.test),
                                                    data.classnames, data.templates, c.candidates)
            controls[c.name] = float(right.mean()) if len(right) else 0.0
            control_items[c.name] = pack_correct(right)
        step: dict[str, Any] = {"task": t, "name": self.seq.tasks[t].name if t >= 0 else "pretrained",
                                "accuracy": acc, "control_accuracy": controls,
                                "items": {"tasks": task_items, "controls": control_items}}
        if confidence:  # pooled over every task's test images of this step, equal-mass bins, bootstrap interval
            step["ece"] = ece_with_interval(np.concatenate(confidence), np.concatenate(correct), seed=self.seed)
        if retrieval:
            step["retrieval"] = retrieval
        if zero_shot is not None:
            step.update(retention(controls, zero_shot["controls"]))
        hall = self._hallucination(t, feats, retrieval)
        if hall:
            step["hallucination"] = hall
        return step

    def _tasks(self, t: int, feats: dict[str, torch.Tensor]) -> tuple[list, list, list, dict, list]:
        """Per task: accuracy, confidences and correctness (classification), retrieval measures, packed items."""
        acc, confidence, correct, retrieval, items = [], [], [], {}, []
        label = "zero-shot" if t < 0 else f"after {t + 1}/{len(self.seq.tasks)}"
        for task in tqdm(self.seq.tasks, desc=f"eval {label}", leave=False, disable=not self.progress):
            split = self.data[task.name].test
            img = feats[task.name] = self.evaluator.image_features(split)
            res = self._score(task.name, split, img)
            if "retrieval" in res:
                i2t_rank, t2i_rank, captions = res["retrieval"].pop("ranks")
                items.append(pack_hits(i2t_rank == 0, t2i_rank == 0, captions))
                retrieval[task.name] = res["retrieval"]
            else:
                confidence.append(res["confidence"])
                correct.append(res["correct"])
                items.append(pack_correct(res["correct"]))
            acc.append(res["accuracy"])
        return acc, confidence, correct, retrieval, items

    def _score(self, task: str, split: Split, img: torch.Tensor) -> dict[str, Any]:
        """A task's images ``img`` of ``split`` scored as the protocol says: retrieval, or classification among
        the task's own classes (task-id) or every class of the sequence (task-agnostic)."""
        ev, data = self.evaluator, self.data[task]
        if self.seq.track == "cross-modal":
            r = ev.retrieval(img, split, gallery=self.seq.task(task).gallery_size)
            return {"accuracy": r["r1_mean"], "retrieval": r}
        labels = ev.eval_labels(split)
        if self.seq.protocol == "task-id":
            return ev.classify(img, labels, data.classnames, [data.templates] * len(data.classnames))
        names = [c for c, _ in self.head]
        offset_labels = np.array([names.index(data.classnames[int(l)]) for l in labels])
        return ev.classify(img, offset_labels, names, [list(tp) for _, tp in self.head])

    def train_accuracy(self, t: int) -> float:
        """Accuracy on (a fixed sample of at most :data:`TRAIN_SAMPLE`) the training images of task ``t``, scored
        as its test images are: beside the test accuracy, it tells learning from memorising. Not resampled or
        recorded item by item: it is a diagnostic of the budget, not a result."""
        task = self.seq.tasks[t].name
        split = self.data[task].train
        # retrieval ranks among a gallery, so its train sample is one test gallery's size (a like-for-like R@1)
        gallery = self.seq.tasks[t].gallery_size or len(self.data[task].test)
        size = min(TRAIN_SAMPLE, gallery) if self.seq.track == "cross-modal" else TRAIN_SAMPLE
        if len(split) > size:
            split = split.subset(stratified_sample(split.labels, size, seed=0))
        return float(self._score(task, split, self.evaluator.image_features(split))["accuracy"])

    def _hallucination(self, t: int, feats: dict[str, torch.Tensor], retrieval: dict) -> dict[str, Any]:
        hall: dict[str, Any] = {}
        if self.probe is not None:
            hall["pope"] = self.probe.evaluate(self.evaluator, self.seed, feats)
        if self.seq.track != "cross-modal" and t >= 0:
            hall["hijacking"] = self.hijacking(t, feats)
        if retrieval:
            hall["retrieval_confident_mismatch"] = float(np.mean(
                [(r["i2t_confident_mismatch"] + r["t2i_confident_mismatch"]) / 2 for r in retrieval.values()]))
        return hall

    def hijacking(self, t: int, feats: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Images of *unlearned* classes (later tasks, control sets) among a head fixed for this step.

        A class is unlearned when its name shares no word with a learned class (:func:`name_words`: lower case,
        articles dropped, the sequence's synonyms merged); the head is every learned class plus every unlearned
        class of every target. ``not_applicable`` where no class qualifies."""
        learned = class_templates(self.data, self.seq.tasks[: t + 1])
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


def retention(controls: dict[str, float], pretrained: dict[str, float]) -> dict[str, Any]:
    """Each control's accuracy over the pretrained model's; a ratio to 0 is undefined and says why."""
    out: dict[str, Any] = {"retention": {k: (v / pretrained[k] if pretrained[k] > 0 else None) for k, v in controls.items()}}
    undefined = [k for k, v in out["retention"].items() if v is None]
    if undefined:
        out["retention_not_applicable"] = {k: "the pretrained model scores 0 on this control: a ratio to it is undefined"
                                           for k in undefined}
    return out


__all__ = ["StepEvaluator", "class_templates", "retention"]
