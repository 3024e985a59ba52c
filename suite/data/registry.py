"""One door to data: ``materialize(sequence, task)`` picks the adapter, hashes the manifest, checks the pin."""
from __future__ import annotations

import json
from typing import Callable

from suite.config.sequences import TaskSequence, TaskSpec
from suite.data import embedded, real, render_cache
from suite.data.base import ManifestMismatch, TaskData, manifest_sha256

Loader = Callable[[TaskSequence, TaskSpec, int], TaskData]

ADAPTERS: dict[str, Loader] = {
    "world": embedded.load_world,
    "sklearn-digits": embedded.load_digits_task,
    "fashion-mnist": embedded.load_fashion_mnist,
    "imagefolder": real.load_imagefolder,
    "torchvision": real.load_torchvision,
    "webdataset": real.load_webdataset,
    "karpathy": real.load_karpathy,
}

_CACHE: dict[tuple, TaskData] = {}


def materialize(seq: TaskSequence, task: TaskSpec | str, size: int | None = None, verify: bool = True) -> TaskData:
    """Load one task's data; its manifest hash is set, and checked against the pin when ``verify``.

    ``size`` is the image side for in-memory (embedded) data; real data keeps its files and is resized by the
    model's preprocessing.
    """
    spec = seq.task(task) if isinstance(task, str) else task
    size = size or seq.image_size or embedded.DEFAULT_SIZE
    key = (seq.path, seq.name, seq.version, seq.seed, spec.name, size,
           json.dumps([spec.source, spec.split, spec.classes], sort_keys=True, default=str))
    if key in _CACHE:
        return _CACHE[key]
    data = render_cache.cached(seq, spec, size, lambda: ADAPTERS[spec.adapter](seq, spec, size))
    data.manifest_sha256 = manifest_sha256(data.manifest())
    if data.train.images is not None and data.content_sha256 is None:  # the render cache has hashed what it served
        data.content_sha256 = render_cache.image_digest(data)
    pinned = spec.pinned_manifest
    if verify and pinned and pinned != data.manifest_sha256:
        raise ManifestMismatch(f"{seq.path}: {spec.name}.split.manifest_sha256: pinned {pinned[:12]}… but the data "
                               f"materialised here hashes to {data.manifest_sha256[:12]}…")
    _CACHE[key] = data
    return data


def materialize_sequence(seq: TaskSequence, size: int | None = None, verify: bool = True) -> dict[str, TaskData]:
    return {t.name: materialize(seq, t, size, verify) for t in seq.tasks + seq.control_sets}
