"""Tables and a plot of benchmark results, laid out as remote-sensing papers print them.

* zero-shot: one row per model, one column per data set (top-1 %, mAP % for multi-label data), and the mean;
* linear probe and k-NN: one row per data set (per model and data set when several models are compared),
  one column per number of training images per class (1, 2, 4, 8, 16) and ``full``: mean ± std over the
  seeds (top-1 %; mAP % for multi-label data);
* retrieval: one row per data set, image-to-text R@1/5/10, text-to-image R@1/5/10 and mR (%).

:func:`write_benchmark` writes ``benchmark.json`` (the results, a list with one entry per model),
``benchmark.csv`` (one row per number, long format), ``benchmark.md`` (the tables, the model, splits, skips)
and ``benchmark.png`` (zero-shot bars, probe and k-NN against the training images per class, retrieval
bars). Each file is written to a temporary name and renamed (:mod:`wfa.eval.files`), so a failed run leaves
the previous ones.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from wfa.eval.files import write_atomic, write_text_atomic

RETRIEVAL_COLUMNS = (("i2t_r1", "i2t R@1"), ("i2t_r5", "i2t R@5"), ("i2t_r10", "i2t R@10"),
                     ("t2i_r1", "t2i R@1"), ("t2i_r5", "t2i R@5"), ("t2i_r10", "t2i R@10"), ("mR", "mR"))
PROTOCOL_TITLES = {"zeroshot": "Zero-shot classification", "linear_probe": "Linear probe", "knn": "k-NN"}
PLOT_TITLES = {"linear_probe": "linear probe", "knn": "k-NN"}


@dataclass
class Table:
    """A titled table of strings (``header`` and ``rows``) with a note printed under it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        """GitHub Markdown: the title as a heading, the table, the note."""
        lines = [f"## {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else []))

    def text(self) -> str:
        """A fixed-width table for the terminal."""
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        return "\n".join([self.title, line(self.header), "  ".join("-" * w for w in widths), *map(line, self.rows)])


def model_label(result: dict[str, Any]) -> str:
    """A short name of the benchmarked model: its architecture and checkpoint or pretrained tag."""
    model = result.get("model", {})
    source = model.get("checkpoint") or model.get("pretrained")
    return f"{model.get('name', 'model')} ({source})" if source else str(model.get("name", "model"))


def _ordered(results: Sequence[dict[str, Any]], section: str, protocol: str | None = None) -> list[str]:
    names: list[str] = []
    for result in results:
        for name, entry in result.get(section, {}).items():
            if (protocol is None or protocol in entry) and name not in names:
                names.append(name)
    return names


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def _multilabel(results: Sequence[dict[str, Any]], name: str) -> bool:
    return any(r["classification"].get(name, {}).get("task", {}).get("multilabel") for r in results)


def zeroshot_table(results: Sequence[dict[str, Any]]) -> Table | None:
    """Rows: models; columns: data sets and their mean (top-1 %, mAP % for multi-label)."""
    names = _ordered(results, "classification", "zeroshot")
    if not names:
        return None
    header = ["model", *[f"{n} (mAP)" if _multilabel(results, n) else n for n in names], "mean"]
    rows = []
    for result in results:
        values = [result["classification"].get(n, {}).get("zeroshot", {}).get("main") for n in names]
        present = [v for v in values if v is not None]
        rows.append([model_label(result), *map(_fmt, values),
                     _fmt(sum(present) / len(present) if present else None)])
    chance = []
    for n in names:
        entry = next(r["classification"][n]["zeroshot"] for r in results
                     if "zeroshot" in r["classification"].get(n, {}))
        if "chance_top1" in entry:
            chance.append(f"{n} {entry['chance_top1']:.2f}")
    note = "Top-1 accuracy (%); multi-label data sets: mAP (%)." + (
        f" Chance top-1: {', '.join(chance)}." if chance else "")
    return Table(PROTOCOL_TITLES["zeroshot"], header, rows, note)


def _settings(results: Sequence[dict[str, Any]], protocol: str) -> list[str]:
    found: set[str] = set()
    for result in results:
        for entry in result["classification"].values():
            found |= {k for k in entry.get(protocol, {}) if k == "full" or k.isdigit()}
    return sorted((s for s in found if s != "full"), key=int) + (["full"] if "full" in found else [])


def few_shot_table(results: Sequence[dict[str, Any]], protocol: str) -> Table | None:
    """Rows: data sets (model / data set for several models); columns: images per class and ``full``."""
    names = _ordered(results, "classification", protocol)
    if not names:
        return None
    settings = _settings(results, protocol)
    several = len(results) > 1
    header = [*(["model"] if several else []), "data set", *[f"{s}-shot" if s != "full" else "full" for s in settings]]
    rows = []
    for result in results:
        for name in names:
            entry = result["classification"].get(name, {}).get(protocol)
            if entry is None:
                continue
            cells = []
            for setting in settings:
                value = entry.get(setting)
                if value is None:
                    cells.append("—")
                elif "mean" in value:
                    cells.append(f"{value['mean']:.2f} ± {value['std']:.2f}")
                else:
                    cells.append(_fmt(value["main"]))
            label = f"{name} (mAP)" if _multilabel(results, name) else name
            rows.append([*([model_label(result)] if several else []), label, *cells])
    seeds = sorted({len(r.get("few_shot", {}).get("seeds", [])) for r in results})
    chosen = "The L2 regularisation" if protocol == "linear_probe" else "k"
    note = (f"Top-1 accuracy (%; mAP for multi-label data), mean ± std over {'/'.join(map(str, seeds))} seeds "
            f"of the n training images per class; full: every training image. {chosen} chosen on held-out "
            "training images.")
    return Table(PROTOCOL_TITLES[protocol], header, rows, note)


def retrieval_table(results: Sequence[dict[str, Any]]) -> Table | None:
    """Rows: data sets (model / data set for several models); columns: i2t and t2i R@1/5/10, mR (%)."""
    names = _ordered(results, "retrieval")
    if not names:
        return None
    several = len(results) > 1
    header = [*(["model"] if several else []), "data set", *[title for _, title in RETRIEVAL_COLUMNS]]
    rows = []
    for result in results:
        for name in names:
            entry = result["retrieval"].get(name)
            if entry is not None:
                rows.append([*([model_label(result)] if several else []), name,
                             *[_fmt(entry.get(key)) for key, _ in RETRIEVAL_COLUMNS]])
    return Table("Image-text retrieval", header, rows,
                 "Recall@k (%) on the test split; mR is the mean of the six recalls (docs/metrics.md).")


def tables(results: Sequence[dict[str, Any]]) -> list[Table]:
    """Every table the results fill, in paper order: zero-shot, linear probe, k-NN, retrieval."""
    made = [zeroshot_table(results), few_shot_table(results, "linear_probe"), few_shot_table(results, "knn"),
            retrieval_table(results)]
    return [t for t in made if t is not None]


def long_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per reported number: model, protocol, dataset, setting, metric, value, std, runs."""
    rows = []
    for result in results:
        label = model_label(result)
        for name, entry in result.get("classification", {}).items():
            metric = "mAP" if entry.get("task", {}).get("multilabel") else "top1"
            if "zeroshot" in entry:
                rows.append({"model": label, "protocol": "zeroshot", "dataset": name, "setting": "",
                             "metric": metric, "value": entry["zeroshot"]["main"], "std": "", "runs": 1})
            for protocol in ("linear_probe", "knn"):
                for setting, value in entry.get(protocol, {}).items():
                    if setting != "full" and not setting.isdigit():
                        continue
                    mean, std, runs = ((value["mean"], value["std"], len(value["runs"])) if "mean" in value
                                       else (value["main"], "", 1))
                    rows.append({"model": label, "protocol": protocol, "dataset": name,
                                 "setting": setting if setting == "full" else f"{setting}-shot", "metric": metric,
                                 "value": mean, "std": std, "runs": runs})
        for name, entry in result.get("retrieval", {}).items():
            for key, _ in RETRIEVAL_COLUMNS:
                rows.append({"model": label, "protocol": "retrieval", "dataset": name,
                             "setting": entry.get("split", ""), "metric": key, "value": entry[key], "std": "",
                             "runs": 1})
    return rows


def markdown(results: Sequence[dict[str, Any]], plot: str | None = None) -> str:
    """The Markdown report: title, the model(s), the tables, how each data set was split, and skips."""
    parts = ["# wfa benchmark", ""]
    for result in results:
        model, suite = result["model"], result["suite"]
        parts.append(f"- **{model_label(result)}**: suite `{suite['name']}`, image size {model.get('image_size')}, "
                     f"weights sha256 {model.get('fingerprint')}…, {result.get('wall_s', 0):.0f} s")
    parts.append("")
    for table in tables(results):
        parts += [table.markdown(), ""]
    details = []
    for name, entry in results[0].get("classification", {}).items():
        skipped = {k: v for k, v in entry.get("skipped_images", {}).items() if v}
        details.append(f"- {name} ({entry['task']['kind']}): {entry['test_images']} evaluated, "
                       f"{entry['train_images']} training images, {entry['task']['classes']} classes; {entry['split']}"
                       + (f"; images left out: {json.dumps(skipped)}" if skipped else "")
                       + "".join(f"; {p} not run: {why}" for p, why in entry.get("not_run", {}).items()))
    if details:
        parts += ["## Data sets", "", *details, ""]
    skipped = [s for r in results for s in r.get("skipped", [])]
    if skipped:
        parts += ["## Not run", "", *[f"- {s['dataset']} ({s['what']}): {s['reason']}" for s in skipped], ""]
    if plot:
        parts += [f"![benchmark]({plot})", ""]
    return "\n".join(parts)


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Zero-shot bars, probe and k-NN against images per class (error bars: std over seeds), retrieval bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_zs, ax_probe), (ax_knn, ax_ret) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(results))
    names = _ordered(results, "classification", "zeroshot")
    for r, result in enumerate(results):
        values = [result["classification"].get(n, {}).get("zeroshot", {}).get("main") or 0.0 for n in names]
        ax_zs.bar([i + r * width for i in range(len(names))], values, width, label=model_label(result),
                  color=colours[r % len(colours)])
    for i, name in enumerate(names):
        chance = next((r["classification"][name]["zeroshot"].get("chance_top1") for r in results
                       if "zeroshot" in r["classification"].get(name, {})), None)
        if chance is not None:
            ax_zs.hlines(chance, i - width / 2, i + width * (len(results) - 0.5), colors="black", linestyles=":",
                         label="chance" if i == 0 else None)
    ax_zs.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(names))], names, rotation=20)
    ax_zs.set_title("zero-shot (top-1 / mAP %)")
    for ax, protocol in ((ax_probe, "linear_probe"), (ax_knn, "knn")):
        settings = _settings(results, protocol)
        for r, result in enumerate(results):
            for d, name in enumerate(_ordered(results, "classification", protocol)):
                entry = result["classification"].get(name, {}).get(protocol, {})
                xs = [i for i, s in enumerate(settings) if s in entry]
                if not xs:
                    continue
                means = [entry[settings[i]].get("mean", entry[settings[i]].get("main")) for i in xs]
                stds = [entry[settings[i]].get("std", 0.0) for i in xs]
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colours[(d + r) % len(colours)],
                            linestyle="-" if r == 0 else "--", label=name if len(results) == 1 else
                            f"{name}, {model_label(result)}")
        ax.set_xticks(range(len(settings)), [s if s == "full" else f"{s}" for s in settings])
        ax.set_xlabel("training images per class")
        ax.set_title(f"{PLOT_TITLES[protocol]} (top-1 / mAP %)")
        if ax.has_data():
            ax.legend(fontsize="small")
    ret_names = _ordered(results, "retrieval")
    keys = [k for k, _ in RETRIEVAL_COLUMNS]
    group = 0.8 / max(1, len(ret_names) * len(results))
    for r, result in enumerate(results):
        for d, name in enumerate(ret_names):
            entry = result["retrieval"].get(name)
            if entry is not None:
                offset = (r * len(ret_names) + d) * group
                ax_ret.bar([i + offset for i in range(len(keys))], [entry[k] for k in keys], group,
                           label=name if len(results) == 1 else f"{name}, {model_label(result)}",
                           color=colours[(r * len(ret_names) + d) % len(colours)])
    ax_ret.set_xticks([i + 0.4 - group / 2 for i in range(len(keys))], [t for _, t in RETRIEVAL_COLUMNS], rotation=20)
    ax_ret.set_title("retrieval (recall %)")
    for ax in (ax_zs, ax_ret):
        if ax.has_data():
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3, axis="y")
    for ax in (ax_probe, ax_knn):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_benchmark(results: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, str]:
    """Write ``benchmark.json``, ``.csv``, ``.md`` and ``.png`` into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    files = {"json": write_text_atomic(out / "benchmark.json", json.dumps(list(results), indent=1) + "\n")}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["model", "protocol", "dataset", "setting", "metric", "value", "std", "runs"])
    writer.writeheader()
    writer.writerows(long_rows(results))
    files["csv"] = write_text_atomic(out / "benchmark.csv", buffer.getvalue())
    files["plot"] = write_atomic(out / "benchmark.png", lambda p: plot(results, p))
    files["markdown"] = write_text_atomic(out / "benchmark.md", markdown(results, "benchmark.png") + "\n")
    return {kind: str(path) for kind, path in files.items()}
