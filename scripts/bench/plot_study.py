"""Figures of the method study from its ``summary.json`` (written by ``method_study.py``).

- ``recall_at_k.png``: test recall@k (k = 1..20) per method, text-to-image and image-to-text, mean over seeds,
  for the checkpoint each run selected on validation (``wfa.eval.report.plot_recall_curves``).
- ``time_to_quality.png``: validation mR_t2i against training FLOPs (when counted) and wall time, one line per
  run, with the time-to-quality thresholds (pairs' mean final test mR_t2i, dashed; its final val mR_t2i,
  dash-dotted).

Usage: ``python scripts/bench/plot_study.py --study-dir benchmarks/study-rsicd``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO  # noqa: E402


def plot_time_to_quality(summary: dict[str, Any], path: Path) -> Path:
    """Validation mR_t2i against training FLOPs (when the study counted them) and wall time, one line per run,
    with the time-to-quality thresholds; returns ``path``."""
    import matplotlib.pyplot as plt

    entries = list(summary["methods"].items())
    has_flops = any(f is not None for _, e in entries for c in e["val_curves"] for f in c.get("flops", [None]))
    axes_spec = ([("flops", 1e12, "training TFLOPs (forward + backward)")] if has_flops else []) + [
        ("train_wall_s", 1.0, "training wall time (s, validation excluded)")]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(7 * len(axes_spec), 4.8), squeeze=False)
    colors = plt.get_cmap("tab20")
    styles = {"test": "--", "val": "-."}
    for ax, (key, scale, label) in zip(axes[0], axes_spec):
        for i, (method, entry) in enumerate(entries):
            for j, curve in enumerate(entry["val_curves"]):
                x = [v / scale if v is not None else None for v in curve[key]]
                ax.plot(x, curve["mR_t2i"], color=colors((2 * i) % 20), marker=".", alpha=0.75,
                        label=method if j == 0 else None)
        for reference, ttq in (summary.get("time_to_quality") or {}).items():
            ax.axhline(ttq["threshold_mR_t2i"], color="grey", ls=styles[reference], lw=1,
                       label=f"pairs' final {reference} mR_t2i")
        goal = summary.get("goal") or {}
        if goal.get("reference"):  # a smaller-budget study judged against a longer pairs run
            ax.axhline(goal["threshold_mR_t2i"], color="tab:red", ls="--", lw=1.2,
                       label=f"goal: {goal['reference']['budget_steps']}-step pairs' final test mR_t2i")
        if goal and key == "flops":
            ax.axvline(goal["fraction"] * goal["pairs_run_flops"] / scale, color="tab:red", ls=":", lw=1.2,
                       label=f"{goal['fraction']:.2f} of pairs' run FLOPs")
        ax.axhline(summary["chance"]["mR_t2i"], color="black", ls=":", lw=1, label="chance")
        ax.set(xlabel=label, ylabel="val mR_t2i (%)")
        ax.grid(alpha=0.3)
    s = summary["settings"]
    fig.suptitle(f"{summary.get('dataset', 'UCM-Captions')}, {s['model']} {s['image_size']} px, "
                 f"{s['budget_steps']} steps x {s['batch_size']}")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Write both figures next to ``summary.json``."""
    import matplotlib

    matplotlib.use("Agg")
    from wfa.eval.report import plot_recall_curves

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study-dir", type=Path, default=REPO / "benchmarks" / "study",
                        help="the method study's --out (default benchmarks/study)")
    args = parser.parse_args(argv)
    path = args.study_dir / "summary.json"
    if not path.is_file():
        print(f"plot_study: {path} not found: run scripts/bench/method_study.py first", file=sys.stderr)
        return 2
    summary = json.loads(path.read_text())
    curves = {method: entry["recall_curve"] for method, entry in summary["methods"].items()}
    print(plot_recall_curves(curves, args.study_dir / "recall_at_k.png"))
    print(plot_time_to_quality(summary, args.study_dir / "time_to_quality.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
