"""Item-level outcomes: for every evaluated step, which test and control images were answered correctly.

They make every accuracy of a record recomputable and let intervals resample the test set, not only seeds
(:mod:`suite.results.uncertainty`). Each item set (a task's or a control's test images, in the order the split
lists them) is one compact string, base64 of one bit per item (little-endian within bytes):

- classification: ``"c:N:<bits>"`` — whether each of the N images was answered right;
- retrieval: ``"r:N:M:<i2t bits>:<t2i bits>[:<caption counts>]"`` — for each of the N images whether a caption of
  its own came first (image→text R@1), for each of the M captions (image by image) whether its image came first
  (text→image R@1); the uint8 caption count per image is given only where images do not all have M/N captions.

An item's *score* is what the bootstrap resamples: its correctness (0/1) for classification; for retrieval the
image's share of the mean of image→text and text→image R@1, scaled so the mean of the scores is that accuracy.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _bits(values: Any) -> str:
    return _b64(np.packbits(np.asarray(values, dtype=bool).ravel(), bitorder="little").tobytes())


def _unbits(text: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(_unb64(text), np.uint8), bitorder="little")
    if len(bits) != (n + 7) // 8 * 8 or bits[n:].any():
        raise ValueError(f"{len(bits)} packed bits do not hold {n} items")
    return bits[:n].astype(bool)


def pack_correct(correct: Any) -> str:
    bits = np.asarray(correct, dtype=bool).ravel()
    return f"c:{len(bits)}:{_bits(bits)}"


def pack_hits(i2t_hit: Any, t2i_hit: Any, captions: Any) -> str:
    """Retrieval outcomes: per image whether it was recalled at 1, per caption (image by image) likewise."""
    i2t, t2i = np.asarray(i2t_hit, bool).ravel(), np.asarray(t2i_hit, bool).ravel()
    counts = np.asarray(captions, dtype=np.int64).ravel()
    n, m = len(i2t), len(t2i)
    if len(counts) != n or counts.sum() != m or (n and (counts.min() < 1 or counts.max() > 255)):
        raise ValueError("caption counts must give 1..255 captions to each image and sum to the captions")
    text = f"r:{n}:{m}:{_bits(i2t)}:{_bits(t2i)}"
    if n and not (counts == m // n).all():
        text += ":" + _b64(counts.astype(np.uint8).tobytes())
    return text


def unpack(entry: str) -> dict[str, np.ndarray]:
    """The arrays of one packed item set; raises ``ValueError`` when it is malformed or does not fit its sizes."""
    if not isinstance(entry, str):
        raise ValueError("an item set is a string")
    parts = entry.split(":")
    try:
        if parts[0] == "c" and len(parts) == 3:
            return {"correct": _unbits(parts[2], int(parts[1]))}
        if parts[0] == "r" and len(parts) in (5, 6):
            n, m = int(parts[1]), int(parts[2])
            if len(parts) == 6:
                counts = np.frombuffer(_unb64(parts[5]), np.uint8).astype(np.int64)
            elif n and m % n == 0:
                counts = np.full(n, m // n, np.int64)
            else:
                raise ValueError(f"{m} captions do not divide among {n} images; counts are missing")
            if len(counts) != n or counts.sum() != m:
                raise ValueError(f"caption counts do not fit {n} images and {m} captions")
            return {"i2t": _unbits(parts[3], n), "t2i": _unbits(parts[4], m), "captions": counts}
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc) or "not base64") from None
    raise ValueError(f"unknown item set form {entry[:12]!r}")


def size(entry: str) -> int:
    """How many items (images) the set holds."""
    return int(entry.split(":")[1])


def accuracy(entry: str) -> float:
    """The accuracy an item set implies: the share correct, or the mean of image→text and text→image R@1."""
    arrays = unpack(entry)
    if "correct" in arrays:
        return float(arrays["correct"].mean()) if len(arrays["correct"]) else 0.0
    if not len(arrays["i2t"]):
        return 0.0
    return float((arrays["i2t"].mean() + arrays["t2i"].mean()) / 2)


def scores(entry: str) -> np.ndarray:
    """Per item, a score whose mean is :func:`accuracy` (what a bootstrap over items resamples)."""
    arrays = unpack(entry)
    if "correct" in arrays:
        return arrays["correct"].astype(np.float64)
    n, m = len(arrays["i2t"]), len(arrays["t2i"])
    owner = np.repeat(np.arange(n), arrays["captions"])
    caption_hits = np.bincount(owner, weights=arrays["t2i"].astype(np.float64), minlength=n)
    return arrays["i2t"] / 2 + n * caption_hits / (2 * m)


def hits(entry: str) -> np.ndarray:
    """Per query, whether it was answered right at 1 (what McNemar's test pairs): images, then captions."""
    arrays = unpack(entry)
    if "correct" in arrays:
        return arrays["correct"]
    return np.concatenate([arrays["i2t"], arrays["t2i"]])


def check_step(step: dict[str, Any], where: str) -> str | None:
    """Why a step's items disagree with its accuracies (one line), or ``None`` when every accuracy follows."""
    items = step.get("items")
    if items is None:
        return None
    tasks, controls = items.get("tasks", []), items.get("controls", {})
    if len(tasks) != len(step.get("accuracy", [])):
        return f"{where}.items.tasks: {len(tasks)} entries for {len(step.get('accuracy', []))} tasks"
    pairs = [(f"tasks[{i}]", e, step["accuracy"][i]) for i, e in enumerate(tasks)]
    stated = step.get("control_accuracy", {})
    if set(controls) != set(stated):
        return f"{where}.items.controls: sets {sorted(controls)} != control accuracies {sorted(stated)}"
    pairs += [(f"controls.{k}", e, stated[k]) for k, e in controls.items()]
    for name, entry, value in pairs:
        try:
            got = accuracy(entry)
        except (KeyError, TypeError, ValueError) as exc:
            return f"{where}.items.{name}: unreadable item outcomes ({exc})"
        if abs(got - value) > 1e-9:
            return f"{where}.items.{name}: the items give accuracy {got:.6f}, the record states {value:.6f}"
    return None


__all__ = ["accuracy", "check_step", "hits", "pack_correct", "pack_hits", "scores", "size", "unpack"]
