"""The calibration report of a sequence's training budgets, computed from records (pure: no run happens here).

Per PET: the pretrained accuracy, the seq diagonal, the plasticity gain (seq diagonal - zero-shot), seq and PEGP
forgetting, Last, each with the 95 % interval over seeds, whether the targets below hold and by how much they are
missed, and the wall time; per control set, the pretrained accuracy and the chance level. The report of each
embedded sequence is committed beside its file (``<name>.calibration.json``) and shown on its board page;
``clsuite calibrate`` (:mod:`suite.experiments.calibrate`) runs the records it is computed from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from suite.config.sequences import TaskSequence, load_sequence
from suite.errors import SuiteError
from suite.paths import read_json
from suite.results.analysis import Stat, group_records, paired_difference, sets_options, stat
from suite.results.records import write_json_atomic


class CalibrationError(SuiteError):
    """Records missing or not matching the calibration; one line."""


# The calibration targets (issue 35), in accuracy fractions; stated once. Per PET form; a sequence meets the first
# three when at least ``FORMS_NEEDED`` forms (LoRA and adapter among them for the first two) do, ``last_ci`` when
# every form does; ``pairs`` is the board's: the share of every pair of the sequence's entries whose Last differs
# resolvedly.
TARGETS = {
    "plasticity": ("≥", 0.10, "seq plasticity gain (mean diagonal minus zero-shot)"),
    "forgetting": ("≥", 0.08, "seq average forgetting"),
    "resolved": ("=", 1.0, "PEGP − seq forgetting resolved (paired 95 % interval over seeds and items excludes 0)"),
    "last_ci": ("≤", 0.02, "half-width of the 95 % interval of seq Last over seeds and test items"),
    "pairs": ("≥", 0.85, "share of the entry pairs whose Last differs resolvedly (paired 95 % interval over seeds "
                         "and items excludes 0)"),
}
FORMS_NEEDED = {"plasticity": 5, "forgetting": 5, "resolved": 5}
FORMS_REQUIRED = ("lora", "adapter")
METHODS = ("zeroshot", "seq", "pegp")


def _pick(records: list[dict], seq: TaskSequence, method: str, pet: str | None, seeds: list[int]) -> list[dict]:
    """The budget records of one (method, PET): default options, the sequence's training, given seeds."""
    want = seq.default_training(pet)
    out = {}
    for r in records:
        if (r["sequence"]["name"] != seq.name or r["method"]["name"] != method or r["pet"]["kind"] != pet
                or r["seed"] not in seeds or r["status"] != "complete" or r["sequence"]["version"] != seq.version
                or sets_options(r)
                or r["config"].get("max_eval") is not None or any(r["training"].get(k) != v for k, v in want.items())):
            continue
        out[r["seed"]] = r
    missing = sorted(set(seeds) - set(out))
    if missing:
        raise CalibrationError(f"{seq.name}: no budget record of {method}/{pet or 'none'} for seed(s) {missing}")
    return [out[s] for s in sorted(out)]


def _s(x: Stat | None) -> dict[str, Any] | None:
    return None if x is None else {"mean": x.mean, "ci": x.ci, "n": x.n, "items": list(x.items) if x.items else None}


def half_width(x: Stat | None) -> float | None:
    """The half-width of the interval that decides: over seeds and items where there is one, else over seeds."""
    if x is None:
        return None
    return (x.items[1] - x.items[0]) / 2 if x.items else x.ci


def _target(name: str, value: float | None) -> dict[str, Any]:
    op, goal, what = TARGETS[name]
    if value is None:
        return {"target": f"{op} {goal}", "what": what, "met": False, "miss": None, "reason": "not measurable"}
    met = value >= goal if op in ("≥", "=") else value <= goal
    return {"target": f"{op} {goal}", "what": what, "met": bool(met), "miss": None if met else abs(goal - value)}


def pet_report(seq: TaskSequence, pet: str, records: list[dict], seeds: list[int]) -> dict[str, Any]:
    """One PET's calibration numbers from its seq and PEGP records (zero-shot: each record's own pretrained row)."""
    seq_recs = _pick(records, seq, "seq", pet, seeds)
    pegp_recs = _pick(records, seq, "pegp", pet, seeds)
    t = len(seq_recs[0]["matrix"])
    zs = [[r["zero_shot"]["tasks"][d] for r in seq_recs] for d in range(t)]
    diag = [[r["matrix"][d][d] for r in seq_recs] for d in range(t)]
    gain = [[a - z for a, z in zip(diag[d], zs[d])] for d in range(t)]
    seq_g, pegp_g = group_records(seq_recs)[0], group_records(pegp_recs)[0]
    plasticity, forgetting = seq_g.stat("plasticity"), seq_g.stat("forgetting")
    last = seq_g.stat("last")
    diff = paired_difference(pegp_g, seq_g, "forgetting")
    resolved = None if diff is None or diff.tie is None else float(not diff.tie)
    return {
        "pet": pet, "seeds": [r["seed"] for r in seq_recs],
        "training": seq_recs[0]["training"],
        "seq_train_accuracy": [_s(stat(r["steps"][d].get("train_accuracy") for r in seq_recs)) for d in range(t)],
        "zero_shot": [_s(stat(v)) for v in zs],
        "seq_diagonal": [_s(stat(v)) for v in diag],
        "plasticity_per_task": [_s(stat(v)) for v in gain],
        "plasticity": _s(plasticity),
        "seq_forgetting": _s(forgetting),
        "pegp_forgetting": _s(pegp_g.stat("forgetting")),
        "seq_last": _s(last),
        "pegp_last": _s(pegp_g.stat("last")),
        "pegp_plasticity": _s(pegp_g.stat("plasticity")),
        "pegp_minus_seq_forgetting": None if diff is None else diff.as_dict(),
        "wall_time_s": {m: sum(r["efficiency"].get("wall_time_s", 0.0) for r in rs)
                        for m, rs in (("seq", seq_recs), ("pegp", pegp_recs))},
        "targets": {
            "plasticity": _target("plasticity", plasticity.mean if plasticity else None),
            "forgetting": _target("forgetting", forgetting.mean if forgetting else None),
            "resolved": _target("resolved", resolved),
            "last_ci": _target("last_ci", half_width(last)),
        },
    }


def sequence_targets(pets: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the sequence meets each target: enough PET forms (LoRA and adapter among them where required)."""
    out = {}
    for name, needed in FORMS_NEEDED.items():
        met = [p["pet"] for p in pets if p["targets"][name]["met"]]
        required = [f for f in FORMS_REQUIRED if name != "resolved" and f in {p["pet"] for p in pets}]
        ok = len(met) >= needed and all(f in met for f in required)
        out[name] = {"forms_met": met, "needed": needed, "required": required, "met": ok,
                     "miss": None if ok else max(0, needed - len(met))}
    last_met = [p["pet"] for p in pets if p["targets"]["last_ci"]["met"]]
    out["last_ci"] = {"forms_met": last_met, "needed": len(pets), "required": [], "met": len(last_met) == len(pets),
                      "miss": len(pets) - len(last_met) or None}
    return out


def entry_pairs(seq: TaskSequence, records: list[dict], seeds: list[int], metric: str = "last") -> dict[str, Any]:
    """How well the sequence's entries are told apart: every configuration with a complete record of the current
    version for each of ``seeds`` is an entry, and a pair is resolved when its paired interval on ``metric`` (over
    seeds and test items) excludes 0. The share is the board's signal (target ``pairs``)."""
    mine = [r for r in records if r["sequence"]["name"] == seq.name and r["sequence"]["version"] == seq.version
            and r["status"] == "complete" and r["seed"] in seeds]
    entries = [g for g in group_records(mine) if set(g.seeds) >= set(seeds)]
    diffs = [paired_difference(a, b, metric) for i, a in enumerate(entries) for b in entries[i + 1:]]
    decided = [d.tie for d in diffs if d is not None and d.tie is not None]
    share = sum(not t for t in decided) / len(decided) if decided else None
    return {"metric": metric, "entries": [g.label for g in entries], "pairs": len(decided),
            "resolved": sum(not t for t in decided), "share": share, "target": _target("pairs", share)}


PLAN_SEEDS = 5  # the board plan's seeds, for the cost estimate of a candidate


def grid_report(sequence: str, pets: list[str], seeds: list[int], candidates: list[dict[str, Any]],
                records: list[dict]) -> dict[str, Any]:
    """Per PET and candidate budget (seq only): plasticity gain, forgetting, Last, train − test accuracy of the
    task just trained (large: memorising), the mean record wall time of a run, and the estimate of the plan's
    seq + PEGP runs of that PET at :data:`PLAN_SEEDS` seeds on two cores (PEGP costed as seq)."""
    seq = load_sequence(sequence)
    rows = []
    for pet in pets:
        for cand in candidates:
            want = {**seq.default_training(pet), **cand}
            recs = [r for r in records if r["sequence"]["name"] == seq.name and r["sequence"]["version"] == seq.version
                    and r["method"]["name"] == "seq" and r["pet"]["kind"] == pet and r["seed"] in seeds
                    and r["status"] == "complete" and all(r["training"].get(k) == v for k, v in want.items())]
            if not recs:
                raise CalibrationError(f"{seq.name}: no seq/{pet} record of candidate {cand}")
            g = group_records(recs)[0]
            gaps = [float(np.mean([s["train_accuracy"] - r["matrix"][i][i] for i, s in enumerate(r["steps"])]))
                    for r in recs if all(s.get("train_accuracy") is not None for s in r["steps"])]
            wall = float(np.mean([r["efficiency"]["wall_time_s"] for r in recs]))
            rows.append({"pet": pet, "candidate": cand, "training": recs[0]["training"], "seeds": g.seeds,
                         "plasticity": _s(g.stat("plasticity")), "forgetting": _s(g.stat("forgetting")),
                         "last": _s(g.stat("last")), "train_minus_test": _s(stat(gaps)),
                         "run_wall_time_s": wall, "plan_estimate_s": wall * 2 * PLAN_SEEDS / 2})
    return {"sequence": seq.name, "version": seq.version, "seeds": list(seeds), "candidates": candidates, "rows": rows}


def format_grid(rep: dict[str, Any]) -> str:
    """The grid report as a plain-text table (accuracy points)."""
    head = (f"{'PET':13s} {'candidate':28s} {'gain':>7s} {'forget':>7s} {'Last':>7s} {'train−test':>10s} "
            f"{'run s':>6s} {'plan s':>7s}")
    lines = [f"grid of {rep['sequence']} v{rep['version']}, seq only, seeds {rep['seeds']} (accuracy points; "
             "plan s: seq + PEGP of the PET at 5 seeds on 2 cores)", "", head]
    for r in rep["rows"]:
        cand = ",".join(f"{k}={v:g}" for k, v in r["candidate"].items())
        cell = lambda x: "n/a" if x is None else f"{100 * x['mean']:.1f}"  # noqa: E731
        lines.append(f"{r['pet']:13s} {cand:28s} {cell(r['plasticity']):>7s} {cell(r['forgetting']):>7s} "
                     f"{cell(r['last']):>7s} {cell(r['train_minus_test']):>10s} {r['run_wall_time_s']:6.1f} "
                     f"{r['plan_estimate_s']:7.0f}")
    return "\n".join(lines)


def control_report(seq: TaskSequence, records: list[dict], seeds: list[int]) -> list[dict[str, Any]]:
    """Each control set: what it tests, the pretrained accuracy and the chance level of its question."""
    zs = _pick(records, seq, "zeroshot", None, seeds)[0]
    return [{"name": c.name, "tests": c.tests, "chance": c.chance(),
             "pretrained": zs["zero_shot"]["controls"].get(c.name)} for c in seq.control_sets]


def calibration_report(sequence: str, pets: list[str], seeds: list[int], records: list[dict],
                       wall_s: float | None = None) -> dict[str, Any]:
    seq = load_sequence(sequence)
    return {"sequence": seq.name, "version": seq.version, "seeds": list(seeds),
            "targets": {k: {"op": op, "value": v, "what": w} for k, (op, v, w) in TARGETS.items()},
            "controls": control_report(seq, records, seeds),
            "pets": (reports := [pet_report(seq, p, records, seeds) for p in pets]),
            "sequence_targets": sequence_targets(reports),
            "entry_pairs": entry_pairs(seq, records, seeds),
            "wall_time_s": wall_s}


def _pm(x: dict | None, scale: float = 100.0) -> str:
    if x is None:
        return "n/a"
    ci = "" if x["ci"] is None else f" ± {scale * x['ci']:.1f}"
    items = x.get("items")
    interval = "" if not items else f" [{scale * items[0]:.1f}, {scale * items[1]:.1f}]"
    return f"{scale * x['mean']:.1f}{ci}{interval}"


def _mark(t: dict) -> str:
    return "✓" if t["met"] else ("✗" if t["miss"] is None else f"✗ −{100 * t['miss']:.1f}")


def _mean_of(xs: list[dict | None]) -> float | None:
    vals = [x["mean"] for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def report_rows(rep: dict[str, Any]) -> list[dict[str, str]]:
    """One row of formatted cells per PET (accuracy points; ``✗ −3.1``: target missed by 3.1 points)."""
    rows = []
    for p in rep["pets"]:
        tg = p["targets"]
        tr = p["training"]
        train = _mean_of(p.get("seq_train_accuracy", []))
        diag = _mean_of(p["seq_diagonal"])
        diff = p.get("pegp_minus_seq_forgetting")
        rows.append({
            "pet": p["pet"], "budget": f"{tr.get('iterations')} it, lr {tr.get('lr'):g}",
            "zero_shot": f"{100 * _mean_of(p['zero_shot']):.1f}", "diagonal": f"{100 * diag:.1f}",
            "train_gap": "n/a" if train is None else f"{100 * (train - diag):+.1f}",
            "plasticity": _pm(p["plasticity"]), "plasticity_ok": _mark(tg["plasticity"]),
            "seq_forgetting": _pm(p["seq_forgetting"]), "forgetting_ok": _mark(tg["forgetting"]),
            "pegp_forgetting": _pm(p["pegp_forgetting"]),
            "delta": "n/a" if diff is None else f"{100 * diff['mean']:+.1f}" + (
                "" if not diff.get("items") else f" [{100 * diff['items'][0]:+.1f}, {100 * diff['items'][1]:+.1f}]"),
            "resolved_ok": _mark(tg["resolved"]) if "resolved" in tg else "n/a",
            "seq_last": _pm(p["seq_last"]), "last_ok": _mark(tg["last_ci"]), "pegp_last": _pm(p["pegp_last"]),
            "time": f"{sum(p['wall_time_s'].values()):.0f}"})
    return rows


def control_rows(rep: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": c["name"], "tests": " ".join(c["tests"].split()),
             "pretrained": "n/a" if c["pretrained"] is None else f"{100 * c['pretrained']:.1f}",
             "chance": "n/a" if c["chance"] is None else f"{100 * c['chance']:.1f}"} for c in rep["controls"]]


def targets_line(rep: dict[str, Any]) -> str:
    return "; ".join(v["what"] if v["op"] == "=" else f"{v['what']} {v['op']} {100 * v['value']:g}"
                     for v in rep["targets"].values())


def pairs_line(rep: dict[str, Any]) -> str | None:
    """The board signal in words: how many pairs of the sequence's entries are resolved, against the target."""
    ep = rep.get("entry_pairs")
    if not ep:
        return None
    got = "n/a" if ep["share"] is None else f"{100 * ep['share']:.0f} %"
    return (f"{'met' if ep['target']['met'] else 'missed'}: {ep['resolved']} of {ep['pairs']} pairs of "
            f"{len(ep['entries'])} entries resolved on {ep['metric']} = {got} (needed {100 * TARGETS['pairs'][1]:.0f} %)")


def format_report(rep: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    cols = [("pet", "PET", 13), ("budget", "budget", 17), ("zero_shot", "zero-shot", 9), ("diagonal", "seq diag", 8),
            ("train_gap", "train−test", 10), ("plasticity", "plasticity", 24), ("plasticity_ok", "", 7),
            ("seq_forgetting", "seq forget", 24), ("forgetting_ok", "", 7), ("pegp_forgetting", "PEGP forget", 24),
            ("delta", "PEGP−seq forget", 22), ("resolved_ok", "", 3), ("seq_last", "seq Last", 24),
            ("last_ok", "", 7), ("pegp_last", "PEGP Last", 24), ("time", "time s", 6)]
    lines = [f"calibration of {rep['sequence']} v{rep['version']}, seeds {rep['seeds']} (accuracy points; ± the 95 % "
             f"interval over seeds, [ ] over seeds and test items; ✗ −x: target missed by x)", "",
             " ".join(f"{h:<{w}s}" for _, h, w in cols)]
    lines += [" ".join(f"{r[k]:<{w}s}" for k, _, w in cols) for r in report_rows(rep)]
    lines += ["", "targets: " + targets_line(rep)]
    for name, t in rep.get("sequence_targets", {}).items():
        lines.append(f"  {name}: {'met' if t['met'] else 'missed'}: {len(t['forms_met'])} form(s) meet it "
                     f"({', '.join(t['forms_met']) or 'none'}; needed {t['needed']}"
                     + (f", including {', '.join(t['required'])}" if t["required"] else "") + ")")
    if pairs_line(rep):
        lines.append(f"  pairs: {pairs_line(rep)}")
    lines += ["", f"{'control':20s} {'pretrained':>10s} {'chance':>7s}  tests"]
    lines += [f"{c['name']:20s} {c['pretrained']:>10s} {c['chance']:>7s}  {c['tests']}" for c in control_rows(rep)]
    if rep.get("wall_time_s") is not None:
        lines.append(f"\nwall time {rep['wall_time_s']:.0f} s")
    return "\n".join(lines)


def committed_report_path(sequence: str) -> Path:
    """Where a sequence's calibration report is kept: beside its file, ``<name>.calibration.json``."""
    seq = load_sequence(sequence)
    return Path(seq.path).with_name(f"{Path(seq.path).stem}.calibration.json")


def load_committed_report(sequence: str) -> dict[str, Any] | None:
    """The committed report of ``sequence``, or ``None`` when there is none or it cannot be read."""
    try:
        path = committed_report_path(sequence)
        return read_json(path, "calibration report") if path.is_file() else None
    except SuiteError:
        return None


def write_report(rep: dict[str, Any], path: str | Path) -> Path:
    return write_json_atomic(path, rep)


__all__ = ["CalibrationError", "METHODS", "TARGETS", "calibration_report", "committed_report_path", "control_rows",
           "format_grid", "format_report", "grid_report", "load_committed_report", "report_rows", "targets_line", "write_report"]
