"""Figures of the method study from its ``summary.json`` (written by ``method_study.py``).

- ``recall_at_k.png``: test recall@k (k = 1..20) per method, text-to-image and image-to-text, mean over seeds,
  for the checkpoint each run selected on validation (``wfa.eval.report.plot_recall_curves``).
- ``time_to_quality.png``: validation mR_t2i against training wall time, one line per run, with the
  time-to-quality thresholds (pairs' mean final test mR_t2i, dashed; its final val mR_t2i, dash-dotted).

Usage: ``python scripts/bench/plot_study.py [--study-dir benchmarks/study]``
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
    """Validation mR_t2i against training wall time for every run of the study; returns ``path``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (method, entry) in enumerate(summary["methods"].items()):
        for j, curve in enumerate(entry["val_curves"]):
            ax.plot(curve["train_wall_s"], curve["mR_t2i"], color=f"C{i}", marker=".", alpha=0.75,
                    label=method if j == 0 else None)
    styles = {"test": "--", "val": "-."}
    for reference, ttq in (summary.get("time_to_quality") or {}).items():
        ax.axhline(ttq["threshold_mR_t2i"], color="grey", ls=styles[reference], lw=1,
                   label=f"pairs' final {reference} mR_t2i")
    ax.axhline(summary["chance"]["mR_t2i"], color="black", ls=":", lw=1, label="chance")
    s = summary["settings"]
    ax.set(xlabel="training wall time (s, validation excluded)", ylabel="val mR_t2i (%)",
           title=f"UCM-Captions, {s['model']} {s['image_size']} px, {s['budget_steps']} steps x {s['batch_size']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
