"""Hand-made records for board, compare and figure tests: a committed reference record of a real embedded
sequence (pins, budget and schema as on the board), with its seed, method and matrix changed on purpose."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from suite.results import items
from suite.results.records import recompute_aggregates

RESULTS = Path(__file__).resolve().parents[1] / "results"


def reference(sequence: str = "mini-mtil", method: str = "seq", pet: str = "lora") -> dict:
    path = next(RESULTS.glob(f"{sequence}__*__{pet}__{method}__s0__*.json"))
    return json.loads(path.read_text())


def make_record(base: dict, seed: int, method: str | None = None, shift: float = 0.0, matrix=None) -> dict:
    """``base`` as seed ``seed`` of ``method``: every accuracy moved by ``shift`` (clipped to [0, 1]) or set to
    ``matrix``; aggregates recomputed so the record is valid."""
    rec = copy.deepcopy(base)
    rec["seed"] = seed
    if method is not None:
        rec["method"]["name"] = method
    a = np.asarray(rec["matrix"] if matrix is None else matrix, float)
    rows = np.clip(a + shift, 0, 1).tolist()
    for step, row in zip(rec["steps"], rows):
        step["accuracy"] = [_set_items(step, d, v) for d, v in enumerate(row)] if "items" in step else row
    rec["matrix"] = [step["accuracy"] for step in rec["steps"]]
    rec["aggregates"] = recompute_aggregates(rec)
    rec["run_id"] = f"{rec['sequence']['name']}__{rec['method']['name']}__s{seed}__{shift:+.3f}"
    return rec


def _set_items(step: dict, task: int, value: float) -> float:
    """Make the step's item outcomes of ``task`` answer ``value`` (to the nearest item) and return the accuracy
    they now give, so a changed record stays consistent with its items."""
    entry = step["items"]["tasks"][task]
    arrays = items.unpack(entry)
    if "correct" in arrays:
        n = len(arrays["correct"])
        step["items"]["tasks"][task] = items.pack_correct(np.arange(n) < int(round(value * n)))
    else:
        n, m = len(arrays["i2t"]), len(arrays["t2i"])
        step["items"]["tasks"][task] = items.pack_hits(np.arange(n) < int(round(value * n)),
                                                       np.arange(m) < int(round(value * m)), arrays["captions"])
    return items.accuracy(step["items"]["tasks"][task])


def write(folder: Path, recs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(recs):
        (folder / f"r{i:03d}.json").write_text(json.dumps(r))
    return folder
