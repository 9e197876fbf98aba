"""What a learned aggregator weighs: the weight it gives every caption of a split, beside the caption's BLEU
weight, and how the two agree (per-image and pooled Pearson and Spearman correlation, distance from uniform).

A study writes one weights record per run of an arm whose aggregator is learned (``OUT/weights/<arm>-s<seed>.json``);
the ablations and the notebook read them. numpy only.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def weights_record(encoded: Any, arm: str, seed: int, step: int | str, split: str = "test") -> dict[str, Any]:
    """Per caption of an evaluated split (:class:`wfa.eval.encode.EncodedSet`): its image, text, BLEU weight (from
    the shards) and the aggregator's weight."""
    return {"arm": arm, "method": arm, "seed": seed, "checkpoint_step": step, "split": split,
            "image_ids": list(encoded.image_ids), "captions": list(encoded.captions),
            "text_to_image": encoded.text_to_image.tolist(), "bleu_weights": encoded.caption_weights.tolist(),
            "learned_weights": encoded.agg_weights.tolist()}


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
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
    """How a weights record's learned weights relate to its BLEU weights: correlations per image (mean over the
    images where they are defined) and pooled, the learned weights' distance from uniform and normalised entropy."""
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
