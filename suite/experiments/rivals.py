"""PEGP against its rivals, from records alone: the page docs/results/rivals.md ("PEGP against its rivals").

Each rival is compared with the PEGP entry of the PET it competes on (LoRA rivals with PEGP-LoRA, VPT-NSP² with
PEGP-VPT, the prompt-pool methods with PEGP-prefix, whose prefixes they use): per sequence, each entry's mean ± 95 %
interval, then PEGP − rival per metric paired by seed and test item (:func:`~suite.results.analysis.paired_difference`,
what ``clsuite compare --pair`` prints; *tie* where the deciding interval contains 0) with the count of seeds where
McNemar's exact test on the final step's items gives p < 0.05; and one stability–plasticity figure per sequence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from suite.leaderboard.plots import save_figure, tradeoff_figure
from suite.results.analysis import (
    Group,
    format_interval,
    format_stat,
    format_value,
    group_records,
    item_tests,
    markdown_table,
    paired_difference,
    sets_options,
)
from suite.results.metrics import METRICS

# (PEGP entry, its rivals): groups are labelled method/PET ("-" where a method owns its parameters). A rival meets
# the PEGP entry of the PET form its parameters take (MoE-Adapters' experts are adapters, DIKI's are prefixes);
# RAIL trains no PET at all and meets PEGP-LoRA, the suite's reference PEGP entry.
MATCHUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pegp/lora", ("inflora/lora", "olora/lora", "sdlora/lora", "magmax/lora", "rail/-")),
    ("pegp/vpt", ("vpt-nsp2/vpt",)),
    ("pegp/prefix", ("coda-prompt/-", "dualprompt/-", "l2p/-", "diki/-")),
    ("pegp/adapter", ("moe-adapters/-",)),
)
DELTAS = ("last", "forgetting", "zero_shot_retention", "hallucination_fpr")
COLUMNS = ("last", "forgetting", "zero_shot_retention", "hallucination_fpr", "trainable_parameters", "wall_time_s")


def _label(g: Group) -> str:
    return f"{g.method}/{g.pet}"


def _delta(a: Group, b: Group, name: str) -> str:
    d = paired_difference(a, b, name)
    if d is None:
        return "n/a"
    text = format_value(name, d.mean, None if d.items else d.ci, signed=True) + format_interval(name, d.items)
    return text + (" (tie)" if d.tie else "")


def rivals_report(records: Iterable[dict], figures: str | Path | None = None) -> str:
    """The section's Markdown from ``records``; with ``figures`` (a folder), also one forgetting-vs-plasticity
    figure per sequence there (``rivals-<sequence>.svg``), linked from the text."""
    by_seq: dict[str, dict[str, Group]] = {}
    for g in group_records(records):
        if sets_options(g.records[0]):  # e.g. PEGP's ε sweep: the matchups are between the entries on their default options
            continue
        g.label = _label(g)
        by_seq.setdefault(g.sequence, {})[g.label] = g
    entries, deltas, out = [], [], []
    for seq, groups in sorted(by_seq.items()):
        for anchor, rivals in MATCHUPS:
            present = [r for r in rivals if r in groups]
            if anchor not in groups or not present:
                continue
            for label in (anchor, *present):
                g = groups[label]
                entries.append([seq, label, str(len(g.records))] + [format_stat(n, g.stat(n)) for n in COLUMNS])
            for r in present:
                a, b = groups[anchor], groups[r]
                tests = item_tests(a, b)
                sig = f"{sum(t['p'] < 0.05 for t in tests)} of {len(tests)}" if tests else "n/a"
                deltas.append([seq, f"{anchor} − {r}"] + [_delta(a, b, n) for n in DELTAS] + [sig])
        if figures is not None:
            shown = [groups[x] for anchor, rivals in MATCHUPS if anchor in groups and any(r in groups for r in rivals)
                     for x in (anchor, *rivals) if x in groups]  # a sequence without a rival gets no figure
            if len(shown) > 1:
                path = save_figure(tradeoff_figure(shown, x="plasticity", y="forgetting",
                                                   title=f"{seq}: forgetting vs plasticity gain"),
                                   Path(figures) / f"rivals-{seq}.svg")
                out.append(f"![{seq}: forgetting vs plasticity, PEGP and its rivals]({path.as_posix()})")
    if not deltas:
        return "No sequence has records of PEGP and a rival on the same PET."
    arrow = lambda n: "" if METRICS[n].higher_is_better else " ↓"  # noqa: E731
    head = ["sequence", "entry", "n"] + [METRICS[n].label + arrow(n) for n in COLUMNS]
    dhead = ["sequence", "PEGP − rival"] + [f"Δ {METRICS[n].label}" for n in DELTAS] + ["McNemar p < 0.05 (seeds)"]
    return "\n".join(markdown_table(head, entries) + [""] + markdown_table(dhead, deltas) + ([""] + out if out else []))


__all__ = ["MATCHUPS", "rivals_report"]
