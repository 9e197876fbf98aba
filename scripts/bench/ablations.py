"""Ablations of the caption weights on UCM-Captions (BENCHMARKS.md, "Ablations of the weights").

Three parts, all written to ``--out`` (default ``benchmarks/study/ablations.json``):

1. **BLEU weight variants** (always; seconds): on every image of UCM-Captions, how the weights change
   between the default (linear normalisation of the uniqueness ``u``, exact copies collapsed,
   :func:`wfa.redundancy.bleu_uniqueness`), the temperature softmax ``softmax(u / tau)`` for several
   ``--taus`` (same function, ``tau=...``), and **no collapsing of exact copies**: every caption is its own
   hypothesis against all K-1 others, copies included (``u_k = clip(1 - mean_j BLEU(c_k, [c_j]) / 100, 0,
   1)``, ``w = u / sum u``), computed here with plain ``sacrebleu.sentence_bleu`` calls because the library
   deliberately has no switch for it. Reported per variant: mean normalised entropy, distance from
   uniform, largest weight, and on the images with exact copies the total weight on the copies (against
   their uniform share).
2. **Retrieval effect** (only with ``--budget-steps``): the ``bleu`` method of ``method_study.py`` trained
   with each variant's weights (``--retrieval-variants``), written into a copy of the study's shards whose
   ``json`` members carry the variant weights (images, captions and order unchanged), same settings and
   seeds as the study; test recalls of the best-val checkpoint (mean ± std over seeds).
3. **Learned attention vs BLEU** (when a trained attention run exists): per test caption, the weight the
   trained ``attention`` aggregator gives it against its BLEU weight; Pearson and Spearman correlation per
   image (mean over images whose weights are not constant) and pooled over all captions, plus how far the
   learned weights are from uniform. Sources: ``<study>/weights/attention-s*.json`` written by
   ``method_study.py``, or ``--attention-run DIR`` (a ``wfa train`` output with ``model_final.pt`` and
   ``aggregator.safetensors``) evaluated on ``--shards`` split ``test``.

Usage::

    python scripts/bench/ablations.py                              # parts 1 and 3 (from the study's weights)
    python scripts/bench/ablations.py --budget-steps 500 --seeds 3 # + part 2 (trains 3 variants x 3 seeds)
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_json, write_result  # noqa: E402

DEFAULT_TAUS = (0.03, 0.1, 0.3, 1.0)

WeightFn = Callable[[Sequence[str]], np.ndarray]


def _method_study():
    """The sibling ``method_study.py`` as a module (scripts/bench is not a package)."""
    spec = importlib.util.spec_from_file_location("method_study", Path(__file__).with_name("method_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ weight variants


def uniqueness_without_collapsing(captions: Sequence[str]) -> np.ndarray:
    """BLEU-uniqueness weights with every caption its own hypothesis, exact copies included.

    The library's definition minus its first step (collapsing copies): ``u_k = clip(1 - mean_{j != k}
    BLEU(c_k, [c_j]) / 100, 0, 1)`` with ``sacrebleu.sentence_bleu(..., lowercase=True)`` on normalised
    captions, ``w = u / sum(u)``; uniform when K = 1 or every ``u`` is 0.
    """
    import sacrebleu

    from wfa.redundancy import normalize_caption

    texts = [normalize_caption(c) for c in captions]
    k = len(texts)
    if k == 1:
        return np.ones(1)
    u = np.empty(k)
    for i, hyp in enumerate(texts):
        scores = [sacrebleu.sentence_bleu(hyp, [ref], lowercase=True).score for j, ref in enumerate(texts) if j != i]
        u[i] = min(max(1.0 - float(np.mean(scores)) / 100.0, 0.0), 1.0)
    return u / u.sum() if u.sum() > 0 else np.full(k, 1.0 / k)


def variant_functions(taus: Sequence[float]) -> dict[str, WeightFn]:
    """Name -> weight function of every variant: ``linear``, ``softmax_tau<t>``, ``no_collapse``."""
    from wfa.redundancy import bleu_uniqueness

    variants: dict[str, WeightFn] = {"linear": bleu_uniqueness}
    for tau in taus:
        variants[f"softmax_tau{tau:g}"] = lambda caps, tau=tau: bleu_uniqueness(caps, tau=tau)
    variants["no_collapse"] = uniqueness_without_collapsing
    return variants


def parse_variant(name: str) -> WeightFn:
    """The weight function of a variant name (``linear``, ``no_collapse``, ``softmax_tau0.1``)."""
    if name.startswith("softmax_tau"):
        try:
            tau = float(name[len("softmax_tau"):])
        except ValueError:
            raise SystemExit(f"ablations: bad variant {name!r}: write softmax_tau<number>, e.g. softmax_tau0.1")
        from wfa.redundancy import bleu_uniqueness

        return lambda captions: bleu_uniqueness(captions, tau=tau)
    table = variant_functions([])
    if name not in table:
        raise SystemExit(f"ablations: unknown variant {name!r}: linear, no_collapse or softmax_tau<number>")
    return table[name]


def copy_groups(captions: Sequence[str]) -> list[int]:
    """Per caption, how many captions of the image are exact copies of it (normalised, lower-cased)."""
    from wfa.redundancy import normalize_caption

    keys = [normalize_caption(c).lower() for c in captions]
    return [keys.count(key) for key in keys]


def weight_statistics(groups: Sequence[Sequence[str]], weights: Sequence[np.ndarray]) -> dict[str, Any]:
    """Entropy, distance from uniform, largest weight and the weight on exact copies of one variant."""
    import torch

    from wfa.aggregation import distance_from_uniform, weight_entropy

    k_max = max(len(g) for g in groups)
    w = torch.zeros(len(groups), k_max, dtype=torch.float64)
    mask = torch.zeros(len(groups), k_max, dtype=torch.bool)
    for i, row in enumerate(weights):
        w[i, : len(row)] = torch.as_tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = True
    on_copies, uniform_share = [], []
    for captions, row in zip(groups, weights):
        copies = np.asarray(copy_groups(captions)) > 1
        if copies.any():
            on_copies.append(float(np.asarray(row)[copies].sum()))
            uniform_share.append(float(copies.mean()))
    return {
        "normalised_entropy": float(weight_entropy(w, mask)),
        "distance_from_uniform": float(distance_from_uniform(w, mask)),
        "max_weight": float(np.mean([np.max(r) for r in weights])),
        "min_weight": float(np.mean([np.min(r) for r in weights])),
        "images_with_copies": len(on_copies),
        "weight_on_copies": float(np.mean(on_copies)) if on_copies else None,
        "uniform_share_of_copies": float(np.mean(uniform_share)) if uniform_share else None,
    }


def weights_ablation(groups: Sequence[Sequence[str]], taus: Sequence[float]) -> dict[str, Any]:
    """Part 1: statistics of every weight variant over ``groups`` and its correlation with ``linear``."""
    per_variant, stats = {}, {}
    for name, fn in variant_functions(taus).items():
        started = time.perf_counter()
        per_variant[name] = [np.asarray(fn(captions), dtype=np.float64) for captions in groups]
        stats[name] = {**weight_statistics(groups, per_variant[name]), "seconds": time.perf_counter() - started}
    linear = np.concatenate(per_variant["linear"])
    for name, rows in per_variant.items():
        pooled = np.concatenate(rows)
        stats[name]["pearson_vs_linear"] = pearson(pooled, linear)
        stats[name]["spearman_vs_linear"] = spearman(pooled, linear)
        stats[name]["max_abs_diff_vs_linear"] = float(np.max(np.abs(pooled - linear)))
    return {"num_images": len(groups), "num_captions": int(sum(len(g) for g in groups)), "variants": stats}


# ------------------------------------------------------------------------------------- correlations


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; ``None`` when either input is constant (undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 1e-24 else None


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); ``None`` when undefined."""
    return pearson(rankdata(a), rankdata(b))


def attention_vs_bleu(record: dict[str, Any]) -> dict[str, Any]:
    """Part 3 for one weights record (``learned_weights``, ``bleu_weights``, ``text_to_image`` per caption)."""
    learned = np.asarray(record["learned_weights"], dtype=np.float64)
    bleu = np.asarray(record["bleu_weights"], dtype=np.float64)
    owner = np.asarray(record["text_to_image"])
    per_image_p, per_image_s, tv, entropy = [], [], [], []
    for image in np.unique(owner):
        rows = owner == image
        p, s = pearson(learned[rows], bleu[rows]), spearman(learned[rows], bleu[rows])
        if p is not None:
            per_image_p.append(p)
        if s is not None:
            per_image_s.append(s)
        w = learned[rows]
        tv.append(0.5 * float(np.abs(w - 1.0 / len(w)).sum()))
        entropy.append(float(-(w * np.log(np.clip(w, 1e-300, None))).sum() / math.log(len(w))) if len(w) > 1 else 1.0)
    return {
        "source": record.get("source"), "seed": record.get("seed"), "checkpoint_step": record.get("checkpoint_step"),
        "num_images": int(len(np.unique(owner))), "num_captions": int(len(learned)),
        "pearson_per_image_mean": float(np.mean(per_image_p)) if per_image_p else None,
        "spearman_per_image_mean": float(np.mean(per_image_s)) if per_image_s else None,
        "images_with_defined_correlation": len(per_image_p),
        "pearson_pooled": pearson(learned, bleu), "spearman_pooled": spearman(learned, bleu),
        "learned_distance_from_uniform": float(np.mean(tv)), "learned_normalised_entropy": float(np.mean(entropy)),
        "learned_max_weight_mean": float(np.mean([learned[owner == i].max() for i in np.unique(owner)])),
    }


def weights_from_run(run_dir: Path, shards: Path, split: str = "test") -> dict[str, Any]:
    """Encode ``split`` with a trained attention run (``model_final.pt`` + ``aggregator.safetensors``) -> weights record."""
    import yaml

    from wfa.aggregation import load_aggregator
    from wfa.eval import evaluate
    from wfa.model import create_model

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    aggregator = load_aggregator(run_dir / "aggregator.safetensors")
    if aggregator.spec["name"] != "attention":
        raise SystemExit(f"ablations: {run_dir} trained the {aggregator.spec['name']!r} aggregator, not attention")
    clip, tokenizer = create_model(cfg["model"]["name"], pretrained=str(run_dir / "model_final.pt"),
                                   image_size=cfg["data"]["image_size"])
    encoded = evaluate(clip, tokenizer, shards, split, aggregator, image_size=cfg["data"]["image_size"]).encoded
    return {"source": str(run_dir), "seed": cfg.get("seed"), "checkpoint_step": "final", "split": split,
            "image_ids": list(encoded.image_ids), "captions": list(encoded.captions),
            "text_to_image": encoded.text_to_image.tolist(), "bleu_weights": encoded.caption_weights.tolist(),
            "learned_weights": encoded.agg_weights.tolist()}


# -------------------------------------------------------------------------------- retrieval variants


def write_variant_shards(src: Path, dst: Path, weight_fn: WeightFn, variant: str) -> dict[str, Any]:
    """Copy the shards of ``src`` to ``dst`` with each sample's ``weights.bleu`` replaced by ``weight_fn``.

    Tar members, their order and every other byte stay as they are; ``index.json`` gets a
    ``weights_variant`` entry. Returns the new index.
    """
    index = json.loads((src / "index.json").read_text())
    if (dst / "index.json").is_file():
        existing = json.loads((dst / "index.json").read_text())
        if existing.get("weights_variant") == variant and existing.get("splits") == index["splits"]:
            return existing
        raise SystemExit(f"ablations: {dst} holds other shards; delete it")
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rewritten = 0
    for info in index["splits"].values():
        for shard in info["shards"]:
            with tarfile.open(src / shard["name"]) as source, tarfile.open(tmp / shard["name"], "w") as target:
                for member in source.getmembers():
                    data = source.extractfile(member).read() if member.isfile() else None
                    if member.name.endswith(".json") and data is not None:
                        meta = json.loads(data)
                        meta.setdefault("weights", {})["bleu"] = np.asarray(weight_fn(meta["captions"])).tolist()
                        data = json.dumps(meta).encode("utf-8")
                        member.size = len(data)
                        rewritten += 1
                    target.addfile(member, io.BytesIO(data) if data is not None else None)
    index = {**index, "weights_variant": variant, "weights_variant_rewritten": rewritten}
    (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return index


def retrieval_ablation(args: argparse.Namespace, study) -> dict[str, Any]:
    """Part 2: the ``bleu`` method trained with each variant's weights (resume-safe, like the study)."""
    study_args = study.resolve_args(study.build_parser().parse_args(_study_argv(args)))
    source_index = study.ensure_shards("ucm", args.ucm_dir, study_args.shards_dir, study_args.limit_images)
    settings = study.settings_from_args(study_args, source_index)
    results: dict[str, list[dict[str, Any]]] = {}
    for variant in args.retrieval_variants:
        shards = study_args.shards_dir.with_name(f"{study_args.shards_dir.name}-weights-{variant}")
        write_variant_shards(study_args.shards_dir, shards, parse_variant(variant), variant)
        for seed in range(study_args.seeds):
            path = args.study_dir / "ablation_runs" / f"bleu-{variant}-s{seed}.json"
            if path.is_file() and json.loads(path.read_text()).get("settings") == settings:
                results.setdefault(variant, []).append(json.loads(path.read_text()))
                print(f"[skip] bleu weights={variant} seed {seed}: {path} exists")
                continue
            print(f"[run] bleu weights={variant} seed {seed}", flush=True)
            runs_dir = study_args.runs_dir / "ablations" / variant
            result = study.run_one("bleu", seed, settings, shards, runs_dir, args.study_dir / "ablation_runs" / variant)
            result["weights_variant"] = variant
            write_json(path, result)
            results.setdefault(variant, []).append(result)
    # The default weights are the study's own bleu runs when they were made with the same settings.
    baseline = [json.loads(p.read_text()) for p in sorted((args.study_dir / "runs").glob("bleu-s*.json"))]
    baseline = [r for r in baseline if r.get("settings") == settings]
    if baseline and "linear" not in results:
        results = {"linear (study's bleu runs)": baseline, **results}
    summary = study.summarize([{**r, "method": f"bleu[{v}]"} for v, rs in results.items() for r in rs],
                              source_index, settings)
    return {"settings": settings, "variants": summary["methods"], "chance": summary["chance"],
            "table": study.markdown_summary(summary)}


def _study_argv(args: argparse.Namespace) -> list[str]:
    """The ``method_study.py`` options that the retrieval ablation shares with the study."""
    argv = ["--dataset", "ucm", "--budget-steps", str(args.budget_steps), "--seeds", str(args.seeds), "--methods",
            "bleu", "--data-dir", str(args.ucm_dir), "--out", str(args.study_dir)]
    for flag, value in (("--eval-every", args.eval_every), ("--model", args.model), ("--image-size", args.image_size),
                        ("--batch-size", args.batch_size), ("--limit-images", args.limit_images),
                        ("--shards-dir", args.shards_dir), ("--runs-dir", args.runs_dir)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--quick"] if args.quick else [])


# ---------------------------------------------------------------------------------------------- main


def read_groups(ucm_dir: Path, limit: int | None = None) -> list[list[str]]:
    """The caption lists of UCM-Captions (all splits, file order; the first ``limit`` images if given)."""
    from wfa.data.karpathy import read_caption_groups

    groups = read_caption_groups(ucm_dir / "dataset.json")
    return groups[:limit] if limit else groups


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ucm-dir", type=Path, default=SHARED_DATA / "ucm-captions", help="the UCM-Captions folder")
    p.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS),
                   help="softmax temperatures to compare (default %(default)s)")
    p.add_argument("--limit-images", type=int, help="only the first N images (weights part; and per split for training)")
    p.add_argument("--study-dir", type=Path, default=REPO / "benchmarks" / "study",
                   help="the method study's --out (attention weights are read from it; default benchmarks/study)")
    p.add_argument("--attention-run", type=Path, action="append", default=[],
                   help="a trained attention run directory (model_final.pt, aggregator.safetensors); repeatable")
    p.add_argument("--shards", type=Path, help="shards for --attention-run (default: the study's shard cache)")
    p.add_argument("--out", type=Path, help="output JSON (default <study-dir>/ablations.json)")
    g = p.add_argument_group("retrieval effect (part 2; runs only with --budget-steps)")
    g.add_argument("--budget-steps", type=int, help="train bleu with each variant for this many steps")
    g.add_argument("--retrieval-variants", default="no_collapse,softmax_tau0.1",
                   help="variants to train (default %(default)s; the default linear weights are taken from the "
                        "study's bleu runs when their settings match, else add 'linear')")
    g.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    g.add_argument("--quick", action="store_true", help="method_study's --quick preset for the training runs")
    for flag in ("--eval-every", "--batch-size", "--image-size"):
        g.add_argument(flag, type=int, help="as in method_study.py (default: its default)")
    g.add_argument("--model", help="as in method_study.py")
    g.add_argument("--shards-dir", type=Path, help="as in method_study.py")
    g.add_argument("--runs-dir", type=Path, help="as in method_study.py")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in method_study.py)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablations and write one JSON."""
    args = build_parser().parse_args(argv)
    args.retrieval_variants = [v.strip() for v in args.retrieval_variants.split(",") if v.strip()]
    taus = [float(t) for t in args.taus.split(",") if t.strip()]
    out = args.out or args.study_dir / "ablations.json"
    import torch

    torch.set_num_threads(args.threads)
    study = _method_study()
    report: dict[str, Any] = {"dataset": "UCM-Captions"}

    groups = read_groups(args.ucm_dir, args.limit_images)
    report["weights"] = weights_ablation(groups, taus)
    print(f"weights: {report['weights']['num_images']} images, {report['weights']['num_captions']} captions")
    for name, s in report["weights"]["variants"].items():
        copies = "–" if s["weight_on_copies"] is None else f"{s['weight_on_copies']:.3f} (uniform {s['uniform_share_of_copies']:.3f})"
        print(f"  {name:18s} entropy {s['normalised_entropy']:.3f}  TV-from-uniform {s['distance_from_uniform']:.3f}  "
              f"max w {s['max_weight']:.3f}  weight on copies {copies}  spearman vs linear "
              f"{s['spearman_vs_linear'] if s['spearman_vs_linear'] is None else round(s['spearman_vs_linear'], 3)}")

    records = [json.loads(p.read_text()) | {"source": str(p)}
               for p in sorted((args.study_dir / "weights").glob("attention-s*.json"))]
    if args.attention_run:
        shards = args.shards or REPO / "runs" / "study-shards" / "ucm"
        records += [weights_from_run(run, shards) for run in args.attention_run]
    report["attention_vs_bleu"] = [attention_vs_bleu(r) for r in records]
    if not records:
        report["attention_vs_bleu_note"] = (f"no attention weights found under {args.study_dir / 'weights'}; run "
                                            "method_study.py with the attention method or pass --attention-run")
    for r in report["attention_vs_bleu"]:
        print(f"attention vs BLEU ({r['source']}): per-image Pearson {r['pearson_per_image_mean']}, Spearman "
              f"{r['spearman_per_image_mean']}; pooled Pearson {r['pearson_pooled']}, Spearman {r['spearman_pooled']}; "
              f"learned TV-from-uniform {r['learned_distance_from_uniform']:.4f}")

    if args.budget_steps:
        report["retrieval"] = retrieval_ablation(args, study)
        print(report["retrieval"]["table"])
    write_result(out, report, argv=argv, script=__file__)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
