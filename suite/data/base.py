"""Shared shapes of the data layer: splits, task data, manifests, and the errors users see."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from suite.errors import SuiteError


class DataMissingError(SuiteError, FileNotFoundError):
    """Real data that is not on this machine: says which dataset, where we looked, and how to provide it."""


class ImageError(SuiteError):
    """An image file that cannot be decoded; the message names it."""


class ManifestMismatch(SuiteError):
    """Materialised data whose manifest hash differs from the one pinned in the sequence file."""


def manifest_sha256(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class Split:
    """One split of a task: images (by index), integer labels, and for scenes captions and object lists.

    ``load(i)`` returns an HxWx3 uint8 array or a PIL image; in-memory splits keep ``images`` as one array so
    that batches can be converted without a Python loop. ``captions[i]`` holds every caption of image i (one or
    more: the COCO/Flickr Karpathy splits have five); retrieval scores against all of them.
    """

    labels: np.ndarray
    ids: list[str]
    images: np.ndarray | None = None
    loader: Callable[[int], Any] | None = None
    captions: list[tuple[str, ...]] | None = None
    objects: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> np.ndarray:
        if self.images is not None:
            return self.images[i]
        img = self.image(i)
        return img if isinstance(img, np.ndarray) else np.asarray(img)

    def image(self, i: int) -> "Image.Image | np.ndarray":
        """Image ``i`` decoded: an RGB PIL image for files (no array copy when a PIL transform follows), else the
        loader's array."""
        if self.images is not None:
            return self.images[i]
        assert self.loader is not None
        try:
            img = self.loader(i)
            if isinstance(img, np.ndarray):
                return img
            img = Image.open(img) if isinstance(img, str) else img
            img.load()
            return img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated or foreign files
            raise ImageError(f"{self.ids[i]}: cannot decode this image ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None

    def caption(self, i: int, draw: int = 0) -> str:
        """The caption training uses for image ``i`` at its ``draw``-th use: the image's captions in turn."""
        assert self.captions is not None
        caps = self.captions[i]
        return caps[draw % len(caps)]

    def subset(self, idx: Sequence[int]) -> "Split":
        idx = list(idx)
        return Split(
            labels=self.labels[idx], ids=[self.ids[i] for i in idx],
            images=None if self.images is None else self.images[idx],
            loader=None if self.loader is None else (lambda j, base=self.loader, m=idx: base(m[j])),
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            objects=None if self.objects is None else [self.objects[i] for i in idx],
        )

    def manifest_lines(self, name: str) -> list[str]:
        return [f"{name}\t{int(l)}\t{i}" for l, i in zip(self.labels, self.ids)]


@dataclass
class TaskData:
    name: str
    classnames: list[str]
    templates: list[str]
    train: Split
    test: Split
    manifest_sha256: str = ""
    content_sha256: str | None = None
    train_stream: Any = None  # a ShardStreamSource when training reads shards front to back (webdataset)

    def manifest(self) -> list[str]:
        return self.train.manifest_lines("train") + self.test.manifest_lines("test")


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a stack of HxWx3 uint8 images to ``size`` (bilinear); returns a new array."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    if len(images) == 0:
        return np.zeros((0, size, size, images.shape[3]), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def seeded_per_class(labels: np.ndarray, per_class: int | None, seed: int, exclude: set[int] = frozenset()) -> list[int]:
    """Pick ``per_class`` indices of every label (all if None), deterministically for ``seed``; sorted."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in np.unique(labels):
        idx = np.array([i for i in np.flatnonzero(labels == c) if i not in exclude])
        idx = rng.permutation(idx)
        chosen.extend(int(i) for i in (idx if per_class is None else idx[:per_class]))
    return sorted(chosen)
