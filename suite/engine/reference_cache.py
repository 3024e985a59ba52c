"""The pretrained model's evaluation kept on disk between processes, so a lone run does not redo it.

Every run starts by evaluating the pretrained model (the reference of "relative to zero-shot"): about 1.2 s of a
lone embedded run's fixed cost on a 2-core CPU (issue 35), and the same numbers for every PET and method of a
(sequence, seed). A sweep worker already keeps it in memory (``Runner._pretrained_evaluation``); this keeps it in
``$CLSUITE_CACHE/reference`` (the render cache's folder, :func:`suite.data.render_cache.cache_dir`; ``off`` turns
both off) under a key that hashes everything the evaluation depends on: the in-process key (sequence, data
digests, weights, evaluation settings, seed, device), the sequence file's bytes, every class name and template,
the suite's source, the library versions, and this CPU (results are bit-identical on one machine, not across
CPUs, so a cache shared between machines never mixes them). JSON keeps every float exactly, so a run that reads
the reference writes the same record as one that computes it (tests/test_reference_and_items.py). A file that
cannot be read or written is ignored: the cache is an optimisation. Deleting the folder is always safe.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from suite.data.render_cache import cache_dir
from suite.errors import SuiteError
from suite.paths import parse_json, write_atomic

FORMAT = 1


@functools.lru_cache(maxsize=1)
def _environment_digest() -> str:
    """The suite's own source, the numeric libraries' versions and this CPU."""
    import suite

    h = hashlib.sha256(f"{FORMAT} torch {torch.__version__} numpy {np.__version__}".encode())
    h.update(f"{platform.machine()} {_cpu_name()} {torch.backends.cpu.get_cpu_capability()}".encode())
    root = Path(suite.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def reference_key(process_key: tuple, sequence_file: str | Path, data: dict[str, Any]) -> str:
    """The on-disk key: ``process_key`` (``Runner._pretrained_evaluation``'s) plus what it leaves implicit."""
    names = {k: [list(v.classnames), list(v.templates)] for k, v in sorted(data.items())}
    what = [_environment_digest(), list(map(str, process_key)),
            hashlib.sha256(Path(sequence_file).read_bytes()).hexdigest(), names]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def load(key: str) -> dict[str, Any] | None:
    """The stored evaluation of ``key``, or None (absent, unreadable, another format)."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / "reference" / f"{key}.json"
    try:
        stored = parse_json(path.read_text(), path)
    except (OSError, SuiteError):  # absent or damaged: computed anew (and replaced by the next save)
        return None
    ok = isinstance(stored, dict) and stored.get("format") == FORMAT and stored.get("key") == key
    return stored["evaluation"] if ok and isinstance(stored.get("evaluation"), dict) else None


def save(key: str, evaluation: dict[str, Any]) -> None:
    """Store ``evaluation`` (written whole, then renamed); a folder that cannot be written is left alone."""
    folder = cache_dir()
    if folder is None:
        return
    text = json.dumps({"format": FORMAT, "key": key, "evaluation": evaluation}).encode()
    try:
        (folder / "reference").mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "reference" / f"{key}.json", lambda f: f.write(text))
    except (OSError, SuiteError):
        return


__all__ = ["load", "reference_key", "save"]
