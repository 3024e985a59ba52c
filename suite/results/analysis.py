"""Records grouped into configurations, with uncertainty: mean ± 95 % CI over seeds, the interval that also
resamples test items, differences paired by seed (and item), and per-step curves. Pure numpy/scipy, shared by
``clsuite compare``, ``clsuite plot`` and the leaderboard.

A *group* is every seed of one (sequence, method, PET, options) — :func:`suite.results.records.group_key`. Two
intervals are given: the Student-t interval of the mean over seeds (``ci``; with one seed there is none), and,
where the records keep their item outcomes, the interval over seeds and test items (``items``: Student-t over
seeds combined with a bootstrap over items, :mod:`suite.results.uncertainty`), which is the one that decides
ties. A difference of two groups is computed on the seeds they share, so seed-to-seed variation common to both
cancels, and on the same item draws.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from suite.errors import ConfigError
from suite.results.metrics import COMPARE_METRICS, METRICS, metric
from suite.results.records import group_key, has_items, metric_value, recompute_aggregates, step_summary
from suite.results.uncertainty import ITEM_METRICS, ItemTable, Resampled, final_hits, json_key, mcnemar, paired_interval


@dataclass(frozen=True)
class Stat:
    """Mean over ``n`` seeds, the half-width of its 95 % interval over seeds (``None`` for one seed), and the
    95 % interval over seeds and test items (``None`` where items were not kept). ``low``/``high`` are the bounds
    that decide ties: the item interval where there is one."""

    mean: float
    ci: float | None
    n: int
    items: tuple[float, float] | None = None

    @property
    def low(self) -> float:
        return self.items[0] if self.items else self.mean - (self.ci or 0.0)

    @property
    def high(self) -> float:
        return self.items[1] if self.items else self.mean + (self.ci or 0.0)

    def overlaps(self, other: "Stat") -> bool:
        return self.low <= other.high and other.low <= self.high


def t_half_width(values: Iterable[float]) -> float | None:
    """Half-width of the 95 % Student-t interval of the mean; ``None`` with fewer than two values."""
    from scipy import stats  # heavy: only when an interval is computed

    v = np.asarray(list(values), dtype=float)
    if len(v) < 2:
        return None
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def stat(values: Iterable[float | None]) -> Stat | None:
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return Stat(float(np.mean(v)), t_half_width(v), len(v))


@dataclass
class Group:
    """Every seed of one configuration; ``label`` is unique among the groups it was built with."""

    key: tuple[str, str, str, str]
    records: list[dict] = field(default_factory=list)
    label: str = ""
    _aggregates: dict[int, dict] = field(default_factory=dict, repr=False)

    @property
    def sequence(self) -> str:
        return self.key[0]

    @property
    def method(self) -> str:
        return self.key[1]

    @property
    def pet(self) -> str:
        return self.key[2]

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    _resampled: Any = field(default=None, repr=False)

    def resampled(self) -> Resampled | None:
        """The group's items resampled once (``None`` where a record lacks them)."""
        if self._resampled is None:
            table = ItemTable.of(self.records)
            self._resampled = Resampled(table) if table is not None else False
        return self._resampled or None

    def _agg(self, rec: dict) -> dict:
        if id(rec) not in self._aggregates:
            self._aggregates[id(rec)] = recompute_aggregates(rec)
        return self._aggregates[id(rec)]

    def values(self, name: str) -> dict[int, float | None]:
        """Seed -> the metric's value (aggregates recomputed from each matrix)."""
        return {r["seed"]: metric_value(r, name, self._agg(r)) for r in self.records}

    def stat(self, name: str) -> Stat | None:
        st = stat(self.values(name).values())
        if st is not None and name == "pope_auroc" and (hw := self.auroc_half_width()) is not None:
            hw = max(hw, st.ci or 0.0)  # the probe's own test-set noise, or the seeds' where larger
            return Stat(st.mean, st.ci, st.n, (st.mean - hw, st.mean + hw))
        if st is None or name not in ITEM_METRICS:
            return st
        res = self.resampled()
        interval = res.interval(name) if res is not None else None
        return Stat(st.mean, st.ci, st.n, interval) if interval else st

    def auroc_half_width(self) -> float | None:
        """The mean over seeds of each record's POPE AUROC interval half-width (test-set noise of the probe)."""
        widths = []
        for r in self.records:
            pope = (r["steps"][-1].get("hallucination", {}) if r["steps"] else {}).get("pope", {})
            if pope.get("auroc_interval"):
                widths.append((pope["auroc_interval"][1] - pope["auroc_interval"][0]) / 2)
        return float(np.mean(widths)) if widths else None


def group_records(records: Iterable[dict]) -> list[Group]:
    """Group records by configuration, seeds sorted, groups ordered by (sequence, method, PET)."""
    groups: dict[tuple, Group] = {}
    for r in records:
        groups.setdefault(group_key(r), Group(group_key(r))).records.append(r)
    out = sorted(groups.values(), key=lambda g: g.key)
    for g in out:
        g.records.sort(key=lambda r: r["seed"])
    relabel(out)
    return out


def relabel(groups: list[Group]) -> None:
    """``method/pet``; the sequence is prefixed when several sequences mix; where several groups share a label,
    each gets the options that tell them apart, e.g. ``pegp/lora [threshold=0.8]``."""
    several = len({g.sequence for g in groups}) > 1
    base = {id(g): (f"{g.sequence}: " if several else "") + f"{g.method}/{g.pet}" for g in groups}
    by_label: dict[str, list[Group]] = {}
    for g in groups:
        by_label.setdefault(base[id(g)], []).append(g)
    for label, same in by_label.items():
        for g in same:
            g.label = label if len(same) == 1 else f"{label} [{options_tag(g.records[0], [o.records[0] for o in same])}]"


def sets_options(rec: dict) -> bool:
    """Whether the run set method or PET options (an option sweep's entry, beside the one on the defaults)."""
    config = rec.get("config") or {}
    return bool(config.get("method_options") or config.get("pet_options"))


def _options(rec: dict) -> dict:
    return {**rec["pet"]["options"], **rec["method"]["options"]}


def options_tag(rec: dict, others: list[dict]) -> str:
    """The options of ``rec`` whose values differ among ``others`` (``default`` when none of its own differ)."""
    mine = _options(rec)
    keys = sorted({k for o in others for k, v in _options(o).items() if any(_options(x).get(k) != v for x in others)})
    show = lambda v: v if isinstance(v, str) else json.dumps(v, sort_keys=True)  # noqa: E731
    text = ",".join(f"{k}={show(mine[k])}" for k in keys if k in mine)
    return (text if len(text) <= 60 else text[:57] + "...") or "default"


def find_group(groups: list[Group], label: str) -> Group:
    """A group by its exact label, or by ``method/pet`` / ``method`` when that names exactly one."""
    exact = [g for g in groups if g.label == label]
    if exact:
        return exact[0]
    loose = [g for g in groups if f"{g.method}/{g.pet}" == label or g.method == label]
    if len(loose) == 1:
        return loose[0]
    known = ", ".join(g.label for g in groups)
    what = "matches several groups" if loose else "matches no group"
    raise ConfigError(f"{label!r} {what}; groups: {known}")


@dataclass(frozen=True)
class Difference:
    """``a − b`` of one metric over the seeds both groups have: the interval over seeds (``ci``) and the paired
    interval over seeds and test items (``items``). ``tie`` when the deciding interval contains 0 — the item
    interval where there is one; for POPE AUROC also when the difference is inside the probe's own interval
    (``noise``, the half-width of a record's AUROC bootstrap interval)."""

    a: str
    b: str
    metric: str
    mean: float
    ci: float | None
    seeds: tuple[int, ...]
    items: tuple[float, float] | None = None
    noise: float | None = None

    @property
    def tie(self) -> bool | None:
        if self.noise is not None and abs(self.mean) <= self.noise:
            return True
        if self.items is not None:
            return self.items[0] <= 0.0 <= self.items[1]
        if self.ci is None:
            return None
        return self.mean - self.ci <= 0.0 <= self.mean + self.ci

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metric": self.metric, "mean": self.mean, "ci": self.ci,
                "items": list(self.items) if self.items else None, "noise": self.noise,
                "n": len(self.seeds), "seeds": list(self.seeds), "tie": self.tie}


def paired_difference(a: Group, b: Group, name: str) -> Difference | None:
    """The per-seed difference ``a − b`` on the shared seeds, with its intervals; ``None`` if no seed is shared."""
    va, vb = a.values(name), b.values(name)
    seeds = tuple(sorted(s for s in va if s in vb and va[s] is not None and vb[s] is not None))
    if not seeds:
        return None
    d = [va[s] - vb[s] for s in seeds]
    items, noise = None, None
    if name in ITEM_METRICS:
        ra, rb = a.resampled(), b.resampled()
        items = paired_interval(ra, rb, name) if ra is not None and rb is not None else None
    elif name == "pope_auroc":
        widths = [w for w in (a.auroc_half_width(), b.auroc_half_width()) if w is not None]
        noise = max(widths) if widths else None
    return Difference(a.label, b.label, name, float(np.mean(d)), t_half_width(d), seeds, items, noise)


def item_tests(a: Group, b: Group) -> list[dict[str, Any]]:
    """Per shared seed, McNemar's exact test on the final step's test outcomes of ``a`` against ``b``."""
    out = []
    by_seed = {r["seed"]: r for r in b.records}
    for r in a.records:
        other = by_seed.get(r["seed"])
        if other is None or not (has_items(r) and has_items(other)) or json_key(r) != json_key(other):
            continue
        out.append({"seed": r["seed"], **mcnemar(final_hits(r), final_hits(other))})
    return out


# ------------------------------------------------------------------------------------------- curves
def curve(rec: dict, name: str = "avg") -> list[float | None]:
    """A value per step ``x = 0..T`` (0 = the pretrained model) of one record.

    ``avg``: mean accuracy over the tasks trained so far (undefined at step 0); ``first-task``: accuracy on
    task 1; ``task:<name>`` / ``control:<name>``: accuracy on that task or control set;
    ``retention``: mean zero-shot retention over control sets; ``hallucination``: the hallucination summary.
    """
    zs, rows, tasks = rec["zero_shot"], rec["matrix"], rec["sequence"]["tasks"]
    if name == "avg":
        return [None] + [float(np.mean(row[: t + 1])) for t, row in enumerate(rows)]
    if name == "first-task" or name.startswith("task:"):
        task = tasks[0] if name == "first-task" else name.split(":", 1)[1]
        if task not in tasks:
            raise ConfigError(f"{name}: no task {task!r} in {rec['sequence']['name']} (tasks: {', '.join(tasks)})")
        d = tasks.index(task)
        return [zs["tasks"][d]] + [row[d] for row in rows]
    if name.startswith("control:"):
        c = name.split(":", 1)[1]
        if c not in zs.get("controls", {}):
            known = ", ".join(zs.get("controls", {})) or "none"
            raise ConfigError(f"{name}: no control set {c!r} in {rec['sequence']['name']} (controls: {known})")
        return [zs["controls"][c]] + [s["control_accuracy"].get(c) for s in rec["steps"]]
    if name in ("retention", "hallucination"):
        key = "zero_shot_retention" if name == "retention" else "hallucination_fpr"
        first = 1.0 if name == "retention" else step_summary(rec.get("zero_shot_step", {})).get(key)
        return [first] + [step_summary(s).get(key) for s in rec["steps"]]
    raise ConfigError(f"unknown curve metric {name!r}; use avg, first-task, task:<name> or control:<name>")


def curve_stats(group: Group, name: str) -> list[Stat | None]:
    """Per step, the mean and interval of :func:`curve` over the group's seeds."""
    curves = [curve(r, name) for r in group.records]
    steps = max(len(c) for c in curves)
    return [stat(c[x] if x < len(c) else None for c in curves) for x in range(steps)]


# ------------------------------------------------------------------------------------------ compare
def compare(records: list[dict], metrics_: tuple[str, ...] = COMPARE_METRICS,
            pairs: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """Mean ± CI per group of every metric, and the paired differences asked for (``a − b``)."""
    for name in metrics_:
        metric(name)
    groups = group_records(records)
    rows = [{"group": g.label, "sequence": g.sequence, "method": g.method, "pet": g.pet, "seeds": g.seeds,
             **{name: g.stat(name) for name in metrics_}} for g in groups]
    diffs, tests = [], []
    for a_label, b_label in pairs:
        a, b = find_group(groups, a_label), find_group(groups, b_label)
        for name in metrics_:
            d = paired_difference(a, b, name)
            if d is not None:
                diffs.append(d)
        tests.append({"a": a.label, "b": b.label, "seeds": item_tests(a, b)})
    return {"metrics": list(metrics_), "rows": rows, "differences": diffs, "item_tests": tests}


def format_stat(name: str, s: Stat | None, signed: bool = False) -> str:
    """A group's value of one metric: mean ± CI over seeds and the interval over seeds and items; ``n/a`` for none."""
    if s is None:
        return "n/a"
    return format_value(name, s.mean, s.ci, signed) + format_interval(name, s.items)


def format_interval(name: str, interval: tuple[float, float] | None) -> str:
    """`` [low, high]`` — the interval over seeds and test items — in the metric's unit; empty without one."""
    if interval is None:
        return ""
    lo, hi = (format_value(name, v).split(" ")[0] for v in interval)
    return f" [{lo}, {hi}]"


def format_value(name: str, mean: float, ci: float | None = None, signed: bool = False) -> str:
    """A metric's value in its unit (fractions as percent), ``± ci`` only where there is an interval; no -0.0."""
    unit = METRICS[name].unit if name in METRICS else "fraction"
    scale, digits, suffix = {"fraction": (100.0, 1, ""), "bytes": (1 / 1024, 1, " KiB"),
                             "seconds": (1.0, 1, " s"), "count": (1.0, 0, "")}[unit]
    m = mean * scale
    if round(m, digits) == 0:
        m = 0.0
    text = f"{m:+,.{digits}f}" if signed else f"{m:,.{digits}f}"
    if ci is not None:
        text += f" ± {ci * scale:,.{digits}f}"
    return text + suffix


def format_compare(result: dict[str, Any], fmt: str = "text") -> str:
    """The compare result as a terminal table, Markdown, CSV or JSON."""
    names = result["metrics"]
    if fmt == "json":
        def enc(s: Stat | None):
            return None if s is None else {"mean": s.mean, "ci": s.ci, "n": s.n,
                                           "items": list(s.items) if s.items else None}
        return json.dumps({"metrics": names,
                           "rows": [{**{k: v for k, v in r.items() if k not in names}, **{n: enc(r[n]) for n in names}}
                                    for r in result["rows"]],
                           "differences": [d.as_dict() for d in result["differences"]],
                           "item_tests": result.get("item_tests", [])}, indent=1)
    head = ["group", "n"] + [METRICS[n].label + ("" if METRICS[n].higher_is_better else " ↓") for n in names]
    body = [[r["group"], str(len(r["seeds"]))] + [format_stat(n, r[n]) for n in names] for r in result["rows"]]
    diff_head = ["a − b", "metric", "difference", "seeds", "verdict"]
    diff_body = [[f"{d.a} − {d.b}", METRICS[d.metric].label,
                  format_value(d.metric, d.mean, d.ci, signed=True) + format_interval(d.metric, d.items),
                  str(len(d.seeds)), _verdict(d)] for d in result["differences"]]
    if fmt == "csv":

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["group", "sequence", "method", "pet", "seeds"]
                   + [c for n in names for c in (n, f"{n}_ci", f"{n}_items_low", f"{n}_items_high")])
        for r in result["rows"]:
            w.writerow([r["group"], r["sequence"], r["method"], r["pet"], " ".join(map(str, r["seeds"]))]
                       + [c for n in names for c in ((r[n].mean, r[n].ci, *(r[n].items or ("", ""))) if r[n]
                                                     else ("", "", "", ""))])
        if result["differences"]:
            w.writerow([])
            w.writerow(["a", "b", "metric", "difference", "ci", "items_low", "items_high", "seeds", "tie"])
            for d in result["differences"]:
                w.writerow([d.a, d.b, d.metric, d.mean, d.ci, *(d.items or ("", "")), " ".join(map(str, d.seeds)),
                            d.tie])
        return buf.getvalue()
    if fmt == "md":
        out = markdown_table(head, body)
        if diff_body:
            out += [""] + markdown_table(diff_head, diff_body)
        out += _item_test_lines(result)
        return "\n".join(out)
    if fmt != "text":
        raise ConfigError(f"unknown format {fmt!r}; use text, md, csv or json")
    out = _columns(head, body)
    if diff_body:
        out += ["", "paired by seed (a − b, ± 95 % CI over the shared seeds; [ ] the paired 95 % interval over "
                "seeds and test items, which decides the verdict):"] + _columns(diff_head, diff_body)
    out += _item_test_lines(result)
    out.append("(percent points for accuracies and rates; ± 95 % CI over seeds; [ ] 95 % interval over seeds and "
               "test items: t over seeds ⊕ bootstrap over items; ↓ lower is better)")
    return "\n".join(out)


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (cells' ``|`` escaped)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def _item_test_lines(result: dict[str, Any]) -> list[str]:
    """McNemar's test per seed on the final step's test items, for each pair."""
    lines = []
    for t in result.get("item_tests", []):
        if not t["seeds"]:
            lines += ["", f"McNemar {t['a']} vs {t['b']}: no shared seed keeps item outcomes"]
            continue
        lines += ["", f"McNemar per seed, final step, every task's test items ({t['a']} vs {t['b']}; "
                  "items only a / only b answered right, exact two-sided p):"]
        lines += [f"  seed {x['seed']}: {x['a_only']} / {x['b_only']}, p = {x['p']:.3g}" for x in t["seeds"]]
    return lines


def _verdict(d: Difference) -> str:
    if d.tie is None:
        return "one seed: no interval"
    if d.tie:
        if d.noise is not None and abs(d.mean) <= d.noise:
            return "tie (inside the probe's own interval)"
        return "tie (interval contains 0)"
    better = (d.mean > 0) == METRICS[d.metric].higher_is_better
    return f"{'a' if better else 'b'} better"


def _columns(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
