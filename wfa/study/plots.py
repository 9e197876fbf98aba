"""A study's figures: validation quality against training FLOPs and against training time, and test recall@k.

Drawn on ``matplotlib.figure.Figure`` (no pyplot state), so they work the same in scripts, tests and notebooks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def plot_quality(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Val ``mR_t2i`` against training FLOPs (when counted) and training wall time, one line per run, with the
    time-to-quality thresholds (the reference arm's final test and val ``mR_t2i``), the goal's target and its FLOP
    budget, and chance; returns ``path``."""
    from matplotlib.figure import Figure

    arms = list(summary["arms"].items())
    has_flops = any(f is not None for _, e in arms for c in e["val_curves"] for f in c.get("flops", [None]))
    axes_spec = ([("flops", 1e12, "training TFLOPs (forward + backward)")] if has_flops else []) + [
        ("train_wall_s", 1.0, "training wall time (s, validation excluded)")]
    fig = Figure(figsize=(7 * len(axes_spec), 4.8))
    axes = fig.subplots(1, len(axes_spec), squeeze=False)[0]
    colors = _palette(len(arms))
    styles = {"test": "--", "val": "-."}
    reference = summary.get("reference_arm", "pairs")
    goal = summary.get("goal") or {}
    for ax, (key, scale, label) in zip(axes, axes_spec):
        for i, (arm, entry) in enumerate(arms):
            for j, curve in enumerate(entry["val_curves"]):
                x = [v / scale if v is not None else None for v in curve[key]]
                ax.plot(x, curve["mR_t2i"], color=colors[i], marker=".", alpha=0.75, label=arm if j == 0 else None)
        for which, ttq in (summary.get("time_to_quality") or {}).items():
            ax.axhline(ttq["threshold_mR_t2i"], color="grey", ls=styles[which], lw=1,
                       label=f"{reference}' final {which} mR_t2i")
        if goal.get("external_reference") and "mR_t2i" in goal.get("targets", {}):
            ax.axhline(goal["targets"]["mR_t2i"]["mean"], color="tab:red", ls="--", lw=1.2,
                       label=f"goal: the reference {goal['arm']}' final test mR_t2i")
        if goal and key == "flops":
            ax.axvline(goal["fraction"] * goal["reference_flops"] / scale, color="tab:red", ls=":", lw=1.2,
                       label=f"{goal['fraction']:.2f} of {goal['arm']}' run FLOPs")
        ax.axhline(summary["chance"]["mR_t2i"], color="black", ls=":", lw=1, label="chance")
        ax.set(xlabel=label, ylabel="val mR_t2i (%)")
        ax.grid(alpha=0.3)
    p = summary["protocol"]
    fig.suptitle(f"{summary['dataset']}, {', '.join(p['model'])} {', '.join(str(s) for s in p['image_size'])} px, "
                 f"{', '.join(str(s) for s in p['steps'])} steps x {', '.join(str(b) for b in p['batch_size'])}")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_recall(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Test recall@k (k = 1..20) per arm, both directions, mean over seeds of the best-val checkpoints."""
    from wfa.eval.report import plot_recall_curves

    return plot_recall_curves({arm: e["recall_curve"] for arm, e in summary["arms"].items()}, path)


def _palette(n: int) -> list[Any]:
    """``n`` distinguishable colours (tab20's dark shades first)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap((2 * i) % 20 + (2 * i) // 20 % 2) for i in range(n)]
