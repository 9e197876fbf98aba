"""Method study: every registered training method under one fixed budget, on UCM-Captions or RSICD.

Protocol
--------
- Data: ``--dataset ucm`` (UCM-Captions) or ``rsicd`` (RSICD) from ``--data-dir`` (a Karpathy caption file,
  ``images/``, ``labels.csv``; see docs/datasets.md), written once into WebDataset shards with ``wfa.data.writer.write_shards``
  (cached in ``--shards-dir``). Train on ``train``, select on ``val``, report on ``test``; split sizes and the
  shuffle buffer come from the shards' ``index.json``.
- Same for every method: model (``--model``, random init), input size, optimiser (AdamW, cosine
  schedule with warm-up), augmentation, batch size, seeds, sample order (a shuffle buffer holding the whole
  train split, in pairs for the pair views), and the **budget**.
- **Budget** = the same number of optimizer steps (``--budget-steps``) at the same batch size
  (``--batch-size``) of *samples*: for ``pairs`` / ``pairs-dedup`` a sample is one (image, caption) pair, for
  every other method one image with its captions. So every run encodes ``budget x batch`` images; the
  captions encoded differ by method and are reported, as are the training wall time and FLOPs.
- **FLOPs**: every ``--flops-every``-th step runs under ``torch.utils.flop_counter.FlopCounterMode``
  (forward + backward of both towers and the loss); a run's FLOPs per step is the mean of those, and its
  cumulative FLOPs at step s are ``s x`` that mean.
- **Training wall time** excludes validation and checkpoint writing: the ``train_wall_s`` that the training
  loop records with every validation in ``metrics.jsonl`` (its clock stops during validation and checkpoints).
- **Validation curve**: val retrieval every ``--eval-every`` steps, stamped with the training wall time,
  the FLOPs and the images/captions encoded up to that step.
- **Checkpoint selection**: the checkpoint with the best val ``mR_t2i`` (ties: the earliest). Test
  recalls are reported for that checkpoint (``best_val``) and for the last one (``final``); methods with an
  aggregator also get image-to-text against the aggregated gallery (one fused text per image).
- **Time-to-quality**: for each run, the training wall time and FLOPs (and steps, captions encoded) of the
  first validation point whose val ``mR_t2i`` reaches a threshold; "not reached" otherwise; resolution
  ``--eval-every`` steps. Two thresholds: the final *test* ``mR_t2i`` of ``pairs`` (mean over its seeds; the
  issue's definition) and, as a check that does not compare val against test, its final *val* ``mR_t2i``.
  The goal compares with pairs' whole training FLOPs and wall time: a method meets it when every seed reaches
  the test threshold within a third of pairs' mean training FLOPs and its mean final test ``mR_t2i`` is at least
  pairs' minus the pooled standard deviation (``summary.json["goal"]``, a table in ``summary.md``).
- **Chance**: a random ranking gives t2i R@k = k / N_test (printed with the table).

Outputs (``--out``, default ``benchmarks/study``): ``runs/<method>-s<seed>.json`` per run (skipped when it
exists with the same settings: the study is resume-safe), ``weights/attention-s<seed>.json`` (the learned
attention weights beside the BLEU weights of every test caption, for ``ablations.py`` and the notebook),
``summary.json`` and ``summary.md`` (the table, also printed). Run directories with checkpoints and
``metrics.jsonl`` go to ``--runs-dir`` (checkpoints are deleted after the test evaluation unless
``--keep-checkpoints``). A run that was interrupted (killed, end of a session) continues exactly from its
newest checkpoint (every ``--eval-every`` steps) when the study is started again with the same settings;
its wall time counts the steps it trained, not the work lost after that checkpoint (``"resumed": true``).

Threads: one torch thread by default (``--threads``) plus one loader worker process. On a shared machine
more OpenMP threads than free cores make every step many times slower (measured: 10-20x at load 6 on 2
cores); on an idle machine ``--threads 2`` is faster. Wall times are only comparable within one study.

Usage::

    python scripts/bench/method_study.py --dataset ucm                  # all methods x 3 seeds on UCM
    python scripts/bench/method_study.py --dataset rsicd --methods pairs,bleu-subset --seeds 3
    python scripts/bench/method_study.py --dataset rsicd --summarize    # tables from the finished runs only
    python scripts/bench/method_study.py --quick --out /tmp/q           # a smoke run (tests)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_json, write_result  # noqa: E402

TEST_COLUMNS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "mR_t2i")
AGG_COLUMNS = ("agg_i2t_r1", "agg_i2t_r5", "agg_i2t_r10", "agg_mR_i2t")
RESULT_VERSION = 3

# The datasets the study knows: folder under the shared data, caption file, shard size, defaults that differ.
DATASETS = {
    "ucm": {"name": "UCM-Captions", "folder": "ucm-captions", "captions": "dataset.json", "shard_size": 200,
            "defaults": {"model": "wfa-vit-tiny", "budget_steps": 400, "eval_every": 40, "warmup_steps": 40}},
    "rsicd": {"name": "RSICD", "folder": "rsicd", "captions": "dataset_rsicd.json", "shard_size": 500,
              "defaults": {"model": "wfa-vit-tiny-shallowtext", "budget_steps": 3000, "eval_every": 250,
                           "warmup_steps": 100}},
}
# Full-study defaults (the dataset's own ones above take precedence).
DEFAULTS = {"image_size": 64, "batch_size": 32, "lr": 5e-4, "weight_decay": 0.2, "seeds": 3, "limit_images": None,
            "num_workers": 1, "flops_every": 10}
# --quick: a smoke test of the whole pipeline in well under a minute (tests/test_study.py).
QUICK = {"model": "wfa-vit-micro", "image_size": 32, "batch_size": 8, "budget_steps": 4, "eval_every": 2,
         "lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.2, "seeds": 1, "limit_images": 16,
         "num_workers": 0, "flops_every": 2, "methods": ("pairs", "bleu")}
PAIR_VIEWS = ("pairs", "distinct-pairs")


# -------------------------------------------------------------------------------------------- shards


def subset_json(captions_json: Path, limit: int, out: Path) -> Path:
    """Write a Karpathy JSON with the first ``limit`` images of each split of ``captions_json``."""
    from wfa.data.karpathy import load_karpathy

    data = load_karpathy(captions_json)
    kept, per_split = [], {}
    for entry in data["images"]:
        split = entry.get("split", "train")
        if per_split.get(split, 0) < limit:
            per_split[split] = per_split.get(split, 0) + 1
            kept.append(entry)
    out.write_text(json.dumps({**data, "images": kept}))
    return out


def ensure_shards(dataset: str, data_dir: Path, shards_dir: Path, limit_images: int | None) -> dict:
    """Write the ``dataset``'s shards into ``shards_dir`` unless an index is already there; return the index.

    ``limit_images`` keeps the first N images of every split (a small subset for smoke runs). An existing
    index whose split sizes do not match the request is an error (use another ``--shards-dir``).
    """
    from wfa.data.karpathy import KarpathyReader, read_karpathy_captions
    from wfa.data.loader import read_index
    from wfa.data.writer import write_shards

    spec = DATASETS[dataset]
    captions = data_dir / spec["captions"]
    if not captions.is_file():
        raise FileNotFoundError(f"{captions} not found: give --data-dir (the folder with {spec['captions']}, "
                                "images/)")
    sizes: dict[str, int] = {}
    for entry in read_karpathy_captions(captions, default_split="train"):
        sizes[entry.split] = sizes.get(entry.split, 0) + 1
    expected = {split: min(n, limit_images) if limit_images else n for split, n in sizes.items()}
    if (shards_dir / "index.json").is_file():
        index = read_index(shards_dir)
        have = {split: info["num_samples"] for split, info in index["splits"].items()}
        if have != expected:
            raise ValueError(f"{shards_dir} holds shards of another size ({have}, wanted {expected}): "
                             "give another --shards-dir or delete it")
        print(f"shards: reusing {shards_dir} ({have})")
        return index
    shards_dir.parent.mkdir(parents=True, exist_ok=True)
    if limit_images:
        captions = subset_json(captions, limit_images, shards_dir.parent / f"{shards_dir.name}-subset.json")
    labels = data_dir / "labels.csv"
    reader = KarpathyReader(captions, data_dir / "images", labels=labels if labels.is_file() else None)
    index = write_shards(reader, shards_dir, shard_size=spec["shard_size"], progress=False)
    print(f"shards: wrote {index['written']} of {index['read']} read ({index['rejected']} rejected) to {shards_dir}")
    return index


# ---------------------------------------------------------------------------------------------- runs


def settings_from_args(args: argparse.Namespace, index: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines a run apart from method and seed (compared when resuming).

    The shuffle buffer holds the whole train split (``index.json``), so every view is shuffled globally.
    """
    return {"version": RESULT_VERSION, "dataset": args.dataset, "model": args.model, "image_size": args.image_size,
            "batch_size": args.batch_size, "budget_steps": args.budget_steps, "eval_every": args.eval_every,
            "lr": args.lr, "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay,
            "limit_images": args.limit_images, "num_workers": args.num_workers, "augment": True,
            "max_captions": 5, "attention_temperature": args.attention_temperature,
            "aggregator_lr_scale": args.aggregator_lr_scale,
            "shuffle_images": index["splits"]["train"]["num_samples"], "flops_every": args.flops_every,
            "keep_prob": args.keep_prob, "hybrid_mix": args.hybrid_mix,
            **({"overrides": list(args.set)} if args.set else {})}


def run_config(settings: dict[str, Any], method: str, seed: int, shards: Path, run_dir: Path):
    """The :class:`wfa.config.Config` of one run: identical for every method except ``method``."""
    from wfa.config import config_from_dict

    eval_every = settings["eval_every"]
    extra = settings.get("overrides", [])  # --set: any other config key, the same for every method of the study
    return config_from_dict({
        "method": method, "seed": seed, "out": str(run_dir),
        "data": {"shards": str(shards), "split": "train", "val_split": "val",
                 "max_captions": settings["max_captions"], "image_size": settings["image_size"],
                 "num_workers": settings["num_workers"], "shuffle": settings["shuffle_images"], "augment": settings["augment"]},
        "model": {"name": settings["model"], "pretrained": None, "trim_text": True},
        "aggregator": {"temperature": settings["attention_temperature"], "lr_scale": settings["aggregator_lr_scale"]},
        "method_options": {"keep_prob": settings["keep_prob"], "hybrid_mix": settings["hybrid_mix"]},
        "train": {"batch_size": settings["batch_size"], "steps": settings["budget_steps"], "lr": settings["lr"],
                  "weight_decay": settings["weight_decay"], "warmup_steps": settings["warmup_steps"],
                  "grad_clip": 1.0, "precision": "no", "log_every": math.gcd(eval_every, 10),
                  "eval_every": eval_every, "checkpoint_every": eval_every, "keep_checkpoints": 0,
                  "count_flops_every": settings["flops_every"], "tensorboard": False},
    }, extra)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def validation_curve(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Val points: step, training wall time, images and captions encoded up to it, and the val metrics.

    All come from the loop's ``val`` records (``train_wall_s``, ``images_seen``, ``captions_seen``,
    ``flops_per_step``, ``val/*``); FLOPs up to a point are filled in by :func:`add_flops`.
    """
    return [{"step": r["step"], "train_wall_s": r["train_wall_s"], "images_encoded": r["images_seen"],
             "captions_encoded": r["captions_seen"], "flops_per_step": r.get("flops_per_step"),
             "flops": r.get("flops"),
             **{key[len("val/"):]: value for key, value in r.items() if key.startswith("val/")}}
            for r in records if r.get("event") == "val"]


def add_flops(curve: list[dict[str, Any]], flops_per_step: float | None) -> None:
    """Stamp every val point with the training FLOPs up to it: the loop's own count (per phase: a resolution
    schedule or patch dropout change the cost per step) where the record has it, else ``step x`` the run's mean
    FLOPs per step (records of wfa before the phases)."""
    for point in curve:
        if point.get("flops") is None:
            point["flops"] = point["step"] * flops_per_step if flops_per_step else None


def evaluate_checkpoint(checkpoint: Path, run_dir: Path, settings: dict[str, Any], shards: Path,
                        split: str = "test", curve_k: int = 20):
    """Retrieval on ``split`` of one training checkpoint: ``(metrics, recall curve, EncodedSet)``.

    The aggregator (for ``mean``/``bleu``/``attention``) is rebuilt from the run's ``aggregator.safetensors``
    description and loaded with the checkpoint's aggregator state, so the aggregated-gallery recalls and
    the weights it gives every caption come out too.
    """
    import torch

    from wfa.aggregation import load_aggregator
    from wfa.checkpoint import read_checkpoint
    from wfa.eval import evaluate
    from wfa.model import create_model

    state = read_checkpoint(checkpoint)
    clip, tokenizer = create_model(settings["model"], image_size=settings["image_size"])
    clip.load_state_dict(state["model"])
    aggregator = None
    if state.get("aggregator") is not None:
        aggregator = load_aggregator(run_dir / "aggregator.safetensors", state_dict=state["aggregator"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = evaluate(clip, tokenizer, shards, split, aggregator, device=device, image_size=settings["image_size"],
                      curve_k=curve_k)
    return report.metrics, report.recall_curve(), report.encoded


def weights_record(encoded, method: str, seed: int, step: int) -> dict[str, Any]:
    """Per test caption: its image, text, BLEU weight (shards) and the aggregator's weight."""
    return {"method": method, "seed": seed, "checkpoint_step": step, "split": "test",
            "image_ids": list(encoded.image_ids), "captions": list(encoded.captions),
            "text_to_image": encoded.text_to_image.tolist(), "bleu_weights": encoded.caption_weights.tolist(),
            "learned_weights": encoded.agg_weights.tolist()}


def run_one(method: str, seed: int, settings: dict[str, Any], shards: Path, runs_dir: Path, out: Path,
            keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one (method, seed), select on val, evaluate on test; write and return the result record."""
    import torch

    from wfa.methods import create_method
    from wfa.trainer import train

    run_dir = runs_dir / f"{method}-s{seed}"
    marker = run_dir / "study_settings.json"
    try:  # an unreadable marker is treated like another study's folder
        same_settings = json.loads(marker.read_text()) == settings
    except (OSError, UnicodeDecodeError, ValueError):
        same_settings = False
    interrupted = same_settings and any((run_dir / "checkpoints").glob("step_*.pt"))
    if run_dir.exists() and not interrupted:  # another study's or a checkpoint-less run: start clean
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings))
    cfg = run_config(settings, method, seed, shards, run_dir)
    if interrupted:  # continue exactly from its newest checkpoint (the loop drops the later metrics records)
        cfg.resume = "latest"
    load_before = os.getloadavg()
    started = time.perf_counter()
    summary = train(cfg)
    curve = validation_curve(read_metrics(run_dir / "metrics.jsonl"))
    if not curve:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no validation record")
    add_flops(curve, summary["flops_per_step"])
    best = max(curve, key=lambda p: (p["mR_t2i"], -p["step"]))
    final = curve[-1]
    checkpoints = run_dir / "checkpoints"
    test_best, recall_best, encoded = evaluate_checkpoint(checkpoints / f"step_{best['step']:06d}.pt", run_dir,
                                                          settings, shards)
    if best["step"] == final["step"]:
        test_final, recall_final = test_best, recall_best
    else:
        test_final, recall_final, _ = evaluate_checkpoint(checkpoints / f"step_{final['step']:06d}.pt", run_dir,
                                                          settings, shards)
    weights_file = None
    if cfg.method == "attention":
        weights_file = write_json(out / "weights" / f"{method}-s{seed}.json",
                                  weights_record(encoded, method, seed, best["step"]))
    if not keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    result = {
        "method": method, "seed": seed, "settings": settings,
        "budget": {"steps": summary["steps"], "batch_size": settings["batch_size"],
                   "sample": "(image, caption) pair" if create_method(method).view in PAIR_VIEWS
                   else "image with its captions"},
        "train_wall_s": final["train_wall_s"], "loop_wall_s": summary["wall_s"],
        "flops_per_step": summary["flops_per_step"], "train_flops": final["flops"],
        "run_wall_s": time.perf_counter() - started,
        "images_encoded": summary["images_seen"], "captions_encoded": summary["captions_seen"],
        "best_val": {"step": best["step"], "train_wall_s": best["train_wall_s"], "val_mR_t2i": best["mR_t2i"],
                     "test": test_best, "recall_curve": recall_best},
        "final": {"step": final["step"], "val_mR_t2i": final["mR_t2i"], "test": test_final,
                  "recall_curve": recall_final},
        "val_curve": curve, "final_loss": summary["final_loss"], "resumed": interrupted,
        "weights_file": str(weights_file) if weights_file else None, "run_dir": str(run_dir),
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
    }
    return result


# ------------------------------------------------------------------------------------------- summary


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of ``values``."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "n": int(array.size)}


TTQ_REFERENCES = {
    "test": "the mean final test mR_t2i of pairs (the issue's definition; test and val are different images)",
    "val": "the mean final val mR_t2i of pairs (val against val: the check that does not mix splits)",
}


def time_to_quality(results: Sequence[dict[str, Any]], reference: str = "test") -> dict[str, Any] | None:
    """Per run, the first val point whose ``mR_t2i`` reaches pairs' mean final ``mR_t2i`` on ``reference``.

    ``reference`` is ``"test"`` or ``"val"`` (see :data:`TTQ_REFERENCES`); None without pairs runs. Ratios are
    against pairs' whole training FLOPs and wall time (the goal: "in at most a third of its FLOPs") and
    against pairs' own time to the threshold.
    """
    pairs = [r for r in results if r["method"] == "pairs"]
    if not pairs:
        return None
    final = {"test": lambda r: r["final"]["test"]["mR_t2i"], "val": lambda r: r["final"]["val_mR_t2i"]}[reference]
    threshold = float(np.mean([final(r) for r in pairs]))
    per_method: dict[str, Any] = {}
    for r in results:
        hit = next((p for p in r["val_curve"] if p["mR_t2i"] >= threshold), None)
        entry = per_method.setdefault(r["method"], {"runs": []})
        entry["runs"].append({"seed": r["seed"], "reached": hit is not None,
                              "train_wall_s": hit["train_wall_s"] if hit else None,
                              "flops": hit["flops"] if hit else None,
                              "step": hit["step"] if hit else None,
                              "captions_encoded": hit["captions_encoded"] if hit else None,
                              "fraction_of_run_wall": hit["train_wall_s"] / r["train_wall_s"] if hit else None})
    pairs_time = mean_std([run["train_wall_s"] for run in per_method["pairs"]["runs"] if run["reached"]])["mean"]
    pairs_run = mean_std([r["train_wall_s"] for r in pairs])["mean"]
    pairs_flops = mean_std([r.get("train_flops") for r in pairs])["mean"]
    for entry in per_method.values():
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
    return {"reference": reference, "threshold_mR_t2i": threshold,
            "definition": f"first validation point whose val mR_t2i >= {TTQ_REFERENCES[reference]}; training "
                          "wall time excludes validation and checkpointing; resolution = eval_every",
            "pairs_run_train_wall_s": pairs_run, "pairs_run_flops": pairs_flops, "methods": per_method}


def quality_at_fraction(results: Sequence[dict[str, Any]], fraction: float = 1 / 3,
                        cost: str = "train_wall_s") -> dict[str, Any] | None:
    """The goal seen from the other side: each method's val ``mR_t2i`` at ``fraction`` of pairs' training cost.

    ``cost`` is ``"train_wall_s"`` or ``"flops"``. Per run, the last validation point at or before ``fraction``
    x pairs' mean training cost (None when a run has none that early); mean ± std over seeds per method.
    None without pairs runs (or without FLOPs for ``"flops"``).
    """
    pairs = [r for r in results if r["method"] == "pairs"]
    total = {"train_wall_s": "train_wall_s", "flops": "train_flops"}[cost]
    if not pairs or any(r.get(total) is None for r in pairs):
        return None
    budget = fraction * float(np.mean([r[total] for r in pairs]))
    per_method: dict[str, Any] = {}
    for r in results:
        point = next((p for p in reversed(r["val_curve"]) if p.get(cost) is not None and p[cost] <= budget), None)
        entry = per_method.setdefault(r["method"], {"mR_t2i": [], "step": []})
        entry["mR_t2i"].append(point["mR_t2i"] if point else None)
        entry["step"].append(point["step"] if point else None)
    return {"fraction": fraction, "cost": cost, "budget": budget,
            "methods": {m: {"mR_t2i": mean_std(e["mR_t2i"]), "step": e["step"]} for m, e in per_method.items()}}


def goal_check(results: Sequence[dict[str, Any]], fraction: float = 1 / 3,
               reference: Sequence[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The issue's goal, per method: on every seed a val point reaches pairs' mean final test ``mR_t2i`` within
    ``fraction`` of pairs' mean training FLOPs, and the method's mean final test ``mR_t2i`` is at least pairs'
    minus the pooled standard deviation of the two.

    ``reference``: the pairs runs that set the target (default: this study's; give another study's pairs runs
    to judge runs trained on a smaller budget, whose pairs rows are then judged too). None without pairs runs
    that counted FLOPs.
    """
    pairs_runs = list(reference) if reference is not None else [r for r in results if r["method"] == "pairs"]
    if not pairs_runs or any(not r.get("train_flops") for r in pairs_runs):
        return None
    pairs = mean_std([r["final"]["test"]["mR_t2i"] for r in pairs_runs])
    pairs_flops = float(np.mean([r["train_flops"] for r in pairs_runs]))
    methods = {}
    for method in dict.fromkeys(r["method"] for r in results):
        if method == "pairs" and reference is None:
            continue
        runs = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        hits = [next((p for p in r["val_curve"] if p["mR_t2i"] >= pairs["mean"]), None) for r in runs]
        ratios = [hit["flops"] / pairs_flops if hit and hit.get("flops") else None for hit in hits]
        final = mean_std([r["final"]["test"]["mR_t2i"] for r in runs])
        fast = all(r is not None and r <= fraction for r in ratios)
        pooled = math.sqrt((final["std"] ** 2 + pairs["std"] ** 2) / 2)
        good = final["mean"] >= pairs["mean"] - pooled
        methods[method] = {"seeds": len(runs), "flops_ratio_per_seed": ratios, "final_mR_t2i": final,
                           "run_flops_ratio": float(np.mean([r["train_flops"] for r in runs])) / pairs_flops,
                           "pooled_std": pooled, "difference_to_pairs": final["mean"] - pairs["mean"],
                           "fast_enough": fast, "good_enough": good, "met": fast and good}
    return {"fraction": fraction, "threshold_mR_t2i": pairs["mean"], "pairs_final_mR_t2i": pairs,
            "pairs_seeds": pairs["n"], "pairs_run_flops": pairs_flops,
            "reference": None if reference is None else {
                "budget_steps": pairs_runs[0]["settings"]["budget_steps"], "seeds": [r["seed"] for r in pairs_runs]},
            "methods": methods}


def summarize(results: Sequence[dict[str, Any]], index: dict[str, Any], settings: dict[str, Any],
              goal_reference: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Aggregate the run records over seeds: test recalls (mean/std), costs, curves, time-to-quality and the
    goal (against ``goal_reference``'s pairs runs when given, see :func:`goal_check`)."""
    from wfa.eval import chance_recalls

    n_test = index["splits"]["test"]["num_samples"]
    k_mean = float((index.get("captions") or {}).get("k_mean") or 5)
    methods: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in results):
        runs = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
        for selection in ("best_val", "final"):
            columns = TEST_COLUMNS + (AGG_COLUMNS if "agg_mR_i2t" in runs[0][selection]["test"] else ())
            entry[selection] = {c: mean_std([r[selection]["test"][c] for r in runs]) for c in columns}
            entry[selection]["step"] = [r[selection]["step"] for r in runs]
        for key in ("train_wall_s", "images_encoded", "captions_encoded", "flops_per_step", "train_flops"):
            entry[key] = mean_std([r[key] for r in runs])
        curves = [r["best_val"]["recall_curve"] for r in runs]
        entry["recall_curve"] = {"k": curves[0]["k"],
                                 "t2i": np.mean([c["t2i"] for c in curves], axis=0).tolist(),
                                 "i2t": np.mean([c["i2t"] for c in curves], axis=0).tolist()}
        entry["val_curves"] = [{"seed": r["seed"], "step": [p["step"] for p in r["val_curve"]],
                                "train_wall_s": [p["train_wall_s"] for p in r["val_curve"]],
                                "flops": [p.get("flops") for p in r["val_curve"]],
                                "mR_t2i": [p["mR_t2i"] for p in r["val_curve"]]} for r in runs]
        methods[method] = entry
    return {"dataset": DATASETS[settings["dataset"]]["name"], "settings": settings, "num_test_images": n_test,
            "num_test_captions": int(round(n_test * k_mean)), "chance": chance_recalls(n_test, k_mean),
            "methods": methods,
            "time_to_quality": {ref: ttq for ref in TTQ_REFERENCES if (ttq := time_to_quality(results, ref))} or None,
            "quality_at_third": quality_at_fraction(results),
            "quality_at_third_flops": quality_at_fraction(results, cost="flops"),
            "goal": goal_check(results, reference=goal_reference)}


def _pm(stat: dict[str, float], fmt: str = "{:.2f}") -> str:
    if not stat or stat.get("n", 0) == 0 or math.isnan(stat["mean"]):
        return "–"
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std'])}"


def _flops(value: float | None) -> str:
    return f"{value / 1e12:.2f}" if value else "–"


def markdown_summary(summary: dict[str, Any]) -> str:
    """The study's Markdown tables: test recalls (best-val checkpoint), costs, time-to-quality, chance."""
    s = summary["settings"]
    lines = [f"{summary['dataset']} test split ({summary['num_test_images']} images, {summary['num_test_captions']} "
             f"caption queries); {s['model']} at {s['image_size']} px, {s['budget_steps']} steps x "
             f"{s['batch_size']} samples, checkpoint with the best val mR_t2i; mean ± std over seeds. "
             "GFLOP/step: forward + backward of one step; TFLOP: the whole run; agg i2t: image-to-text against "
             "the aggregated gallery (one fused text per image).", "",
             "| method | seeds | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | mR | mR_t2i "
             "| final-step mR_t2i | agg i2t mR | GFLOP/step | TFLOP | train wall (s) | images enc. | captions enc. |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, e in summary["methods"].items():
        per_step = e["flops_per_step"]["mean"] if e["flops_per_step"]["n"] else None
        row = [method, str(len(e["seeds"])), *(_pm(e["best_val"][c]) for c in TEST_COLUMNS),
               _pm(e["final"]["mR_t2i"]), _pm(e["best_val"].get("agg_mR_i2t", {})),
               f"{per_step / 1e9:.1f}" if per_step else "–",
               _flops(e["train_flops"]["mean"] if e["train_flops"]["n"] else None),
               _pm(e["train_wall_s"], "{:.0f}"), f"{e['images_encoded']['mean']:.0f}",
               f"{e['captions_encoded']['mean']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    chance = summary["chance"]
    lines.append("| chance | – | " + " | ".join(f"{chance[c]:.2f}" for c in TEST_COLUMNS) + " | | | | | | | |")
    for reference, ttq in (summary.get("time_to_quality") or {}).items():
        lines += ["", f"Time to quality, threshold = {TTQ_REFERENCES[reference]}: {ttq['threshold_mR_t2i']:.2f}. "
                  f"Training FLOPs and wall time until the val mR_t2i first reaches it, checked every "
                  f"{s['eval_every']} steps; pairs' whole run: {_flops(ttq.get('pairs_run_flops'))} TFLOP, "
                  f"{ttq['pairs_run_train_wall_s']:.0f} s.", "",
                  "| method | reached | TFLOP | ratio to pairs' run FLOPs | train wall (s) | step "
                  "| ratio to pairs' run time | ratio to pairs' time to it |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for method, e in ttq["methods"].items():
            ratios = [f"{e[key]:.2f}" if e.get(key) is not None else "–"
                      for key in ("flops_ratio_to_pairs_run", "ratio_to_pairs_run", "ratio_to_pairs")]
            flops = _pm({k: v / 1e12 for k, v in e["flops"].items() if k != "n"} | {"n": e["flops"]["n"]})
            lines.append(f"| {method} | {e['reached']} | {flops} | {ratios[0]} | {_pm(e['train_wall_s'], '{:.0f}')} | "
                         f"{_pm(e['step'], '{:.0f}')} | {ratios[1]} | {ratios[2]} |")
    goal = summary.get("goal")
    if goal:
        ref = goal.get("reference")
        source = (f"the {ref['budget_steps']}-step pairs runs (seeds {ref['seeds']}) of the reference study" if ref
                  else "this study's pairs runs")
        lines += ["", f"Goal: reach pairs' final test mR_t2i ({_pm(goal['pairs_final_mR_t2i'])}, {goal['pairs_seeds']} "
                  f"seed(s), {source}; {_flops(goal['pairs_run_flops'])} TFLOP per run) in <= {goal['fraction']:.2f} of "
                  "pairs' training FLOPs on every seed, with a final test mR_t2i >= pairs' minus the pooled std. One "
                  "seed has no std: such a row is not evidence.", "",
                  "| method | seeds | run FLOPs / pairs' run | FLOPs to reach it / pairs' run (per seed) | final test "
                  "mR_t2i | minus pairs | pooled std | fast enough | good enough | met |",
                  "|---|---:|---:|---|---:|---:|---:|---|---|---|"]
        for method, e in goal["methods"].items():
            ratios = ", ".join("not reached" if r is None else f"{r:.2f}" for r in e["flops_ratio_per_seed"])
            lines.append(f"| {method} | {e['seeds']} | {e['run_flops_ratio']:.2f} | {ratios} | {_pm(e['final_mR_t2i'])} | "
                         f"{e['difference_to_pairs']:+.2f} | {e['pooled_std']:.2f} | {'yes' if e['fast_enough'] else 'no'} | "
                         f"{'yes' if e['good_enough'] else 'no'} | {'**yes**' if e['met'] else 'no'} |")
    for key, unit in (("quality_at_third_flops", "FLOPs"), ("quality_at_third", "training wall time")):
        third = summary.get(key)
        if third:
            cells = ", ".join(f"{method} {_pm(e['mR_t2i'])}" for method, e in third["methods"].items())
            lines += ["", f"Val mR_t2i at a third of pairs' {unit} (the last validation before it): {cells}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (``--quick`` fills every unset option from the smoke preset)."""
    from wfa.config import AggregatorConfig
    from wfa.methods import MethodOptions, list_methods

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke preset: micro model at 32 px, 4 steps, 1 seed, pairs+bleu, 16 images per split")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ucm", help="default %(default)s")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(list_methods())} (default all)")
    p.add_argument("--seeds", type=int, help=f"number of seeds, 0..N-1 (default {DEFAULTS['seeds']})")
    p.add_argument("--first-seed", type=int, default=0,
                   help="start at this seed (two processes can share a study: one runs seeds 0..1, the other "
                        "--first-seed 2 --seeds 3)")
    p.add_argument("--budget-steps", type=int, help="optimizer steps per run (default: the dataset's, ucm 400, "
                   "rsicd 3000)")
    p.add_argument("--eval-every", type=int, help="validation interval in steps (default: ucm 40, rsicd 250)")
    p.add_argument("--flops-every", type=int, help=f"count FLOPs every N steps (default {DEFAULTS['flops_every']})")
    p.add_argument("--batch-size", type=int, help=f"samples per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--model", help="model name (default: ucm wfa-vit-tiny, rsicd wfa-vit-tiny-shallowtext)")
    p.add_argument("--image-size", type=int, help=f"input size in px (default {DEFAULTS['image_size']})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--warmup-steps", type=int, help="warm-up steps (default: ucm 40, rsicd 100)")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {DEFAULTS['weight_decay']})")
    p.add_argument("--attention-temperature", type=float, default=1.0,
                   help="softmax temperature of the attention aggregator's scores (default 1.0, the library's)")
    p.add_argument("--aggregator-lr-scale", type=float, default=AggregatorConfig.lr_scale,
                   help="the attention aggregator trains at lr x this (default %(default)s, the library's)")
    p.add_argument("--keep-prob", type=float, default=MethodOptions.keep_prob,
                   help="*-subset methods: caption keep probability (default %(default)s, the library's)")
    p.add_argument("--hybrid-mix", type=float, default=MethodOptions.hybrid_mix,
                   help="hybrid: weight of the fused-target loss (default %(default)s, the library's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config override for every run (repeatable), e.g. --set train.precision=bf16 "
                        "--set model.patch_dropout=0.5; part of the study's settings")
    p.add_argument("--limit-images", type=int, help="keep the first N images of each split (default all)")
    p.add_argument("--num-workers", type=int, help="loader worker processes (default 1; --quick: 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine more threads than free cores slow OpenMP down)")
    p.add_argument("--data-dir", type=Path, help="the dataset's folder (caption file, images/, labels.csv; default "
                   "$WFA_SHARED_DATA/<ucm-captions|rsicd>)")
    p.add_argument("--shards-dir", type=Path, help="shard cache (default runs/study-shards/<dataset>[-firstN])")
    p.add_argument("--runs-dir", type=Path, help="run directories: checkpoints, metrics.jsonl "
                   "(default runs/study-<dataset>)")
    p.add_argument("--out", type=Path, help="results (default benchmarks/study-<dataset>)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints")
    p.add_argument("--goal-reference", type=Path,
                   help="a study folder (--out of a run with a larger budget) whose pairs runs set the goal's target "
                        "quality and FLOPs (default: this study's pairs runs)")
    p.add_argument("--summarize", action="store_true",
                   help="train nothing: summarise every run record in --out/runs made with these settings "
                        "(whatever seeds each method has; --methods and --seeds are ignored)")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the ``--quick`` preset or the dataset's and the study's defaults; check them."""
    from wfa.methods import list_methods

    preset = QUICK if args.quick else {**DEFAULTS, **DATASETS[args.dataset]["defaults"]}
    for key, value in preset.items():
        if key != "methods" and getattr(args, key, None) is None:
            setattr(args, key, value)
    methods = args.methods.split(",") if args.methods else list(QUICK["methods"] if args.quick else list_methods())
    args.methods = [m.strip() for m in methods]
    unknown = [m for m in args.methods if m not in list_methods()]
    if unknown:
        raise SystemExit(f"method_study: unknown method(s) {unknown}; choose from {','.join(list_methods())}")
    if args.budget_steps < 1 or args.eval_every < 1 or args.seeds < 1 or args.flops_every < 0:
        raise SystemExit("method_study: --budget-steps, --eval-every and --seeds must be >= 1, --flops-every >= 0")
    if not 0 <= args.first_seed < args.seeds:
        raise SystemExit(f"method_study: --first-seed {args.first_seed} must be in 0..{args.seeds - 1} (--seeds)")
    suffix = f"-first{args.limit_images}" if args.limit_images else ""
    args.data_dir = args.data_dir or SHARED_DATA / DATASETS[args.dataset]["folder"]
    args.shards_dir = args.shards_dir or REPO / "runs" / "study-shards" / f"{args.dataset}{suffix}"
    args.runs_dir = args.runs_dir or REPO / "runs" / f"study-{args.dataset}"
    args.out = args.out or REPO / "benchmarks" / f"study-{args.dataset}"
    return args


def read_record(path: Path) -> dict[str, Any]:
    """A run record (JSON object); ``SystemExit`` naming the file when it is unreadable or not an object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exn:
        raise SystemExit(f"method_study: {path}: not a readable run record ({exn}); delete it to run it again")
    if not isinstance(record, dict):
        raise SystemExit(f"method_study: {path}: not a run record (a JSON object); delete it to run it again")
    return record


def collect_runs(runs_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The run records in ``runs_dir`` made with ``settings``, in method-registry order then seed; the others
    are counted and named on stderr. ``SystemExit`` when none matches."""
    from wfa.methods import list_methods

    records = [read_record(path) for path in sorted(runs_dir.glob("*-s*.json"))]
    other = [f"{r.get('method')}-s{r.get('seed')}" for r in records if r.get("settings") != settings]
    if other:
        print(f"[summarize] {len(other)} run record(s) made with other settings left out: {', '.join(other)}",
              file=sys.stderr)
    order = {m: i for i, m in enumerate(list_methods())}
    kept = sorted((r for r in records if r.get("settings") == settings),
                  key=lambda r: (r["method"] != "pairs", order.get(r["method"], len(order)), r["seed"]))
    if not kept:
        raise SystemExit(f"method_study: no run record in {runs_dir} was made with these settings")
    print(f"[summarize] {len(kept)} run record(s): " + ", ".join(f"{r['method']}-s{r['seed']}" for r in kept))
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the study and print the summary table."""
    args = resolve_args(build_parser().parse_args(argv))
    import torch

    torch.set_num_threads(args.threads)
    index = ensure_shards(args.dataset, args.data_dir, args.shards_dir, args.limit_images)
    settings = settings_from_args(args, index)
    reference = None
    if args.goal_reference:
        reference = [read_record(p) for p in sorted((args.goal_reference / "runs").glob("pairs-s*.json"))]
        if not reference:
            raise SystemExit(f"method_study: --goal-reference {args.goal_reference}: no runs/pairs-s*.json there")
        other = {k for r in reference for k, v in (r.get("settings") or {"settings": None}).items()
                 if k not in ("budget_steps", "eval_every") and v != settings.get(k)}
        if other:
            raise SystemExit(f"method_study: --goal-reference {args.goal_reference}: its pairs runs differ in "
                             f"{sorted(other)} (only the budget and the validation interval may differ)")
    results = collect_runs(args.out / "runs", settings) if args.summarize else []
    for seed in range(args.first_seed, 0 if args.summarize else args.seeds):
        for method in args.methods:
            path = args.out / "runs" / f"{method}-s{seed}.json"
            if path.is_file():
                previous = read_record(path)
                if previous.get("settings") != settings:
                    raise SystemExit(f"method_study: {path} was run with other settings ({previous.get('settings')}); "
                                     "use another --out or delete it")
                print(f"[skip] {method} seed {seed}: {path} exists")
                results.append(previous)
                continue
            print(f"[run] {method} seed {seed}: {settings['budget_steps']} steps x {settings['batch_size']}", flush=True)
            result = run_one(method, seed, settings, args.shards_dir, args.runs_dir, args.out, args.keep_checkpoints)
            write_json(path, result)
            results.append(result)
            print(f"[done] {method} seed {seed}: test mR_t2i {result['best_val']['test']['mR_t2i']:.2f} "
                  f"(best val step {result['best_val']['step']}), train wall {result['train_wall_s']:.0f} s",
                  flush=True)
    summary = summarize(results, index, settings, goal_reference=reference)
    summary = write_result(args.out / "summary.json", summary, argv=argv, script=__file__)
    table = markdown_summary(summary)
    (args.out / "summary.md").write_text(table + "\n")
    chance = summary["chance"]
    print(f"\nchance: t2i R@1/5/10 = {chance['t2i_r1']:.2f}/{chance['t2i_r5']:.2f}/{chance['t2i_r10']:.2f} % "
          f"(k / N_test, N_test = {summary['num_test_images']}), mR = {chance['mR']:.2f} %\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
