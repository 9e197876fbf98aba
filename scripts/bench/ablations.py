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
2. **Retrieval effect** (only with ``--budget-steps``): the ``bleu`` method of a study (``--study``, default
   ``configs/studies/ucm.yaml``) trained with each variant's weights (``--retrieval-variants``), written into a
   copy of the study's shards whose ``json`` members carry the variant weights (images, captions and order
   unchanged), same settings and seeds as the study (``wfa.study``: resumable); test recalls of the best-val
   checkpoint (mean ± std over seeds). The default weights are the study's own ``bleu`` runs when it has them.
3. **Learned attention vs BLEU** (when a trained attention run exists): per test caption, the weight the
   trained ``attention`` aggregator gives it against its BLEU weight (:func:`wfa.study.weights.attention_vs_bleu`).
   Sources: ``<study-dir>/weights/attention-s*.json`` written by ``wfa study``, or ``--attention-run DIR`` (a
   ``wfa train`` output, read through ``wfa.Run``) evaluated on ``--shards`` split ``test``.

Usage::

    python scripts/bench/ablations.py                              # parts 1 and 3 (from the study's weights)
    python scripts/bench/ablations.py --budget-steps 400 --seeds 3 # + part 2 (trains 2 variants x 3 seeds)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

from wfa.study.weights import attention_vs_bleu, pearson, spearman, weights_record  # noqa: E402

DEFAULT_TAUS = (0.03, 0.1, 0.3, 1.0)

WeightFn = Callable[[Sequence[str]], np.ndarray]


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


# -------------------------------------------------------------------------------------- learned weights


def weights_from_run(run_dir: Path, shards: Path, split: str = "test") -> dict[str, Any]:
    """The weights record of a trained attention run (``wfa train`` output) on ``split`` of ``shards``."""
    from wfa.run import Run

    run = Run.open(run_dir)
    report = run.evaluate(split, shards=shards)
    if report.aggregator != "attention":
        raise SystemExit(f"ablations: {run_dir} trained the {report.aggregator!r} aggregator, not attention")
    return {**weights_record(report.encoded, run.config.method, run.config.seed, "final", split),
            "source": str(run_dir)}


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


def retrieval_ablation(args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: the study's ``bleu`` arm trained with each variant's weights (``wfa.study``: resumable; records and a
    summary per variant under ``<study-dir>/ablation_runs/<variant>/``)."""
    from wfa.errors import StudyError
    from wfa.study.analysis import markdown_summary, summarize
    from wfa.study.config import Arm, ShardSource, load_study
    from wfa.study.runner import collect_records, load_plan, prepare_shards, run_study

    study = load_study(args.study, args.set)
    shards = replace(study.shards, path=str(args.shards_dir or study.shards.path),
                     limit_images=args.limit_images or study.shards.limit_images)
    study = replace(study, arms=[Arm("bleu", ["method=bleu"], "bleu")], seeds=list(range(args.seeds)),
                    budget=replace(study.budget, steps=args.budget_steps), shards=shards,
                    runs_dir=str(args.runs_dir or study.runs_dir), goal=None, data_dir=str(args.ucm_dir.parent))
    source = prepare_shards(study)
    records: list[dict[str, Any]] = []
    baseline = "bleu[linear (study's bleu runs)]"
    try:  # the default weights: the study's own bleu runs, when it has them with these settings
        records += [{**r, "arm": baseline} for r in collect_records(study, load_plan(study))]
    except StudyError as error:
        print(f"[ablations] the default weights are not compared: {error} (add 'linear' to --retrieval-variants)")
    for variant in args.retrieval_variants:
        variant_shards = source.with_name(f"{source.name}-weights-{variant}")
        write_variant_shards(source, variant_shards, parse_variant(variant), variant)
        sub = replace(study, name=f"{study.name}-weights-{variant}", dataset=f"{study.dataset}, weights {variant}",
                      shards=ShardSource(path=str(variant_shards), limit_images=shards.limit_images),
                      arms=[Arm(f"bleu-{variant}", ["method=bleu"], "bleu")],
                      out=str(args.study_dir / "ablation_runs" / variant),
                      runs_dir=str(Path(study.runs_dir) / "ablations" / variant))
        run_study(sub, threads=args.threads)
        records += [{**r, "arm": f"bleu[{variant}]", "weights_variant": variant}
                    for r in collect_records(sub, load_plan(sub))]
    summary = summarize(records, study.dataset, reference_arm=baseline if records[0]["arm"] == baseline
                        else records[0]["arm"])
    return {"study": study.name, "variants": summary["arms"], "chance": summary["chance"],
            "table": markdown_summary(summary)}


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
                   help="a study's out folder: attention weights are read from its weights/, part 2 writes "
                        "ablation_runs/ there (default benchmarks/study)")
    p.add_argument("--attention-run", type=Path, action="append", default=[],
                   help="a trained attention run directory (model_final.pt, aggregator.safetensors); repeatable")
    p.add_argument("--shards", type=Path, help="shards for --attention-run (default: runs/study-shards/ucm)")
    p.add_argument("--out", type=Path, help="output JSON (default <study-dir>/ablations.json)")
    g = p.add_argument_group("retrieval effect (part 2; runs only with --budget-steps)")
    g.add_argument("--budget-steps", type=int, help="train bleu with each variant for this many steps")
    g.add_argument("--retrieval-variants", default="no_collapse,softmax_tau0.1",
                   help="variants to train (default %(default)s; the default linear weights are taken from the "
                        "study's bleu runs when it has them with these settings, else add 'linear')")
    g.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    g.add_argument("--study", type=Path, default=REPO / "configs" / "studies" / "ucm.yaml",
                   help="the study whose bleu arm, shards and settings the variants share (default %(default)s)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-config override for every run (repeatable), e.g. --set model.name=wfa-vit-micro")
    g.add_argument("--shards-dir", type=Path, help="the study's shard folder (default: the study's)")
    g.add_argument("--runs-dir", type=Path, help="run folders (default: the study's runs_dir)")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablations and write one JSON."""
    args = build_parser().parse_args(argv)
    args.retrieval_variants = [v.strip() for v in args.retrieval_variants.split(",") if v.strip()]
    taus = [float(t) for t in args.taus.split(",") if t.strip()]
    out = args.out or args.study_dir / "ablations.json"
    import torch

    torch.set_num_threads(args.threads)
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
                                            "a study with an attention arm (wfa study) or pass --attention-run")
    for r in report["attention_vs_bleu"]:
        print(f"attention vs BLEU ({r['source']}): per-image Pearson {r['pearson_per_image_mean']}, Spearman "
              f"{r['spearman_per_image_mean']}; pooled Pearson {r['pearson_pooled']}, Spearman {r['spearman_pooled']}; "
              f"learned TV-from-uniform {r['learned_distance_from_uniform']:.4f}")

    if args.budget_steps:
        report["retrieval"] = retrieval_ablation(args)
        print(report["retrieval"]["table"])
    write_result(out, report, argv=argv, script=__file__)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
