"""Zero-shot report of a backbone on the world's held-out splits and the offline real sets.

``clsuite zeroshot-report`` prints it; the numbers committed next to the shipped checkpoint come from it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from suite.config.sequences import parse_sequence
from suite.data import materialize, world
from suite.data.embedded import (
    FASHION_MNIST_CLASSES,
    HELDOUT_COMPOSITIONS,
    HELDOUT_FONTS,
    PRETRAIN_FONTS,
    fashion_mnist_available,
    fashion_mnist_root,
    world_split,
)
from suite.evaluation.evaluator import Evaluator

OBJECT_TEMPLATES = ["a photo of a {}.", "a {}.", "a picture of a {}."]
DIGIT_TEMPLATES = ["the digit {}.", "the number {}."]
FASHION_TEMPLATES = ["a photo of a {}.", "a picture of a {}, a piece of clothing."]


def _acc(ev: Evaluator, split, classes: list[str], templates: list[str], img=None) -> float:
    img = ev.image_features(split) if img is None else img
    return ev.classify(img, split.labels, classes, [templates] * len(classes))["accuracy"]


def zero_shot_report(backbone, per_class: int = 40, seed: int = 1234) -> dict[str, Any]:
    ev = Evaluator(backbone, batch_size=256)
    size = backbone.image_size
    rng = np.random.default_rng(seed)
    held = [f"{c} {s}" for c, s in sorted(HELDOUT_COMPOSITIONS)]
    all_comps = [f"{c} {s}" for c in world.COLOURS for s in world.SHAPES]
    out: dict[str, Any] = {}
    split = world_split("object", held, ["solid"], per_class, rng, size)
    img = ev.image_features(split)
    out["heldout_compositions_8way"] = _acc(ev, split, held, OBJECT_TEMPLATES, img)
    labels = np.array([all_comps.index(held[int(l)]) for l in split.labels])
    out["heldout_compositions_64way"] = ev.classify(img, labels, all_comps, [OBJECT_TEMPLATES] * len(all_comps))["accuracy"]
    seen = [f"{c} {s}" for c in world.COLOURS for s in world.SHAPES if (c, s) not in HELDOUT_COMPOSITIONS]
    split = world_split("object", seen, ["solid"], max(4, per_class // 8), rng, size, forbidden=HELDOUT_COMPOSITIONS)
    out["seen_compositions_56way"] = _acc(ev, split, seen, OBJECT_TEMPLATES)
    digits = [str(i) for i in range(10)]
    split = world_split("glyph", digits, ["solid"], per_class, rng, size, fonts=HELDOUT_FONTS)
    out["heldout_font_digits_10way"] = _acc(ev, split, digits, DIGIT_TEMPLATES)
    split = world_split("glyph", digits, ["solid"], per_class, rng, size, fonts=PRETRAIN_FONTS)
    out["seen_font_digits_10way"] = _acc(ev, split, digits, DIGIT_TEMPLATES)
    seq = parse_sequence({"name": "zero-shot-report", "version": 1, "track": "class-incremental", "protocol": "task-id",
                          "tasks": [{"name": "digits", "source": {"adapter": "sklearn-digits"}, "classes": digits,
                                     "split": {"rule": "seeded-holdout", "train_per_class": 0, "test_per_class": 1000}}]
                          + ([{"name": "fashion", "source": {"adapter": "fashion-mnist"}, "classes": FASHION_MNIST_CLASSES,
                               "split": {"rule": "official", "train_per_class": 0, "test_per_class": 1000}}]
                             if fashion_mnist_available() else [])}, "<zero-shot report>")
    d = materialize(seq, "digits", size)
    out["sklearn_digits_10way"] = _acc(ev, d.test, digits, DIGIT_TEMPLATES)
    out["sklearn_digits_n"] = len(d.test)
    if fashion_mnist_available():
        f = materialize(seq, "fashion", size)
        out["fashion_mnist_10way"] = _acc(ev, f.test, FASHION_MNIST_CLASSES, FASHION_TEMPLATES)
        out["fashion_mnist_n"] = len(f.test)
    else:
        out["fashion_mnist_10way"] = None
        out["fashion_mnist_unavailable"] = (f"Fashion-MNIST IDX files not found under {fashion_mnist_root()} "
                                            f"(apt-get install dataset-fashion-mnist, or set $CLSUITE_FASHION_MNIST)")
    return out
