"""Figures of records (matplotlib): comparisons of methods on one figure, and the detail figures of one entry.

Every figure is drawn from :class:`~suite.results.analysis.Group` objects (all seeds of a configuration): lines are means
over seeds, shaded bands their 95 % intervals (drawn only with more than one seed), error bars likewise. A method
keeps its colour in every figure (:func:`method_colour`); PETs differ by line style. SVG output keeps text as
text (``svg.fonttype: none``), so labels stay searchable and selectable. Artists carry ``gid``s
(``group:<label>``, ``band:<label>``, ``point:<label>``) so tests can inspect figures without reading pixels.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import matplotlib

from suite.results.analysis import stat

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from suite.errors import ConfigError
from suite.registry import METHODS, PETS
from suite.results.analysis import Group, curve_stats, group_records  # noqa: E402
from suite.results.metrics import METRICS, metric  # noqa: E402

matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
                            "axes.spines.top": False, "axes.spines.right": False})

KINDS = ("curves", "matrix", "retention", "hallucination", "tradeoff")
FORMATS = (".png", ".svg", ".pdf")
# Built-in methods and PETs take these in registry order (suite.registry), so a method has one colour and a PET
# one line style and marker in every figure; plug-ins get one by a hash of their name.
_COLOURS = ("#7f7f7f", "#d62728", "#1f77b4", "#8c564b", "#ff7f0e", "#9467bd", "#bcbd22", "#2ca02c", "#e377c2",
            "#17becf", "#000000", "#843c39", "#637939", "#7b4173", "#e7ba52", "#8c6d31")
METHOD_COLOURS = dict(zip(METHODS.builtin, _COLOURS))
_FALLBACK = plt.get_cmap("tab20").colors
PET_STYLES = {**dict(zip(PETS.builtin, ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1))))), "-": "-"}
PET_MARKERS = {**dict(zip(PETS.builtin, "osD^PdX")), "-": "v"}
_MARKERS = "osD^vP*X"


def method_colour(method: str) -> str | tuple:
    """The same colour for a method in every figure (built-ins fixed, plug-ins by a hash of their name)."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _FALLBACK[int(hashlib.sha256(method.encode()).hexdigest(), 16) % len(_FALLBACK)]


def _style(g: Group, i: int) -> dict:
    """Colour by method, line style and marker by PET: the same pair means the same thing in every figure."""
    h = int(hashlib.sha256(g.pet.encode()).hexdigest(), 16)
    ls = PET_STYLES.get(g.pet, ("-", "--", "-.", ":")[h % 4])
    marker = PET_MARKERS.get(g.pet, _MARKERS[h % len(_MARKERS)])
    return {"color": method_colour(g.method), "linestyle": ls, "marker": marker}


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG or PDF (by suffix) and close it."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{path}: figure format must be one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _legend(ax) -> None:
    """Outside the axes, on the right: a legend never covers data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0.0)


def _step_axis(ax, steps: int) -> None:
    """Integer step ticks: 0 is the pretrained model, then one tick per trained task."""
    ax.set_xticks(range(steps), ["zero-shot"] + [str(i) for i in range(1, steps)])
    ax.set_xlabel("after training task")
    ax.set_xlim(-0.3, steps - 0.7)


def _line_with_band(ax, x: np.ndarray, stats: list, label: str, style: dict) -> None:
    keep = [i for i, s in enumerate(stats) if s is not None]
    if not keep:
        return
    xs = x[keep]
    mean = np.array([100 * stats[i].mean for i in keep])
    (line,) = ax.plot(xs, mean, label=label, ms=4, lw=1.6, **style)
    line.set_gid(f"group:{label}")
    if any(stats[i].ci is not None for i in keep):
        ci = np.array([100 * (stats[i].ci or 0.0) for i in keep])
        band = ax.fill_between(xs, mean - ci, mean + ci, color=style["color"], alpha=0.18, lw=0)
        band.set_gid(f"band:{label}")


CURVE_LABELS = {"avg": "mean accuracy on tasks trained so far (%)", "first-task": "accuracy on task 1 (%)",
                "retention": "zero-shot retention, mean over controls (%)",
                "hallucination": "hallucination FPR, POPE adversarial (%)"}


def curves_figure(groups: list[Group], name: str = "avg", title: str | None = None) -> Figure:
    """One line per group of ``name`` after every step (see :func:`suite.results.analysis.curve`), 95 % bands."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = 0
    for i, g in enumerate(groups):
        stats = curve_stats(g, name)
        steps = max(steps, len(stats))
        _line_with_band(ax, np.arange(len(stats)), stats, g.label, _style(g, i))
    _step_axis(ax, max(steps, 2))
    ax.set_ylabel(CURVE_LABELS.get(name, f"{name.split(':', 1)[-1]} accuracy (%)"))
    if name == "retention":
        ax.axhline(100, color="#999", lw=0.8, ls="--")
    ax.set_title(title or _title(groups, f"{name} after each task"))
    _legend(ax)
    return fig


def tradeoff_figure(groups: list[Group], x: str = "plasticity", y: str = "last", title: str | None = None) -> Figure:
    """Stability–plasticity: one point per group at (``x``, ``y``) means, error bars = 95 % intervals."""
    mx, my = metric(x), metric(y)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, g in enumerate(groups):
        sx, sy = g.stat(x), g.stat(y)
        if sx is None or sy is None:
            continue
        sc = lambda m: 100.0 if m.unit == "fraction" else 1.0  # noqa: E731
        style = _style(g, i)
        cont = ax.errorbar([sc(mx) * sx.mean], [sc(my) * sy.mean],
                           xerr=None if sx.ci is None else [sc(mx) * sx.ci],
                           yerr=None if sy.ci is None else [sc(my) * sy.ci],
                           fmt=style["marker"], color=style["color"], ms=7, capsize=3, label=g.label)
        cont.lines[0].set_gid(f"point:{g.label}")
        tag = g.label.partition(" [")[2].rstrip("]")
        if tag:  # groups that share method and PET (an ε sweep, say) are told apart by their options, on the point
            ax.annotate(tag, (sc(mx) * sx.mean, sc(my) * sy.mean), xytext=(6, 4 + 9 * (i % 4)), textcoords="offset points",
                        fontsize=7, color=style["color"], gid=f"tag:{g.label}")
    unit = lambda m: " (%)" if m.unit == "fraction" else ""  # noqa: E731
    arrow = lambda m: "" if m.higher_is_better else ", lower is better"  # noqa: E731
    ax.set_xlabel(f"{mx.label}{unit(mx)}{arrow(mx)}")
    ax.set_ylabel(f"{my.label}{unit(my)}{arrow(my)}")
    ax.set_title(title or _title(groups, f"{my.label} vs {mx.label.lower()}"))
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def matrix_figure(groups: list[Group], title: str | None = None) -> Figure:
    """The mean accuracy matrix ``A[t, d]`` of each group, side by side."""
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n + 0.8, 3.4), squeeze=False)
    im = None
    for ax, g in zip(axes[0], groups):
        mats = [np.asarray(r["matrix"], float) for r in g.records if r["matrix"]]
        a = 100 * np.mean(mats, axis=0)
        names = g.records[0]["sequence"]["tasks"]
        im = ax.imshow(a, vmin=0, vmax=100, cmap="viridis")
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < 60 else "k")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(a)), [f"after {k + 1}" for k in range(len(a))], fontsize=7)
        ax.set_title(f"{g.label} (n={len(mats)})", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, label="accuracy (%)")
    if title:
        fig.suptitle(title)
    return fig


def _title(groups: list[Group], what: str) -> str:
    seqs = sorted({g.sequence for g in groups})
    return f"{', '.join(seqs)}: {what}" if len(seqs) == 1 else what


def comparison_figure(groups: list[Group], kind: str, name: str = "avg", x: str = "plasticity",
                      y: str = "last") -> Figure:
    """A figure of ``kind`` (:data:`KINDS`) comparing ``groups``."""
    if kind == "curves":
        return curves_figure(groups, name)
    if kind in ("retention", "hallucination"):
        return curves_figure(groups, kind)
    if kind == "tradeoff":
        return tradeoff_figure(groups, x=x, y=y)
    if kind == "matrix":
        return matrix_figure(groups)
    raise ConfigError(f"unknown figure kind {kind!r}; use {', '.join(KINDS)}")


def plot_records(records: Iterable[dict], kind: str, out: str | Path, name: str = "avg", x: str = "plasticity",
                 y: str = "last") -> Path:
    """``clsuite plot``: group ``records`` by configuration and draw one comparison figure to ``out``."""
    groups = group_records(records)
    if not groups:
        raise ConfigError("no records to plot")
    if kind in ("curves", "retention", "hallucination") and len({g.sequence for g in groups}) > 1:
        raise ConfigError(f"curves compare one sequence at a time; got {sorted({g.sequence for g in groups})}")
    for flag, m in (("--x", x), ("--y", y)):
        if m not in METRICS:
            raise ConfigError(f"{flag}: unknown metric {m!r}; known: {', '.join(METRICS)}")
    return save_figure(comparison_figure(groups, kind, name, x, y), out)


# ------------------------------------------------------------------------------ one entry's figures
ENTRY_FIGURES = ("tasks", "matrix", "controls", "hallucination")


def entry_figures(g: Group, out_dir: str | Path, fmt: str = ".svg") -> dict[str, Path]:
    """The detail figures of one entry (all its seeds): per-task curves, mean matrix, control sets, hallucination."""
    out_dir = Path(out_dir)
    rec = g.records[0]
    figs: dict[str, Figure] = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, task in enumerate(rec["sequence"]["tasks"]):
        stats = curve_stats(g, f"task:{task}")
        _line_with_band(ax, np.arange(len(stats)), stats, task, {"color": _FALLBACK[(2 * i) % 20], "linestyle": "-",
                                                                 "marker": _MARKERS[i % len(_MARKERS)]})
        _step_axis(ax, len(stats))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy on each task after every step ({len(g.records)} seed(s))")
    _legend(ax)
    figs["tasks"] = fig
    figs["matrix"] = matrix_figure([g])
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, c in enumerate(rec["sequence"].get("control_sets", [])):
        stats = curve_stats(g, f"control:{c}")
        _line_with_band(ax, np.arange(len(stats)), stats, c, {"color": _FALLBACK[(2 * i + 1) % 20], "linestyle": "-",
                                                              "marker": _MARKERS[i % len(_MARKERS)]})
        _step_axis(ax, len(stats))
    ax.set_ylabel("zero-shot control accuracy (%)")
    ax.set_title("Zero-shot control sets after every step")
    _legend(ax)
    figs["controls"] = fig
    figs["hallucination"] = curves_figure([g], "hallucination", title="Hallucination FPR (POPE adversarial)")
    if any("basis_dims_per_space" in s.get("method", {}) for s in rec["steps"]):
        figs["saturation"] = saturation_figure(g)
    return {k: save_figure(f, out_dir / f"{k}{fmt}") for k, f in figs.items()}


def saturation(step: dict) -> tuple[float, float] | None:
    """(share of basis spaces at full rank, mean rank/dim) after one step, from the method's report."""
    m = step.get("method", {})
    ranks, dims = m.get("basis_directions_per_space"), m.get("basis_dims_per_space")
    if not ranks or not dims:
        return None
    ratios = [ranks[k] / dims[k] for k in dims if dims[k]]
    return float(np.mean([r >= 1.0 for r in ratios])), float(np.mean(ratios))


def saturation_figure(g: Group) -> Figure:
    """How full the projection bases are after each task: a full space freezes its parameter for good."""

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    steps = max(len(r["steps"]) for r in g.records)
    x = np.arange(1, steps + 1)
    per_step = [[saturation(r["steps"][t]) if t < len(r["steps"]) else None for r in g.records] for t in range(steps)]
    for which, label, ls in ((0, "spaces at full rank", "-"), (1, "mean rank / dim", "--")):
        stats = [stat(v[which] if v else None for v in values) for values in per_step]
        _line_with_band(ax, np.concatenate([[0], x]), [None] + stats, label,
                        {"color": "#444", "linestyle": ls, "marker": "o" if which == 0 else "s"})
    _step_axis(ax, steps + 1)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("% of basis spaces")
    ax.set_title("Saturation of the projection bases")
    _legend(ax)
    return fig
