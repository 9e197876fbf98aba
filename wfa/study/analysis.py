"""What a study's run records say: mean ± std over seeds, time-to-quality, the goal check, selection on val and
report on test, a recommendation with its seed noise, and the Markdown tables.

Pure functions of run records (:mod:`wfa.study.records`: one dict per run with ``arm``, ``seed``, ``val_curve``,
``best_val``/``final`` test metrics, FLOPs and wall times); numpy only, no torch. The protocol they implement:

- **Selection on val, report on test.** Each run keeps the checkpoint with the best val ``mR_t2i`` (ties: the
  earliest); the main table reports its test metrics. Arms of one ``group`` (e.g. learning rates of one method)
  compete on their mean best val ``mR_t2i``; the winner's test numbers stand for the group.
- **Time to quality.** The training FLOPs and wall time (validation and checkpoints excluded) of the first
  validation whose val ``mR_t2i`` reaches a threshold: the reference arm's mean final *test* ``mR_t2i`` and, as the
  check that does not compare val against test, its mean final *val* ``mR_t2i``. Resolution: the validation interval.
- **Goal.** Within ``fraction`` of a reference arm's run FLOPs (this study's, or another study's runs), does an
  arm's mean final test value of each goal metric reach the reference's (``tolerance``: a number of points, or the
  pooled std of the two)? One seed has no std: such a row is flagged as no evidence.
- **Seed noise.** Two arms are told apart only when their difference exceeds the pooled standard deviation of
  their seeds; a recommendation says when it does not.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from wfa.eval.report import METRIC_COLUMNS

AGG_COLUMNS = ("agg_i2t_r1", "agg_i2t_r5", "agg_i2t_r10", "agg_mR_i2t")
#: metrics derived from others when a record does not hold them
DERIVED = {"mR_i2t": ("i2t_r1", "i2t_r5", "i2t_r10")}
TTQ_REFERENCES = {
    "test": "the mean final test mR_t2i of {arm} (test and val are different images)",
    "val": "the mean final val mR_t2i of {arm} (val against val: the check that does not mix splits)",
}


def metric(metrics: Mapping[str, Any], name: str) -> float | None:
    """``metrics[name]``, or for a derived metric (``mR_i2t``) the mean of its parts; None when absent."""
    if name in metrics and metrics[name] is not None:
        return float(metrics[name])
    parts = DERIVED.get(name)
    if parts and all(metrics.get(p) is not None for p in parts):
        return float(np.mean([metrics[p] for p in parts]))
    return None


def mean_std(values: Sequence[float | None]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the values that are not None; ``n`` counts
    them (mean and std are NaN for none)."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "n": int(array.size)}


def pooled_std(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """The pooled standard deviation of two :func:`mean_std` results, ``sqrt((s_a^2 + s_b^2) / 2)``."""
    return math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)


def best_val_point(curve: Sequence[Mapping[str, Any]], key: str = "mR_t2i") -> Mapping[str, Any]:
    """The validation point with the best ``key`` (ties: the earliest step): the checkpoint a run is reported by."""
    return max(curve, key=lambda p: (p[key], -p["step"]))


def by_arm(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by arm, in the order the arms first appear, each arm's runs by seed."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        arms.setdefault(record["arm"], []).append(record)
    return {arm: sorted(runs, key=lambda r: r["seed"]) for arm, runs in arms.items()}


def chance_from_records(records: Sequence[dict[str, Any]]) -> tuple[int, float, dict[str, float]]:
    """``(test images, captions per image, chance recalls)`` of the test split the records were evaluated on."""
    from wfa.eval.metrics import chance_recalls

    test = records[0]["best_val"]["test"]
    n_images = int(test["num_images"])
    k = float(test["num_captions"]) / n_images
    return n_images, k, chance_recalls(n_images, k)


# -- time to quality and the goal ---------------------------------------------------------------------------------

def time_to_quality(records: Sequence[dict[str, Any]], reference_arm: str = "pairs",
                    reference: str = "test") -> dict[str, Any] | None:
    """Per run, the first val point whose ``mR_t2i`` reaches the reference arm's mean final ``mR_t2i`` on
    ``reference`` (``"test"`` or ``"val"``); ratios against the reference's whole-run FLOPs and wall time and its own
    time to the threshold. None without runs of the reference arm."""
    pairs = [r for r in records if r["arm"] == reference_arm]
    if not pairs:
        return None
    final = {"test": lambda r: r["final"]["test"]["mR_t2i"], "val": lambda r: r["final"]["val_mR_t2i"]}[reference]
    threshold = float(np.mean([final(r) for r in pairs]))
    per_arm: dict[str, Any] = {}
    for r in records:
        hit = next((p for p in r["val_curve"] if p["mR_t2i"] >= threshold), None)
        entry = per_arm.setdefault(r["arm"], {"runs": []})
        entry["runs"].append({"seed": r["seed"], "reached": hit is not None,
                              "train_wall_s": hit["train_wall_s"] if hit else None,
                              "flops": hit["flops"] if hit else None, "step": hit["step"] if hit else None,
                              "captions_encoded": hit["captions_encoded"] if hit else None,
                              "fraction_of_run_wall": hit["train_wall_s"] / r["train_wall_s"] if hit else None})
    pairs_time = mean_std([run["train_wall_s"] for run in per_arm[reference_arm]["runs"] if run["reached"]])["mean"]
    pairs_run = mean_std([r["train_wall_s"] for r in pairs])["mean"]
    pairs_flops = mean_std([r.get("train_flops") for r in pairs])["mean"]
    for entry in per_arm.values():
        reached = [run for run in entry["runs"] if run["reached"]]
        entry["reached"] = f"{len(reached)}/{len(entry['runs'])}"
        entry["train_wall_s"] = mean_std([run["train_wall_s"] for run in reached])
        entry["flops"] = mean_std([run["flops"] for run in reached])
        entry["step"] = mean_std([run["step"] for run in reached])
        entry["ratio_to_pairs_run"] = entry["train_wall_s"]["mean"] / pairs_run if reached else None
        entry["flops_ratio_to_pairs_run"] = (entry["flops"]["mean"] / pairs_flops
                                             if reached and entry["flops"]["n"] and not math.isnan(pairs_flops)
                                             else None)
        entry["ratio_to_pairs"] = (entry["train_wall_s"]["mean"] / pairs_time
                                   if reached and not math.isnan(pairs_time) else None)
    return {"reference": reference, "reference_arm": reference_arm, "threshold_mR_t2i": threshold,
            "definition": f"first validation point whose val mR_t2i >= "
                          f"{TTQ_REFERENCES[reference].format(arm=reference_arm)}; training wall time excludes "
                          "validation and checkpointing; resolution = the validation interval",
            "pairs_run_train_wall_s": pairs_run, "pairs_run_flops": pairs_flops, "methods": per_arm}


def quality_at_fraction(records: Sequence[dict[str, Any]], reference_arm: str = "pairs", fraction: float = 1 / 3,
                        cost: str = "train_wall_s") -> dict[str, Any] | None:
    """Each arm's val ``mR_t2i`` at ``fraction`` of the reference arm's training cost (``"train_wall_s"`` or
    ``"flops"``): per run the last validation at or before it (None when none is that early), mean ± std per arm.
    None without reference runs (or FLOPs for ``"flops"``)."""
    pairs = [r for r in records if r["arm"] == reference_arm]
    total = {"train_wall_s": "train_wall_s", "flops": "train_flops"}[cost]
    if not pairs or any(r.get(total) is None for r in pairs):
        return None
    budget = fraction * float(np.mean([r[total] for r in pairs]))
    per_arm: dict[str, Any] = {}
    for r in records:
        point = next((p for p in reversed(r["val_curve"]) if p.get(cost) is not None and p[cost] <= budget), None)
        entry = per_arm.setdefault(r["arm"], {"mR_t2i": [], "step": []})
        entry["mR_t2i"].append(point["mR_t2i"] if point else None)
        entry["step"].append(point["step"] if point else None)
    return {"fraction": fraction, "cost": cost, "budget": budget, "reference_arm": reference_arm,
            "methods": {m: {"mR_t2i": mean_std(e["mR_t2i"]), "step": e["step"]} for m, e in per_arm.items()}}


def goal_check(records: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]] | None = None,
               arm: str = "pairs", fraction: float = 1 / 3, metrics: Sequence[str] = ("mR_t2i",),
               tolerance: float | str = "pooled_std") -> dict[str, Any] | None:
    """The goal, per arm: run FLOPs within ``fraction`` of the reference runs' mean, and for every metric of
    ``metrics`` a mean final test value at least the reference's minus ``tolerance`` (points, or ``"pooled_std"``).

    ``reference``: the runs that set the target (default: this study's runs of ``arm``, which are then not judged).
    Also per seed, as information: the FLOPs (as a fraction of the reference's run) at which the val curve first
    reaches the target of the first metric. None without reference runs that counted FLOPs.
    """
    ref_runs = list(reference) if reference is not None else [r for r in records if r["arm"] == arm]
    if not ref_runs or any(not r.get("train_flops") for r in ref_runs):
        return None
    ref_flops = float(np.mean([r["train_flops"] for r in ref_runs]))
    targets = {m: mean_std([metric(r["final"]["test"], m) for r in ref_runs]) for m in metrics}
    first = metrics[0]
    arms = {}
    for name, runs in by_arm(records).items():
        if name == arm and reference is None:
            continue
        run_ratio = float(np.mean([r["train_flops"] for r in runs])) / ref_flops
        hits = [next((p for p in r["val_curve"] if metric(p, first) is not None
                      and metric(p, first) >= targets[first]["mean"]), None) for r in runs]
        per_metric = {}
        for m in metrics:
            final = mean_std([metric(r["final"]["test"], m) for r in runs])
            slack = pooled_std(final, targets[m]) if tolerance == "pooled_std" else float(tolerance)
            per_metric[m] = {"final": final, "target": targets[m], "difference": final["mean"] - targets[m]["mean"],
                             "tolerance": slack, "reached": final["mean"] >= targets[m]["mean"] - slack}
        within = all(r["train_flops"] <= fraction * ref_flops for r in runs)
        arms[name] = {"seeds": len(runs), "run_flops_ratio": run_ratio, "within_budget": within,
                      "flops_ratio_per_seed": [hit["flops"] / ref_flops if hit and hit.get("flops") else None
                                               for hit in hits],
                      "metrics": per_metric, "evidence": len(runs) > 1,
                      "met": within and all(e["reached"] for e in per_metric.values())}
    ref_steps = sorted({r.get("budget", {}).get("steps") for r in ref_runs} - {None})
    return {"fraction": fraction, "arm": arm, "metrics": list(metrics), "tolerance": tolerance,
            "reference_flops": ref_flops, "reference_seeds": [r["seed"] for r in ref_runs],
            "reference_steps": ref_steps, "external_reference": reference is not None, "targets": targets,
            "arms": arms}


# -- the summary ----------------------------------------------------------------------------------------------------

def summarize(records: Sequence[dict[str, Any]], dataset: str, reference_arm: str = "pairs",
              goal: Mapping[str, Any] | None = None, goal_reference: Sequence[dict[str, Any]] | None = None,
              ) -> dict[str, Any]:
    """Aggregate run records over seeds: test metrics of the best-val and final checkpoints (mean ± std), costs,
    curves, selection per group, time-to-quality and the goal (``goal``: the :func:`goal_check` options;
    ``goal_reference``: another study's runs that set its target)."""
    if not records:
        raise ValueError("no run records to summarise")
    n_test, k, chance = chance_from_records(records)
    arms: dict[str, Any] = {}
    for arm, runs in by_arm(records).items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "group": runs[0].get("group", arm),
                                 "method": runs[0]["config"]["method"], "overrides": runs[0].get("overrides", []),
                                 "precision": sorted({r.get("precision", "no") for r in runs}),
                                 "compile": sorted({bool(r.get("compile", False)) for r in runs}),
                                 "steps": [r["budget"]["steps"] for r in runs],
                                 "batch_size": runs[0]["budget"]["batch_size"]}
        for selection in ("best_val", "final"):
            columns = METRIC_COLUMNS + ("mR_i2t",) + (AGG_COLUMNS if "agg_mR_i2t" in runs[0][selection]["test"]
                                                        else ())
            entry[selection] = {c: mean_std([metric(r[selection]["test"], c) for r in runs]) for c in columns}
            entry[selection]["step"] = [r[selection]["step"] for r in runs]
        entry["val_mR_t2i"] = mean_std([r["best_val"]["val_mR_t2i"] for r in runs])
        for key in ("train_wall_s", "images_encoded", "captions_encoded", "flops_per_step", "train_flops"):
            entry[key] = mean_std([r.get(key) for r in runs])
        curves = [r["best_val"]["recall_curve"] for r in runs]
        entry["recall_curve"] = {"k": curves[0]["k"], "t2i": np.mean([c["t2i"] for c in curves], axis=0).tolist(),
                                 "i2t": np.mean([c["i2t"] for c in curves], axis=0).tolist()}
        entry["val_curves"] = [{"seed": r["seed"], "step": [p["step"] for p in r["val_curve"]],
                                "train_wall_s": [p["train_wall_s"] for p in r["val_curve"]],
                                "flops": [p.get("flops") for p in r["val_curve"]],
                                "mR_t2i": [p["mR_t2i"] for p in r["val_curve"]]} for r in runs]
        arms[arm] = entry
    first = records[0]
    protocol = {"model": sorted({r["config"]["model"]["name"] for r in records}),
                "image_size": sorted({r["config"]["data"]["image_size"] for r in records}),
                "batch_size": sorted({r["budget"]["batch_size"] for r in records}),
                "steps": sorted({r["budget"]["steps"] for r in records}),
                "eval_every": sorted({r["config"]["train"]["eval_every"] for r in records}),
                "precision": sorted({r.get("precision", "no") for r in records}),
                "budget_flops": first["budget"].get("flops")}
    goal_result = goal_check(records, goal_reference, **goal) if goal else None
    return {"dataset": dataset, "protocol": protocol, "reference_arm": reference_arm, "num_test_images": n_test,
            "num_test_captions": int(round(n_test * k)), "chance": chance, "arms": arms,
            "selection": select_groups(arms),
            "time_to_quality": {ref: ttq for ref in TTQ_REFERENCES
                                if (ttq := time_to_quality(records, reference_arm, ref))} or None,
            "quality_at_third": quality_at_fraction(records, reference_arm),
            "quality_at_third_flops": quality_at_fraction(records, reference_arm, cost="flops"),
            "goal": goal_result}


def select_groups(arms: Mapping[str, Any]) -> dict[str, Any]:
    """Per group of arms, the arm with the best mean best-val ``mR_t2i`` and its test numbers (selection on val,
    report on test)."""
    groups: dict[str, list[str]] = {}
    for arm, entry in arms.items():
        groups.setdefault(entry["group"], []).append(arm)
    selected = {}
    for group, members in groups.items():
        winner = max(members, key=lambda a: arms[a]["val_mR_t2i"]["mean"])
        selected[group] = {"arms": members, "selected": winner, "val_mR_t2i": arms[winner]["val_mR_t2i"],
                           "test_mR_t2i": arms[winner]["best_val"]["mR_t2i"],
                           "test_mR_i2t": arms[winner]["best_val"]["mR_i2t"]}
    return selected


def recommend(summary: Mapping[str, Any], reference_arm: str | None = None) -> dict[str, Any]:
    """The arm (group winner) with the best mean best-val ``mR_t2i``, the runner-up, and whether their difference
    is within seed noise (at most the pooled std of their seeds on val); with ``reference_arm``, the same against
    it. Selection is on val; the test numbers are reported beside it."""
    selection = summary["selection"]
    ranked = sorted(selection.values(), key=lambda s: -s["val_mR_t2i"]["mean"])
    best = ranked[0]
    result: dict[str, Any] = {"arm": best["selected"], "val_mR_t2i": best["val_mR_t2i"],
                              "test_mR_t2i": best["test_mR_t2i"], "ranking": [s["selected"] for s in ranked]}
    comparisons = []
    others = ranked[1:2]
    if reference_arm and reference_arm != best["selected"]:
        others += [s for s in ranked[1:] if s["selected"] == reference_arm and s not in others]
    for other in others:
        difference = best["val_mR_t2i"]["mean"] - other["val_mR_t2i"]["mean"]
        noise = pooled_std(best["val_mR_t2i"], other["val_mR_t2i"])
        comparisons.append({"against": other["selected"], "difference": difference, "pooled_std": noise,
                            "seeds": min(best["val_mR_t2i"]["n"], other["val_mR_t2i"]["n"]),
                            "within_noise": difference <= noise})
    result["comparisons"] = comparisons
    result["within_noise"] = bool(comparisons) and comparisons[0]["within_noise"]
    return result


# -- Markdown ---------------------------------------------------------------------------------------------------

def _pm(stat: Mapping[str, float], fmt: str = "{:.2f}") -> str:
    if not stat or stat.get("n", 0) == 0 or math.isnan(stat["mean"]):
        return "–"
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std'])}"


def _flops(value: float | None) -> str:
    return f"{value / 1e12:.2f}" if value else "–"


def _one(values: Sequence[Any], what: str) -> str:
    return str(values[0]) if len(values) == 1 else f"{what} per arm"


def markdown_summary(summary: Mapping[str, Any]) -> str:
    """The study's Markdown: the results table (test metrics of the best-val checkpoints, costs, chance), the arms,
    the selection per group, time-to-quality, the goal, and the quality at a third of the reference's cost."""
    p, ref = summary["protocol"], summary["reference_arm"]
    arms = summary["arms"]
    steps = (f"{p['steps'][0]} steps" if len(p["steps"]) == 1
             else f"compute-matched steps ({', '.join(str(s) for s in p['steps'])})")
    lines = [f"{summary['dataset']} test split ({summary['num_test_images']} images, {summary['num_test_captions']} "
             f"caption queries); {_one(p['model'], 'model')} at {_one(p['image_size'], 'size')} px, {steps} x "
             f"{_one(p['batch_size'], 'batch')} samples, checkpoint with the best val mR_t2i; mean ± std over seeds. "
             "GFLOP/step: forward + backward of one step; TFLOP: the whole run; agg i2t: image-to-text against "
             "the aggregated gallery (one fused text per image).", ""]
    label = "method" if all(arm == e["method"] for arm, e in arms.items()) else "arm"
    lines += [f"| {label} | seeds | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | mR | mR_t2i "
              "| final-step mR_t2i | agg i2t mR | GFLOP/step | TFLOP | train wall (s) | images enc. | captions enc. |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, e in arms.items():
        per_step = e["flops_per_step"]["mean"] if e["flops_per_step"]["n"] else None
        row = [arm, str(len(e["seeds"])), *(_pm(e["best_val"][c]) for c in METRIC_COLUMNS),
               _pm(e["final"]["mR_t2i"]), _pm(e["best_val"].get("agg_mR_i2t", {})),
               f"{per_step / 1e9:.1f}" if per_step else "–",
               _flops(e["train_flops"]["mean"] if e["train_flops"]["n"] else None),
               _pm(e["train_wall_s"], "{:.0f}"), f"{e['images_encoded']['mean']:.0f}",
               f"{e['captions_encoded']['mean']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    chance = summary["chance"]
    lines.append("| chance | – | " + " | ".join(f"{chance[c]:.2f}" for c in METRIC_COLUMNS) + " | | | | | | | |")
    lines += ["", "Arms (every override each applies to the study's base; precision and compile as recorded):", "",
              "| arm | group | steps per seed | precision | compile | overrides |", "|---|---|---|---|---|---|"]
    for arm, e in arms.items():
        overrides = ", ".join(f"`{o}`" for o in e["overrides"]) or "–"
        lines.append(f"| {arm} | {e['group']} | {', '.join(str(s) for s in e['steps'])} | {', '.join(e['precision'])} "
                     f"| {', '.join('yes' if c else 'no' for c in e['compile'])} | {overrides} |")
    groups = {g: s for g, s in summary["selection"].items() if len(s["arms"]) > 1}
    if groups:
        lines += ["", "Selection on val, report on test (per group, the arm with the best mean val mR_t2i):", "",
                  "| group | arms | selected | val mR_t2i | test mR_t2i | test i2t mR |",
                  "|---|---|---|---:|---:|---:|"]
        for group, s in groups.items():
            lines.append(f"| {group} | {', '.join(s['arms'])} | {s['selected']} | {_pm(s['val_mR_t2i'])} | "
                         f"{_pm(s['test_mR_t2i'])} | {_pm(s['test_mR_i2t'])} |")
    every = f"every {p['eval_every'][0]} steps" if len(p["eval_every"]) == 1 else "each arm's own interval"
    for reference, ttq in (summary.get("time_to_quality") or {}).items():
        lines += ["", f"Time to quality, threshold = {TTQ_REFERENCES[reference].format(arm=ref)}: "
                  f"{ttq['threshold_mR_t2i']:.2f}. Training FLOPs and wall time until the val mR_t2i first reaches "
                  f"it, checked at every validation ({every}); the whole {ref} run: "
                  f"{_flops(ttq.get('pairs_run_flops'))} TFLOP, {ttq['pairs_run_train_wall_s']:.0f} s.", "",
                  f"| {label} | reached | TFLOP | ratio to {ref}' run FLOPs | train wall (s) | step "
                  f"| ratio to {ref}' run time | ratio to {ref}' time to it |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for arm, e in ttq["methods"].items():
            ratios = [f"{e[key]:.2f}" if e.get(key) is not None else "–"
                      for key in ("flops_ratio_to_pairs_run", "ratio_to_pairs_run", "ratio_to_pairs")]
            flops = _pm({k: v / 1e12 for k, v in e["flops"].items() if k != "n"} | {"n": e["flops"]["n"]})
            lines.append(f"| {arm} | {e['reached']} | {flops} | {ratios[0]} | {_pm(e['train_wall_s'], '{:.0f}')} | "
                         f"{_pm(e['step'], '{:.0f}')} | {ratios[1]} | {ratios[2]} |")
    lines += _goal_lines(summary.get("goal"))
    for key, unit in (("quality_at_third_flops", "FLOPs"), ("quality_at_third", "training wall time")):
        third = summary.get(key)
        if third:
            cells = ", ".join(f"{arm} {_pm(e['mR_t2i'])}" for arm, e in third["methods"].items())
            lines += ["", f"Val mR_t2i at a third of {ref}' {unit} (the last validation before it): {cells}."]
    return "\n".join(lines)


def _goal_lines(goal: Mapping[str, Any] | None) -> list[str]:
    if not goal:
        return []
    tolerance = (" (less the pooled std of the two counts as reached)" if goal["tolerance"] == "pooled_std"
                 else f" (less {goal['tolerance']:g} points counts as reached)" if goal["tolerance"] else "")
    source = (f"the reference study's {goal['arm']} runs, seeds {goal['reference_seeds']}, "
              f"{', '.join(str(s) for s in goal['reference_steps']) or '?'} steps" if goal["external_reference"]
              else f"this study's {goal['arm']} runs")
    targets = " and ".join(f"test {m} {_pm(t)}" for m, t in goal["targets"].items())
    lines = ["", f"Goal: within {goal['fraction']:.2f} of the run FLOPs of {goal['arm']} "
             f"({_flops(goal['reference_flops'])} TFLOP per run; {source}), reach its final {targets}{tolerance}. "
             "One seed has no std: such a row is not evidence.", ""]
    head = "| arm | seeds | run FLOPs / reference | within budget | " + " | ".join(
        f"final test {m} | minus target | tolerance | reached" for m in goal["metrics"]) + \
        f" | FLOPs to reach {goal['metrics'][0]} on val / reference (per seed) | met |"
    lines += [head, "|---|---:|---:|---|" + "---:|---:|---:|---|" * len(goal["metrics"]) + "---|---|"]
    for arm, e in goal["arms"].items():
        cells = [arm, str(e["seeds"]), f"{e['run_flops_ratio']:.2f}", "yes" if e["within_budget"] else "no"]
        for m in goal["metrics"]:
            entry = e["metrics"][m]
            cells += [_pm(entry["final"]), f"{entry['difference']:+.2f}", f"{entry['tolerance']:.2f}",
                      "yes" if entry["reached"] else "no"]
        cells += [", ".join("not reached" if r is None else f"{r:.2f}" for r in e["flops_ratio_per_seed"]),
                  ("**yes**" if e["met"] else "no") + ("" if e["evidence"] else " (1 seed)")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_recommendation(summary: Mapping[str, Any], advice: Mapping[str, Any]) -> str:
    """The recommendation in words, with its evidence (val and test ``mR_t2i`` of the winner, the difference to
    the runner-up and to the reference against their seed noise)."""
    arm = advice["arm"]
    lines = [f"Recommendation: **{arm}** (best mean val mR_t2i {_pm(advice['val_mR_t2i'])}; its test mR_t2i "
             f"{_pm(advice['test_mR_t2i'])}; ranking on val: {', '.join(advice['ranking'])})."]
    for c in advice["comparisons"]:
        verdict = ("within seed noise: the data do not tell them apart at this budget" if c["within_noise"]
                   else "more than the seed noise")
        lines.append(f"- against {c['against']}: {c['difference']:+.2f} points on val, pooled seed std "
                     f"{c['pooled_std']:.2f} over {c['seeds']} seed(s): {verdict}.")
    if advice["within_noise"]:
        lines.append("When arms are within noise, prefer the cheaper one per step (GFLOP/step in the table) or "
                     "spend more budget or seeds on the tied arms.")
    return "\n".join(lines)
