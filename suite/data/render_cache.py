"""Rendered embedded data kept on disk between processes, so a lone run does not re-render its sequence.

Rendering the procedural world costs seconds per sequence (about 3 s for ``world-class-incremental`` on one
core); a lone ``clsuite run`` paid it every time. A rendered task is stored as one ``.npz`` (arrays only, read
with ``allow_pickle=False``) and one JSON file (names, captions, object lists, and the SHA-256 of the image
bytes), under a key hashing everything the rendering depends on: the task's spec and seed, the image side, the
renderer's source files and the versions of the libraries that draw it. On reading, the image bytes are hashed
again and must match, so a damaged file is rendered anew (and replaced), never used; the manifest pin is then
checked as for freshly rendered data.

Where: ``$CLSUITE_CACHE`` (``off`` turns the cache off), else ``$XDG_CACHE_HOME/clsuite``, else
``~/.cache/clsuite``. Deleting the folder is always safe.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from suite.config.sequences import TaskSequence, TaskSpec
from suite.data.base import Split, TaskData
from suite.paths import parse_json

FORMAT = 1
RENDERED = ("world",)  # adapters whose output is worth keeping (they draw every image)


def cache_dir() -> Path | None:
    """The cache folder, or None when ``CLSUITE_CACHE=off``."""
    env = os.environ.get("CLSUITE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clsuite"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    import matplotlib
    import PIL

    from suite.data import embedded, world

    h = hashlib.sha256(f"{FORMAT} PIL {PIL.__version__} matplotlib {matplotlib.__version__} numpy {np.__version__}".encode())
    for module in (world, embedded):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def render_key(seq: TaskSequence, spec: TaskSpec, size: int) -> str:
    """What the rendered task depends on, hashed: the sequence's name and seed (they seed the task), the task's
    spec, the image side and the renderer's code."""
    what = [_code_digest(), seq.name, seq.seed, spec.name, spec.adapter, spec.source, spec.split,
            list(spec.classes) if isinstance(spec.classes, tuple) else spec.classes, list(spec.templates), size]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def image_digest(data: TaskData) -> str:
    """SHA-256 of the train and test image bytes: the data's ``content_sha256``, and what a stored copy must match."""
    h = hashlib.sha256()
    for part in (data.train.images, data.test.images):
        h.update(part.tobytes())
    return h.hexdigest()


def _split_meta(s: Split) -> dict:
    return {"ids": s.ids, "captions": [list(c) for c in s.captions] if s.captions is not None else None,
            "objects": s.objects}


def _split(meta: dict, arrays, part: str) -> Split:
    caps = meta["captions"]
    return Split(labels=arrays[f"{part}_labels"], ids=list(meta["ids"]), images=arrays[f"{part}_images"],
                 captions=[tuple(c) for c in caps] if caps is not None else None, objects=meta["objects"])


def load(folder: Path, key: str) -> TaskData | None:
    """The stored task, or None if absent, unreadable or not matching its recorded image digest."""
    meta_path, arrays_path = folder / f"{key}.json", folder / f"{key}.npz"
    try:
        meta = parse_json(meta_path.read_text(), meta_path)
        with np.load(arrays_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        data = TaskData(meta["name"], list(meta["classnames"]), list(meta["templates"]),
                        _split(meta["train"], arrays, "train"), _split(meta["test"], arrays, "test"))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    data.content_sha256 = image_digest(data)
    return data if data.content_sha256 == meta.get("image_sha256") else None


def save(folder: Path, key: str, data: TaskData) -> None:
    """Store ``data`` (arrays first, then the JSON that names their digest; each written whole, then renamed).
    A folder that cannot be written leaves the run as it was: the cache is an optimisation."""
    data.content_sha256 = data.content_sha256 or image_digest(data)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{p}_{k}": getattr(getattr(data, p), k) for p in ("train", "test") for k in ("labels", "images")}
        meta = {"format": FORMAT, "name": data.name, "classnames": data.classnames, "templates": data.templates,
                "train": _split_meta(data.train), "test": _split_meta(data.test), "image_sha256": data.content_sha256}
        for suffix, write in ((".npz", lambda f: np.savez(f, **arrays)),
                              (".json", lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(tmp, folder / f"{key}{suffix}")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError:
        return


def cached(seq: TaskSequence, spec: TaskSpec, size: int, render: Callable[[], TaskData]) -> TaskData:
    """``render()``'s task, read from the cache when a verified copy is there, else rendered and stored; a task
    that went through the cache has its ``content_sha256`` set (hashed once, when verified or stored)."""
    folder = cache_dir()
    if folder is None or spec.adapter not in RENDERED:
        return render()
    folder = folder / "rendered"
    key = render_key(seq, spec, size)
    data = load(folder, key)
    if data is None:
        data = render()
        save(folder, key, data)
    return data


__all__ = ["cache_dir", "cached", "image_digest", "load", "render_key", "save"]
