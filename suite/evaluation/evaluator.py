"""Evaluate a model on every task of a sequence: one image pass per test set per step, cached text features.

Text features of class prompts are cached by (class names, templates) and dropped only when the text side
changed (``invalidate_text``), so a vision-only PET never re-encodes text.

A method with its own test-time behaviour (``inference``: :class:`suite.models.inference.Inference`) is asked to
encode every batch of test images (it may route each image to its own parameters) and to score images against
texts; texts are then encoded under each route the images took. Without one, images and texts are encoded by the
model as it stands and scored by their cosine, as before.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from suite.data.base import Split, TaskData
from suite.data.loading import DecodedImages, as_model_batch, batch_images
from suite.evaluation.hallucination import hijacking, pope_step
from suite.evaluation.retrieval import confident_mismatch_rate, rank_of_best_positive, recall_at_k
from suite.models.inference import FrozenFeatures, Inference, Routed

EVAL_SAMPLE_SEED = 0  # the --max-eval sample is the same for every step, method and seed


@dataclass
class Evaluator:
    backbone: Any
    batch_size: int = 256
    max_eval: int | None = None
    autocast: Callable[[], Any] | None = None
    _text_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    _token_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    _samples: dict[int, tuple[Split, list[int]]] = field(default_factory=dict)
    text_encodes: int = 0  # how many times class prompts were encoded (for the speed benchmark)
    input_cache_bytes: int = 4 * 2**30  # decoded evaluation inputs of file-backed splits kept across evaluations
    text_chunk: int = 256  # prompts per text-tower pass when a trained text side is encoded with gradients
    workers: int = 0  # DataLoader processes decoding file-backed test images the first time they are evaluated
    _input_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    images_fixed: bool = False  # set by the runner when nothing that trains reaches the image features
    _image_cache: dict[tuple, tuple[Split, torch.Tensor]] = field(default_factory=dict)
    _input_cache_used: int = 0
    inference: Inference | None = None  # the method's test-time behaviour for this step (set by the runner)
    frozen_cache_bytes: int = 2**30  # what methods compute on the frozen model per test batch, kept for the run
    frozen: FrozenFeatures = field(init=False)

    def __post_init__(self) -> None:
        # built with the backbone, before any PET or method attaches: its parameters now are the pretrained weights
        weights = list(self.backbone.parameters()) if isinstance(self.backbone, torch.nn.Module) else []
        self.frozen = FrozenFeatures(weights, self.frozen_cache_bytes)

    def invalidate_text(self) -> None:
        self._text_cache.clear()

    def set_inference(self, inference: Inference | None) -> None:
        """The method's test-time behaviour from now on (``None``: the model as it stands); text features encoded
        under the previous one's routes are dropped (a route's parameters may have trained since)."""
        self.inference = inference
        for key in [k for k in self._text_cache if "route" in k]:
            del self._text_cache[key]

    def _ctx(self):
        return self.autocast() if self.autocast else torch.autocast("cpu", enabled=False)

    # -- features ------------------------------------------------------------------------------------
    def class_text_features(self, classnames: list[str], templates: list[str], fresh: bool = False,
                            route: int | None = None) -> torch.Tensor:
        """Class embeddings (template-averaged). ``fresh``: encode now, with autograd as the caller has it
        (training a text-side PET); otherwise no autograd, served from the cache when possible. ``route``: encoded
        with that route's parameters in place (:attr:`inference`), cached apart."""
        bb = self.backbone
        templates = bb.class_templates(templates)
        key = (tuple(classnames), tuple(templates))
        cached = key if route is None else (*key, "route", route)
        if not fresh and cached in self._text_cache:
            return self._text_cache[cached]
        tokens = self._token_cache.get(key)
        if tokens is None:  # a text-side PET encodes the same prompts every step: tokenise them once per run
            tokens = self._token_cache[key] = bb.tokenize([t.replace("{}", c) for c in classnames
                                                          for t in templates]).to(bb.device)
        grad = fresh and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad), self._ctx(), self._using(route):
            f = F.normalize(self._encode_prompts(tokens, grad).float(), dim=-1)
        f = F.normalize(f.view(len(classnames), len(templates), -1).mean(1), dim=-1)
        if not fresh:
            self._text_cache[cached] = f
            self.text_encodes += 1
        return f

    def _using(self, route: int | None):
        return self.inference.using(route) if route is not None and self.inference is not None else contextlib.nullcontext()

    def similarity(self, img: torch.Tensor | Routed, text: Callable[[int | None], torch.Tensor],
                   names: list[str] | None = None) -> torch.Tensor:
        """Scores (cosine units) of images against texts; ``text(route)`` encodes the texts (``route`` None: the
        model as it stands). Routed images are scored by the method's inference, each against its route's texts."""
        if not isinstance(img, Routed):
            return img @ text(None).T
        inference = self.inference
        return inference.scores(img, lambda r: text(inference.text_route(r)), names)

    def _encode_prompts(self, tokens: torch.Tensor, grad: bool) -> torch.Tensor:
        """Prompt features. With gradients and more than ``text_chunk`` prompts, the text tower runs chunk by
        chunk under activation checkpointing: only each chunk's features are kept, its activations are recomputed
        in the backward pass, so memory grows with the head by features, not by a text tower's activations per
        prompt (about 29 MiB each for ViT-B-16 in fp32)."""
        encode = self.backbone.encode_text
        if not grad or len(tokens) <= self.text_chunk:
            return encode(tokens)
        return torch.cat([torch.utils.checkpoint.checkpoint(encode, tokens[i:i + self.text_chunk], use_reentrant=False)
                          for i in range(0, len(tokens), self.text_chunk)])

    def text_features(self, texts: list[str], route: int | None = None) -> torch.Tensor:
        bb = self.backbone
        out = []
        with torch.no_grad(), self._ctx(), self._using(route):
            for i in range(0, len(texts), self.batch_size):
                out.append(F.normalize(bb.encode_text(bb.tokenize(texts[i:i + self.batch_size]).to(bb.device)).float(), dim=-1))
        return torch.cat(out)

    def eval_indices(self, split: Split) -> list[int]:
        """All test images, or with ``max_eval`` a fixed, seeded, class-stratified sample of that many (classes
        take turns, so every class is covered when ``max_eval`` >= the number of classes); sorted."""
        n = len(split)
        if self.max_eval is None or self.max_eval >= n:
            return list(range(n))
        held = self._samples.get(id(split))
        if held is None or held[0] is not split:  # held with its split, so a freed split's id never maps here
            held = self._samples[id(split)] = (split, stratified_sample(split.labels, self.max_eval, EVAL_SAMPLE_SEED))
        return held[1]

    def _cache_key(self, split: Split, chunk: list[int]) -> tuple:
        return (id(split), tuple(chunk))

    def _keep(self, key: tuple, images: torch.Tensor) -> None:
        size = images.element_size() * images.numel()
        if self._input_cache_used + size <= self.input_cache_bytes:
            self._input_cache[key] = images.cpu()
            self._input_cache_used += size

    def _input_batches(self, split: Split, idx: list[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """The model inputs of ``idx``, batch by batch, with the rows each holds. Images read from files are
        decoded and transformed once per run (by ``workers`` DataLoader processes when set) and kept on the CPU up
        to ``input_cache_bytes``, so later evaluations decode nothing again."""
        starts = range(0, len(idx), self.batch_size)
        if split.images is not None:  # in-memory uint8: the fast path, nothing to decode
            for start in starts:
                rows = idx[start:start + self.batch_size]
                yield rows, batch_images(self.backbone, split, rows)
            return
        chunks = {start: idx[start:start + self.batch_size] for start in starts}
        todo = [s for s in starts if self._cache_key(split, chunks[s]) not in self._input_cache]
        decoded: Iterator[torch.Tensor] | None = None
        if self.workers and todo:
            decoded = iter(torch.utils.data.DataLoader(
                DecodedImages(self.backbone, split), batch_sampler=[chunks[s] for s in todo],
                num_workers=self.workers, pin_memory=self.backbone.device.type == "cuda"))
        for start in starts:
            key = self._cache_key(split, chunks[start])
            if key in self._input_cache:
                yield chunks[start], self._input_cache[key].to(self.backbone.device)
                continue
            if decoded is not None:
                images = as_model_batch(self.backbone, next(decoded))
            else:
                images = batch_images(self.backbone, split, chunks[start])
            self._keep(key, images)
            yield chunks[start], images

    def image_features(self, split: Split, sample: bool = True) -> torch.Tensor | Routed:
        """Normalised features of the split's evaluated images (``sample=False``: all of its images); with a
        method's :attr:`inference`, the features it encoded with each image's route."""
        if self.inference is not None:
            return self._routed_features(split, sample)
        key = (id(split), sample)
        hit = self._image_cache.get(key) if self.images_fixed else None
        if hit is not None and hit[0] is split:  # the split is held with its features, so its id is not reused
            return hit[1]
        idx = self.eval_indices(split) if sample else list(range(len(split)))
        out = self._each_batch(split, idx, self._encode)  # a method's query pass inside the encoder is kept per batch
        feats = torch.cat(out) if out else torch.zeros(0, 1)
        if self.images_fixed:
            self._image_cache[key] = (split, feats)
        return feats

    def _each_batch(self, split: Split, idx: list[int], encode: Callable[[torch.Tensor], Any]) -> list[Any]:
        """``encode`` of every batch of ``idx`` without autograd, each with :attr:`frozen` told which rows it holds
        (what a method computes on the frozen model is kept per batch)."""
        out = []
        with torch.no_grad(), self._ctx():
            for rows, images in self._input_batches(split, idx):
                with self.frozen.batch(split, rows):
                    out.append(encode(images))
        return out

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    def _routed_features(self, split: Split, sample: bool) -> Routed:
        """Every batch routed and encoded by the method's inference (never cached: routes follow the method)."""
        idx = self.eval_indices(split) if sample else list(range(len(split)))
        return Routed.cat(self._each_batch(split, idx, lambda images: self.inference.encode_images(images, self._encode)))

    # -- metrics -------------------------------------------------------------------------------------
    def classify(self, img: torch.Tensor, labels: np.ndarray, head_names: list[str], head_templates: list[list[str]],
                 label_offset: int = 0) -> dict[str, Any]:
        """Accuracy/ECE of images ``img`` among a head of classes (each with its own templates).

        Classes sharing templates are encoded together (one text pass, one cache entry per group)."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, tpl in enumerate(head_templates):
            groups.setdefault(tuple(tpl), []).append(i)
        order = torch.tensor([i for idx in groups.values() for i in idx])

        def text(route: int | None) -> torch.Tensor:
            parts = [self.class_text_features([head_names[i] for i in idx], list(tpl), route=route)
                     for tpl, idx in groups.items()]
            return torch.cat(parts)[torch.argsort(order)]

        scale = self.backbone.logit_scale_value.detach().float()
        # unrouted: the scale multiplies the features first, the order every committed record was made with
        logits = scale * self.similarity(img, text, list(head_names)) if isinstance(img, Routed) else scale * img @ text(None).T
        probs = torch.softmax(logits, -1).cpu().numpy()
        y = np.asarray(labels)[: len(img)] + label_offset
        return {"accuracy": float((probs.argmax(1) == y).mean()) if len(y) else 0.0, "probs": probs,
                "confidence": probs.max(1) if len(y) else np.zeros(0),
                "correct": (probs.argmax(1) == y) if len(y) else np.zeros(0, bool)}

    def classify_control(self, img: torch.Tensor, labels: np.ndarray, classnames: list[str], templates: list[str],
                         candidates: tuple[tuple[str, ...], ...] = ()) -> np.ndarray:
        """Per image of a control set, whether it was answered right (see :func:`control_correct`)."""
        names = list(dict.fromkeys(list(classnames) + [n for g in candidates for n in g]))
        probs = self.classify(img, labels, names, [templates] * len(names))["probs"]
        return control_correct(probs, np.asarray(labels)[: len(img)], classnames, names, candidates)

    def eval_labels(self, split: Split) -> np.ndarray:
        return np.asarray(split.labels)[self.eval_indices(split)]

    def retrieval(self, img: torch.Tensor, split: Split, delta: float = 0.05,
                  gallery: int | None = None) -> dict[str, float]:
        """R@K both ways against every caption of the evaluated images (a positives matrix, as CLIP_benchmark);
        with ``gallery``, each query ranks only the images and captions of its own block of ``gallery``
        consecutive evaluated images (as COCO's 1K test: R@1 depends on the gallery's size, so a sequence
        can enlarge its test set without making the task harder)."""
        sets = [split.captions[i] for i in self.eval_indices(split)]
        caps = [c for s in sets for c in s]
        owner = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
        positives = owner[None, :] == np.arange(len(sets))[:, None]
        sim = self.similarity(img, lambda route: self.text_features(caps, route)).cpu().numpy()
        if gallery is not None:
            block = np.arange(len(sets)) // gallery
            sim = np.where(block[:, None] == block[owner][None, :], sim, -np.inf)
        out: dict[str, Any] = recall_at_k(sim, positives=positives)
        out["ranks"] = (rank_of_best_positive(sim, positives), rank_of_best_positive(sim.T, positives.T),
                        [len(s) for s in sets])
        out.update(confident_mismatch_rate(sim, delta, positives=positives))
        out["r1_mean"] = (out["i2t_r1"] + out["t2i_r1"]) / 2
        return out


def control_accuracy(scores: np.ndarray, labels: np.ndarray, classnames: list[str], names: list[str],
                     candidates: tuple[tuple[str, ...], ...] = ()) -> float:
    """Accuracy of ``scores`` (images x ``names``) on images of ``classnames[labels]`` (:func:`control_correct`)."""
    correct = control_correct(scores, labels, classnames, names, candidates)
    return float(correct.mean()) if len(correct) else 0.0


def control_correct(scores: np.ndarray, labels: np.ndarray, classnames: list[str], names: list[str],
                    candidates: tuple[tuple[str, ...], ...] = ()) -> np.ndarray:
    """Per image of ``classnames[labels]``, whether ``scores`` (images x ``names``) rank its class first. With
    ``candidates`` each image competes only with the group holding its class, so an attribute a whole group shares
    (a colour, say) cannot answer on its own; without, with every name."""
    if not len(labels):
        return np.zeros(0, bool)
    allowed = np.ones((len(classnames), len(names)), bool)
    for i, c in enumerate(classnames):
        group = next((g for g in candidates if c in g), None)
        if group is not None:
            allowed[i] = [n in group for n in names]
    truth = np.array([names.index(classnames[int(y)]) for y in labels])
    masked = np.where(allowed[np.asarray(labels, int)], scores, -np.inf)
    return masked.argmax(1) == truth


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """``n`` indices drawn class by class in turn (a seeded order within each class); sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return sorted(chosen)


@dataclass
class ConceptProbe:
    """CLIP-POPE on images with ground-truth object lists: a fixed, seeded sample with positives for every
    concept it scores, split into a calibration half (thresholds, refitted every step) and a scored half."""

    concepts: list[str]
    excluded: list[str]  # concepts with no positive image in one of the halves (not scored, counted)
    calibration: dict[str, Split]
    scored: dict[str, Split]
    rows: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # half -> task -> its test images' indices
    sizes: dict[str, int] = field(default_factory=dict)  # task -> images in its whole test set

    @classmethod
    def from_tasks(cls, data: dict[str, TaskData], names: list[str], per_concept: int = 8,
                   seed: int = 0) -> "ConceptProbe | None":
        splits = {n: data[n].test for n in names if data[n].test.objects is not None}
        if not splits:
            return None
        images = [(n, i) for n, sp in splits.items() for i in range(len(sp))]
        vocab = sorted({o for sp in splits.values() for objs in sp.objects for o in objs})
        if len(vocab) < 2:
            return None
        rng = np.random.default_rng(seed)
        halves: tuple[dict, dict] = ({}, {})  # (task, index) -> True, for calibration and scored
        for concept in vocab:
            positives = [im for im in images if concept in splits[im[0]].objects[im[1]]]
            for k, im in enumerate(rng.permutation(len(positives))[: 2 * per_concept]):
                im = positives[int(im)]
                if im not in halves[0] and im not in halves[1]:
                    halves[k % 2][im] = True
        negatives = [im for im in images if im not in halves[0] and im not in halves[1]]
        for k, j in enumerate(rng.permutation(len(negatives))[: 2 * per_concept]):
            halves[k % 2][negatives[int(j)]] = True
        def has(half, c):
            return any(c in splits[n].objects[i] for n, i in half)
        concepts = [c for c in vocab if has(halves[0], c) and has(halves[1], c)]
        if len(concepts) < 2:
            return None
        rows = [{n: sorted(i for m, i in half if m == n) for n in splits if any(m == n for m, _ in half)}
                for half in halves]
        pick = lambda r: {n: splits[n].subset(idx) for n, idx in r.items()}  # noqa: E731
        return cls(concepts, [c for c in vocab if c not in concepts], pick(rows[0]), pick(rows[1]),
                   {"calibration": rows[0], "scored": rows[1]}, {n: len(sp) for n, sp in splits.items()})

    def _scores(self, ev: Evaluator, which: str, text: Callable[[int | None], torch.Tensor],
                feats: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        rows, present = [], []
        index = {c: j for j, c in enumerate(self.concepts)}
        half = getattr(self, which)
        for task, split in half.items():
            full, idx = feats.get(task), self.rows.get(which, {}).get(task)
            if full is not None and idx is not None and len(full) == self.sizes.get(task):
                img = full[idx]  # the step already encoded every test image of this task
            else:
                img = ev.image_features(split, sample=False)
            rows.append(ev.similarity(img, text, self.concepts).cpu().numpy())
            p = np.zeros((len(split), len(self.concepts)), bool)
            for i, objs in enumerate(split.objects):
                for o in objs:
                    if o in index:
                        p[i, index[o]] = True
            present.append(p)
        return np.concatenate(rows), np.concatenate(present)

    def evaluate(self, ev: Evaluator, seed: int = 0, feats: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The probe's measures; ``feats``: the step's features of whole test sets by task, reused where given."""
        def text(route: int | None) -> torch.Tensor:
            return ev.class_text_features(self.concepts, ["a photo of a {}."], route=route)

        cal = self._scores(ev, "calibration", text, feats or {})
        scored = self._scores(ev, "scored", text, feats or {})
        out = pope_step(*cal, *scored, self.concepts, seed)
        out.update(concepts=len(self.concepts), excluded_concepts=len(self.excluded),
                   calibration_images=int(len(cal[0])), scored_images=int(len(scored[0])))
        return out


__all__ = ["Evaluator", "ConceptProbe", "control_accuracy", "control_correct", "hijacking", "stratified_sample"]
