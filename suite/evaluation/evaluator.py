"""Evaluate a model on every task of a sequence: one image pass per test set per step, cached text features.

Text features of class prompts are cached by (class names, templates) and dropped only when the text side
changed (``invalidate_text``), so a vision-only PET never re-encodes text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.base import Split, TaskData
from .calibration import expected_calibration_error
from .hallucination import calibrate_thresholds, hijacking, pope
from .retrieval import confident_mismatch_rate, recall_at_k


def batch_images(backbone, split: Split, idx: Iterable[int]) -> torch.Tensor:
    """Preprocessed images of ``split`` at ``idx``: the uint8 fast path, or PIL + the model's transform."""
    idx = list(idx)
    if split.images is not None:
        return backbone.images_from_uint8(split.images[idx])
    from PIL import Image

    tf = getattr(backbone, "pil_preprocess", None)
    ims = [split.load(i) for i in idx]
    if tf is None:
        return backbone.images_from_uint8(np.stack([np.asarray(Image.fromarray(im).resize(
            (backbone.image_size, backbone.image_size))) for im in ims]))
    return torch.stack([tf(Image.fromarray(im)) for im in ims]).to(backbone.device)


@dataclass
class Evaluator:
    backbone: Any
    batch_size: int = 256
    max_eval: int | None = None
    autocast: Callable[[], Any] | None = None
    _text_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    text_encodes: int = 0  # how many times class prompts were encoded (for the speed benchmark)

    def invalidate_text(self) -> None:
        self._text_cache.clear()

    def _ctx(self):
        return self.autocast() if self.autocast else torch.autocast("cpu", enabled=False)

    # -- features ------------------------------------------------------------------------------------
    def class_text_features(self, classnames: list[str], templates: list[str], fresh: bool = False) -> torch.Tensor:
        """Class embeddings (template-averaged). ``fresh``: encode now, with autograd as the caller has it
        (training a text-side PET); otherwise no autograd, served from the cache when possible."""
        bb = self.backbone
        templates = bb.class_templates(templates)
        key = (tuple(classnames), tuple(templates))
        if not fresh and key in self._text_cache:
            return self._text_cache[key]
        tokens = bb.tokenize([t.replace("{}", c) for c in classnames for t in templates]).to(bb.device)
        with torch.set_grad_enabled(fresh and torch.is_grad_enabled()), self._ctx():
            f = F.normalize(bb.encode_text(tokens).float(), dim=-1)
        f = F.normalize(f.view(len(classnames), len(templates), -1).mean(1), dim=-1)
        if not fresh:
            self._text_cache[key] = f
            self.text_encodes += 1
        return f

    def text_features(self, texts: list[str]) -> torch.Tensor:
        bb = self.backbone
        out = []
        with torch.no_grad(), self._ctx():
            for i in range(0, len(texts), self.batch_size):
                out.append(F.normalize(bb.encode_text(bb.tokenize(texts[i:i + self.batch_size]).to(bb.device)).float(), dim=-1))
        return torch.cat(out)

    def eval_indices(self, split: Split) -> list[int]:
        n = len(split)
        return list(range(n if self.max_eval is None else min(n, self.max_eval)))

    def image_features(self, split: Split) -> torch.Tensor:
        idx = self.eval_indices(split)
        out = []
        with torch.no_grad(), self._ctx():
            for i in range(0, len(idx), self.batch_size):
                out.append(F.normalize(self.backbone.encode_image(batch_images(self.backbone, split, idx[i:i + self.batch_size])).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)

    # -- metrics -------------------------------------------------------------------------------------
    def classify(self, img: torch.Tensor, labels: np.ndarray, head_names: list[str], head_templates: list[list[str]],
                 label_offset: int = 0) -> dict[str, Any]:
        """Accuracy/ECE of images ``img`` among a head of classes (each with its own templates).

        Classes sharing templates are encoded together (one text pass, one cache entry per group)."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, tpl in enumerate(head_templates):
            groups.setdefault(tuple(tpl), []).append(i)
        parts = [self.class_text_features([head_names[i] for i in idx], list(tpl)) for tpl, idx in groups.items()]
        order = torch.tensor([i for idx in groups.values() for i in idx])
        text = torch.cat(parts)[torch.argsort(order)]
        logits = self.backbone.logit_scale_value.detach().float() * img @ text.T
        probs = torch.softmax(logits, -1).cpu().numpy()
        y = labels[: len(img)] + label_offset
        return {"accuracy": float((probs.argmax(1) == y).mean()) if len(y) else 0.0,
                "ece": expected_calibration_error(probs, y), "probs": probs}

    def retrieval(self, img: torch.Tensor, split: Split, delta: float = 0.05) -> dict[str, float]:
        caps = [split.captions[i] for i in self.eval_indices(split)]
        sim = (img @ self.text_features(caps).T).cpu().numpy()
        out = recall_at_k(sim)
        out.update(confident_mismatch_rate(sim, delta))
        out["r1_mean"] = (out["i2t_r1"] + out["t2i_r1"]) / 2
        return out


@dataclass
class ConceptProbe:
    """POPE on images with ground-truth object lists: concept vocabulary, prompts, thresholds from step 0."""

    concepts: list[str]
    images: dict[str, Split]  # task name -> split with objects
    thresholds: np.ndarray | None = None

    @classmethod
    def from_tasks(cls, data: dict[str, TaskData], names: list[str], per_task: int = 64) -> "ConceptProbe | None":
        splits = {n: data[n].test for n in names if data[n].test.objects is not None}
        if not splits:
            return None
        concepts = sorted({o for s in splits.values() for objs in s.objects for o in objs})
        if len(concepts) < 2:
            return None
        return cls(concepts, {n: s.subset(range(min(per_task, len(s)))) for n, s in splits.items()})

    def scores(self, ev: Evaluator, feats: dict[str, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Image-concept scores; ``feats`` (task -> test-split features already computed this step) are reused,
        since the probe's images are the first test images of each task."""
        text = ev.class_text_features(self.concepts, ["a photo of a {}."])
        rows, present = [], []
        for name, split in self.images.items():
            n = len(ev.eval_indices(split))
            known = (feats or {}).get(name)
            img = known[:n] if known is not None and len(known) >= n else ev.image_features(split)
            rows.append((img @ text.T).cpu().numpy())
            p = np.zeros((len(img), len(self.concepts)), bool)
            for i, objs in enumerate(split.objects[: len(img)]):
                for o in objs:
                    p[i, self.concepts.index(o)] = True
            present.append(p)
        return np.concatenate(rows), np.concatenate(present)

    def evaluate(self, ev: Evaluator, seed: int = 0, feats: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        scores, present = self.scores(ev, feats)
        if self.thresholds is None:
            self.thresholds = calibrate_thresholds(scores, present)
        return pope(scores, present, self.thresholds, self.concepts, seed)


__all__ = ["Evaluator", "ConceptProbe", "batch_images", "hijacking"]
