"""Plots of records (matplotlib, PNG): forgetting curves, accuracy heatmap, retention and hallucination
curves, and a board-level comparison. ``clsuite plot`` draws them for any records."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOTS = ("forgetting", "heatmap", "retention", "hallucination")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def forgetting_curves(rec: dict, path: Path) -> Path:
    """Accuracy on each task (lines) after every training step (x), starting from zero-shot."""
    names = rec["sequence"]["tasks"]
    a = np.array([rec["zero_shot"]["tasks"]] + rec["matrix"]) * 100
    fig, ax = plt.subplots(figsize=(6, 3.4))
    steps = ["0-shot"] + [f"after {i + 1}" for i in range(len(rec["matrix"]))]
    for d, n in enumerate(names):
        ax.plot(range(len(steps)), a[:, d], marker="o", ms=3, label=n)
    ax.set_xticks(range(len(steps)), steps, rotation=30, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Forgetting curves", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def heatmap(rec: dict, path: Path) -> Path:
    a = np.array(rec["matrix"]) * 100
    names = rec["sequence"]["tasks"]
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    im = ax.imshow(a, vmin=0, vmax=100, cmap="viridis")
    for (i, j), v in np.ndenumerate(a):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < 60 else "k")
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=6, ha="right")
    ax.set_yticks(range(len(a)), [f"after {n}" for n in names[: len(a)]], fontsize=6)
    ax.set_title("Accuracy matrix A[t, d]", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def retention_curve(rec: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = rec["steps"]
    for name in rec["sequence"].get("control_sets", []):
        ys = [s.get("retention", {}).get(name) for s in steps]
        ax.plot(range(1, len(ys) + 1), [np.nan if y is None else 100 * y for y in ys], marker="o", ms=3, label=name)
    ax.axhline(100, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("after task")
    ax.set_ylabel("zero-shot retention (%)")
    ax.set_title("Zero-shot retention on control sets", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def hallucination_curve(rec: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [rec.get("zero_shot_step", {})] + rec["steps"]
    x = range(len(steps))
    for strategy in ("random", "popular", "adversarial"):
        ys = [s.get("hallucination", {}).get("pope", {}).get(strategy, {}).get("false_positive_rate") for s in steps]
        if any(y is not None for y in ys):
            ax.plot(x, [np.nan if y is None else 100 * y for y in ys], marker="o", ms=3, label=f"POPE {strategy} FPR")
    hij = [s.get("hallucination", {}).get("hijacking", {}).get("mean_rate") for s in steps]
    if any(h is not None for h in hij):
        ax.plot(x, [np.nan if h is None else 100 * h for h in hij], marker="s", ms=3, ls="--", label="seen-class hijacking")
    ax.set_xticks(list(x), ["0-shot"] + [str(i) for i in range(1, len(steps))], fontsize=7)
    ax.set_ylabel("rate (%)")
    ax.set_title("Hallucination over steps", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


DRAW = {"forgetting": forgetting_curves, "heatmap": heatmap, "retention": retention_curve,
        "hallucination": hallucination_curve}


def plot_record(rec: dict, out_dir: Path, kinds=PLOTS) -> dict[str, Path]:
    return {k: DRAW[k](rec, Path(out_dir) / f"{k}.png") for k in kinds}


def board_comparison(rows: list[tuple[str, float, float]], metric: str, path: Path) -> Path:
    """Bar chart of ``(label, mean, ci)`` rows for one metric."""
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.3 * len(rows) + 1)))
    labels = [r[0] for r in rows]
    ax.barh(range(len(rows)), [100 * r[1] for r in rows], xerr=[100 * r[2] for r in rows], color="#4c72b0")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (%)")
    ax.set_title(f"Methods by {metric}", fontsize=10)
    return _save(fig, path)
