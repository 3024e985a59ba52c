"""Offline adapters: the procedural world, sklearn's handwritten digits, and Fashion-MNIST IDX files."""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from suite.config.sequences import TaskSequence, TaskSpec
from suite.data import world
from suite.data.base import DataMissingError, Split, TaskData, resize_uint8, seeded_per_class

DEFAULT_SIZE = 32
MAX_RENDERED = 200_000  # images one embedded task may render (train + test)
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot"]
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Colour-shape compositions never shown in pretraining: the held-out zero-shot control set.
HELDOUT_COMPOSITIONS = frozenset({("red", "star"), ("blue", "heart"), ("green", "hexagon"), ("yellow", "cross"),
                                  ("purple", "triangle"), ("orange", "circle"), ("cyan", "diamond"),
                                  ("pink", "square")})
# Glyph fonts never shown in pretraining: control set for unseen glyph styles.
HELDOUT_FONTS = ("DejaVuSerif-Italic", "cmtt10")
PRETRAIN_FONTS = tuple(f for f in world.FONTS if f not in HELDOUT_FONTS)


def task_seed(seq: TaskSequence, task: TaskSpec, salt: str = "") -> int:
    key = f"{seq.name}/{task.name}/{task.split.get('seed', seq.seed)}/{salt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def world_split(facet: str, classes: list[str], domains: list[str], per_class: int, rng: np.random.Generator,
                size: int, forbidden: frozenset = frozenset(), fonts: tuple[str, ...] = world.FONTS,
                caption_style: str = "mixed") -> Split:
    """Render ``per_class`` samples of every class (or ``per_class`` scenes when ``classes`` is empty)."""
    specs, labels = [], []
    targets = list(enumerate(classes)) if classes else [(0, None)]
    for label, value in targets:
        for k in range(per_class):
            domain = domains[k % len(domains)]
            specs.append(world.sample_spec(facet, value, domain, rng, forbidden=forbidden, fonts=fonts))
            labels.append(label)
    images = np.stack([world.render(s, size) for s in specs]) if specs else np.zeros((0, size, size, 3), np.uint8)
    caps = [(world.caption(s, style=caption_style),) for s in specs]
    return Split(labels=np.asarray(labels, dtype=np.int64), ids=[world.spec_id(s) for s in specs], images=images,
                 captions=caps, objects=[world.objects_of(s) for s in specs])


def load_world(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    src, split = task.source, task.split
    facet = src.get("facet", "object")
    domains = src.get("domains") or [src.get("domain", "solid")]
    fonts = tuple(src["fonts"]) if "fonts" in src else (HELDOUT_FONTS if src.get("heldout") else PRETRAIN_FONTS)
    forbidden = frozenset() if src.get("heldout") else HELDOUT_COMPOSITIONS
    classes = list(task.classes) if isinstance(task.classes, tuple) else []
    if facet == "object" and not src.get("heldout"):
        for c in classes:
            if tuple(c.split(" ", 1)) in HELDOUT_COMPOSITIONS:
                raise world.WorldError(f"task {task.name}: class {c!r} is a held-out composition; set heldout: true")
    rng = np.random.default_rng(task_seed(seq, task))
    style = src.get("caption_style", "mixed")
    per_tr = split.get("train_per_class", split.get("train_size", 0))
    per_te = split.get("test_per_class", split.get("test_size", 1))
    total = (per_tr + per_te) * max(1, len(classes))
    if total > MAX_RENDERED:
        raise world.WorldError(f"{seq.path}: {task.name}.split: {total} images to render; an embedded task renders at "
                               f"most {MAX_RENDERED}")
    train = world_split(facet, classes, domains, per_tr, rng, size, forbidden, fonts, style)
    test = world_split(facet, classes, domains, per_te, rng, size, forbidden, fonts, style)
    names = classes if classes else []
    return TaskData(task.name, names, list(task.templates), train, test)


def load_digits_task(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    from sklearn.datasets import load_digits  # heavy, and only for the digits sets

    d = load_digits()
    imgs = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    imgs = np.repeat(imgs[..., None], 3, axis=-1)
    labels = d.target.astype(np.int64)
    seed = task_seed(seq, task)
    test_idx = seeded_per_class(labels, task.split.get("test_per_class", 30), seed)
    train_idx = seeded_per_class(labels, task.split.get("train_per_class"), seed + 1, exclude=set(test_idx))
    big = resize_uint8(imgs, size)

    def mk(idx: list[int]) -> Split:
        return Split(labels=labels[idx], ids=[f"sklearn-digits:{i}" for i in idx], images=big[idx])

    return TaskData(task.name, list(task.classes), list(task.templates), mk(train_idx), mk(test_idx))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataMissingError(
        f"Fashion-MNIST: {stem}[.gz] not found under {root}; install Debian's dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or set source.root / $CLSUITE_FASHION_MNIST to a folder with the IDX files")


def fashion_mnist_root(task: TaskSpec | None = None) -> Path:
    root = (task.source.get("root") if task else None) or os.environ.get("CLSUITE_FASHION_MNIST") or FASHION_MNIST_DIR
    return Path(os.path.expandvars(root))


def fashion_mnist_available() -> bool:
    root = fashion_mnist_root()
    return any((root / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def load_fashion_mnist(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    root = fashion_mnist_root(task)
    seed = task_seed(seq, task)
    parts = {}
    for split_name, prefix, per_class, s in (("train", "train", task.split.get("train_per_class"), seed),
                                            ("test", "t10k", task.split.get("test_per_class"), seed + 1)):
        images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        idx = seeded_per_class(labels, per_class, s)
        # Fashion-MNIST is dark-on-light inverted (white garment on black); keep as is, grey to RGB.
        sel = np.repeat(images[idx][..., None], 3, axis=-1)
        parts[split_name] = Split(labels=labels[idx], ids=[f"fashion-mnist:{prefix}:{i}" for i in idx],
                                  images=resize_uint8(sel, size))
    return TaskData(task.name, list(task.classes), list(task.templates), parts["train"], parts["test"])


REFERENCE_SEED_OFFSET = 10_000  # reference scenes never share a random stream with a task's own draws


def reference_pairs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` world scenes with captions for distillation-style methods (ZSCL): seen compositions, plain domains."""
    rng = np.random.default_rng(REFERENCE_SEED_OFFSET + seed)
    specs = [world.sample_spec("scene", None, ("solid", "outline")[i % 2], rng, forbidden=HELDOUT_COMPOSITIONS)
             for i in range(n)]
    return np.stack([world.render(s, size) for s in specs]), [world.caption(s) for s in specs]
