"""Item-level outcomes: for every evaluated step, which test and control images were answered correctly.

They make every accuracy of a record recomputable and let intervals resample the test set, not only seeds
(:mod:`suite.results.uncertainty`). Packed compactly, in the order the split lists its images:

- classification: ``{"n": N, "correct": <base64 of N bits, little-endian within bytes>}``;
- retrieval: ``{"n": N, "i2t_rank": <base64 uint8 per image>, "t2i_rank": <base64 uint8 per caption>,
  "captions": <base64 uint8 per image: its number of captions>}``; a rank is how many wrong items scored above
  the query's best positive (0 = recalled at 1), capped at 255.

An item's *score* is what the bootstrap resamples: its correctness (0/1) for classification; for retrieval the
image's share of the mean of image→text and text→image R@1, scaled so the mean of the scores is that accuracy.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np

RANK_CAP = 255


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def pack_correct(correct: Any) -> dict[str, Any]:
    bits = np.asarray(correct, dtype=bool).ravel()
    return {"n": int(len(bits)), "correct": _b64(np.packbits(bits, bitorder="little").tobytes())}


def pack_ranks(i2t_rank: Any, t2i_rank: Any, captions: Any) -> dict[str, Any]:
    cap = lambda r: np.minimum(np.asarray(r, dtype=np.int64), RANK_CAP).astype(np.uint8).tobytes()  # noqa: E731
    counts = np.asarray(captions, dtype=np.int64)
    if counts.size and (counts.min() < 1 or counts.max() > RANK_CAP):
        raise ValueError(f"captions per image must be 1..{RANK_CAP}")
    return {"n": int(len(counts)), "i2t_rank": _b64(cap(i2t_rank)), "t2i_rank": _b64(cap(t2i_rank)),
            "captions": _b64(counts.astype(np.uint8).tobytes())}


def unpack(entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one packed entry; raises ``ValueError`` when they do not fit its ``n``."""
    n = int(entry["n"])
    if "correct" in entry:
        bits = np.unpackbits(np.frombuffer(_unb64(entry["correct"]), np.uint8), bitorder="little")
        if len(bits) != (n + 7) // 8 * 8 or bits[n:].any():
            raise ValueError(f"{len(bits)} packed bits do not hold {n} items")
        return {"correct": bits[:n].astype(bool)}
    out = {k: np.frombuffer(_unb64(entry[k]), np.uint8).astype(np.int64) for k in ("i2t_rank", "t2i_rank", "captions")}
    if len(out["i2t_rank"]) != n or len(out["captions"]) != n or len(out["t2i_rank"]) != int(out["captions"].sum()):
        raise ValueError(f"ranks do not fit {n} images and their captions")
    return out


def accuracy(entry: dict[str, Any]) -> float:
    """The accuracy an entry implies: the share correct, or the mean of image→text and text→image R@1."""
    arrays = unpack(entry)
    if "correct" in arrays:
        return float(arrays["correct"].mean()) if len(arrays["correct"]) else 0.0
    return float(((arrays["i2t_rank"] == 0).mean() + (arrays["t2i_rank"] == 0).mean()) / 2)


def scores(entry: dict[str, Any]) -> np.ndarray:
    """Per item, a score whose mean is :func:`accuracy` (what a bootstrap over items resamples)."""
    arrays = unpack(entry)
    if "correct" in arrays:
        return arrays["correct"].astype(np.float64)
    n, m = len(arrays["i2t_rank"]), len(arrays["t2i_rank"])
    owner = np.repeat(np.arange(n), arrays["captions"])
    caption_hits = np.bincount(owner, weights=(arrays["t2i_rank"] == 0).astype(np.float64), minlength=n)
    return (arrays["i2t_rank"] == 0) / 2 + n * caption_hits / (2 * m)


def hits(entry: dict[str, Any]) -> np.ndarray:
    """Per query, whether it was answered right at 1 (what McNemar's test pairs): images, then captions."""
    arrays = unpack(entry)
    if "correct" in arrays:
        return arrays["correct"]
    return np.concatenate([arrays["i2t_rank"] == 0, arrays["t2i_rank"] == 0])


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


__all__ = ["RANK_CAP", "accuracy", "check_step", "hits", "pack_correct", "pack_ranks", "scores", "unpack"]
