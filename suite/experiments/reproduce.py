"""Re-run a record's configuration and say whether it reproduces (``clsuite reproduce``); a reproduced record's
digest goes into the maintainers' verification file, the board's only source of the *reproduced* tier."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from suite.config.run import RunIdentity
from suite.config.sequences import SequenceError, load_sequence
from suite.engine.runner import RunConfig, Runner
from suite.leaderboard.submit import add_verification
from suite.results.records import load_record, record_differences, strip_timings

# What "reproduced" means (docs/how-to/reproduce.md): on the machine that wrote a record, a re-run is
# bit-identical (CPU, fixed seed); on another CPU or a GPU, floating-point reassociation can change whole test
# answers over a run's steps, so a re-run reproduces a record when every accuracy-matrix entry and every
# aggregate is within this many accuracy points (absolute; 0.01 = one point).
REPRODUCE_TOLERANCE = 0.01


def reproduce(record_path: str | Path, tolerance: float = REPRODUCE_TOLERANCE, out_dir: str | Path | None = None,
              verified_file: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Re-run a record's configuration and compare its accuracy matrix and aggregates within ``tolerance``
    (absolute, on accuracies). When they agree, the record's digest is added to the maintainers' verification
    file (default ``leaderboards/verified.yaml``), the board's only source of the ``reproduced`` tier; the record
    itself is not modified. ``bit_identical`` says whether the whole record (timings aside) came out the same.

    The re-run computes with ``threads`` CPU threads, else with the record's own (``environment.threads``), else
    torch's default: on one machine a run is bit-identical at the thread count it was made with, not at another
    (a threshold-routed method can flip whole answers)."""
    rec = load_record(record_path)
    tmp = Path(out_dir or Path(record_path).parent / ".reproduce")
    recorded = dict(rec.get("config") or {})
    identity = RunIdentity.of_record(rec)
    sequence = identity.sequence
    if recorded.get("sequence"):  # a sequence given as a file: re-run that file if it still holds this sequence
        try:
            if load_sequence(recorded["sequence"]).name == sequence:
                sequence = recorded["sequence"]
        except SequenceError:
            pass
    threads = threads or (rec.get("environment") or {}).get("threads")
    recorded.update(sequence=sequence, model=identity.model, pet=identity.pet, pet_options=dict(identity.pet_options),
                    method=identity.method, method_options=dict(identity.method_options), seed=identity.seed,
                    training=dict(identity.training))
    cfg = RunConfig.from_dict({**recorded, "out": str(tmp), "run_dir": str(tmp / "runs"), "progress": False,
                               "command": f"clsuite reproduce {record_path}", "threads": threads}, str(record_path))
    new = Runner(cfg).run()
    diff = max(abs(a - b) for ra, rb in zip(rec["matrix"], new["matrix"]) for a, b in zip(ra, rb))
    agg = max((abs(a - new["aggregates"].get(k)) for k, a in rec["aggregates"].items()
               if a is not None and new["aggregates"].get(k) is not None), default=0.0)
    ok = diff <= tolerance and agg <= tolerance
    same = not record_differences(strip_timings(_comparable(rec)), strip_timings(_comparable(new)))
    result = {"reproduced": ok, "bit_identical": same, "max_abs_diff": diff, "max_aggregate_diff": agg,
              "tolerance": tolerance, "threads": new["environment"]["threads"]}
    if ok:
        add_verification(rec, diff, verified_file)
    return result


def _comparable(rec: dict) -> dict:
    """A record without what a re-run changes by construction (its command, config paths, run id)."""
    return {k: v for k, v in rec.items() if k not in ("config", "run_id", "command")}


__all__ = ["REPRODUCE_TOLERANCE", "reproduce"]
