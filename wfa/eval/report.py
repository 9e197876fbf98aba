"""Evaluation reports: a printed table, ``report.json``, a Markdown table and plots (matplotlib Agg).

Plots: ``recall_at_k.png`` (recall@k for k = 1..kmax, text-to-image and image-to-text, one line per
run) and ``caption_weights.png`` (histograms of the caption weights: the shards' BLEU weights and,
when an aggregator was evaluated, the weights it produced).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: columns of the tables, in order (percentages).
METRIC_COLUMNS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "mR_t2i")


def recall_curve(ranks, kmax: int | None = None) -> dict[str, list[float]]:
    """``{"k": [1..kmax], "t2i": [...], "i2t": [...]}`` recall@k in percent from ``RetrievalRanks``."""
    kmax = kmax or ranks.kmax
    ks = list(range(1, kmax + 1))
    return {"k": ks, "t2i": [ranks.recall("t2i", k) for k in ks], "i2t": [ranks.recall("i2t", k) for k in ks]}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = METRIC_COLUMNS) -> str:
    """A fixed-width text table: one row per name in ``rows``, the given metric columns."""
    header = ["", *columns]
    body = [[name, *(_cell(metrics.get(c, "")) for c in columns)] for name, metrics in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = METRIC_COLUMNS) -> str:
    """The same table in GitHub Markdown."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def plot_recall_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """Plot recall@k curves (``{run: {"k", "t2i", "i2t"}}``) side by side for t2i and i2t; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction, title in ((axes[0], "t2i", "text-to-image"), (axes[1], "i2t", "image-to-text")):
        for name, curve in curves.items():
            if curve.get(direction):
                ax.plot(curve["k"], curve[direction], marker="o", markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@k (%)")
    axes[1].legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_weight_histograms(weights: Mapping[str, np.ndarray], path: str | Path, bins: int = 40) -> Path:
    """Histograms of per-caption weights (one panel per source, e.g. ``bleu``, ``attention``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(weights), figsize=(5 * len(weights), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], weights.items()):
        values = np.asarray(values, dtype=np.float64)
        ax.hist(values, bins=bins, range=(0.0, max(1e-6, float(values.max(initial=0.0)))), color="tab:blue")
        ax.set_title(f"{name} caption weights (n={values.size})")
        ax.set_xlabel("weight")
    axes[0][0].set_ylabel("captions")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (numpy scalars and arrays converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return path


def markdown_report(title: str, rows: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Any] | None = None,
                    plots: Sequence[str] = ()) -> str:
    """A small Markdown document: the metric table, key facts and links to the plots."""
    parts = [f"# {title}", "", markdown_table(rows), ""]
    for key, value in (extra or {}).items():
        parts.append(f"- **{key}**: {_cell(value) if not isinstance(value, dict) else json.dumps(value, default=_json_default)}")
    if extra:
        parts.append("")
    for plot in plots:
        parts += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(parts)


def write_report_files(out_dir: str | Path, report: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]],
                       curves: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                       weights: Mapping[str, np.ndarray] | None = None, title: str = "wfa evaluation",
                       json_name: str = "report.json", extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": str(write_json(report, out / json_name))}
    plots = []
    if curves:
        written["recall_plot"] = str(plot_recall_curves(curves, out / "recall_at_k.png"))
        plots.append(written["recall_plot"])
    usable = {name: w for name, w in (weights or {}).items() if w is not None and np.asarray(w).size}
    if usable:
        written["weights_plot"] = str(plot_weight_histograms(usable, out / "caption_weights.png"))
        plots.append(written["weights_plot"])
    md = out / (Path(json_name).stem + ".md")
    md.write_text(markdown_report(title, rows, extra, plots) + "\n")
    written["markdown"] = str(md)
    return written
