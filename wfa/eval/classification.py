"""Classification metrics of scores (numpy only): top-k accuracy, per-class accuracy, average precision, mAP.

Zero-shot classification, the linear probe and k-NN (:mod:`wfa.eval.zeroshot`, :mod:`wfa.eval.probe`,
:mod:`wfa.eval.knn`) all turn their class scores into numbers here, so the three protocols are scored the
same way. Single-label targets are class indices ``[N]``; multi-label targets are 0/1 matrices ``[N, C]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent: a hit when the target's score has fewer than ``k`` classes ranked above.

    Ties are ranked by class index (lower first), as in the retrieval metrics.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    classes = np.arange(scores.shape[1])[None, :]
    rank = ((scores > target_scores) | ((scores == target_scores) & (classes < targets[:, None]))).sum(axis=1)
    return {f"top{k}": float(100.0 * np.mean(rank < k)) for k in ks}


def predictions(scores: np.ndarray) -> np.ndarray:
    """The top-1 class of each row (the lowest class index among tied maxima), as ``topk_accuracy`` ranks."""
    return np.asarray(scores, dtype=np.float64).argmax(axis=1)


def per_class_accuracy(predicted: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    """Top-1 accuracy in percent of each class (``None`` for a class without test images)."""
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    out: dict[str, float | None] = {}
    for index, name in enumerate(classes):
        members = targets == index
        out[name] = float(100.0 * np.mean(predicted[members] == index)) if members.any() else None
    return out


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over score thresholds (descending).

    Tied scores form one threshold (as ``sklearn.metrics.average_precision_score``). ``nan`` when
    ``targets`` has no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1).astype(bool)
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    last_of_threshold = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(t)[last_of_threshold]
    seen = np.flatnonzero(last_of_threshold) + 1
    precision = tp / seen
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(macro mAP in percent over classes with a positive, per-class AP ``[C]`` in percent, nan if none)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    per_class = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]) * 100.0
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else float("nan")), per_class


def score(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str], multilabel: bool,
          ks: Sequence[int] = (1, 5), per_class: bool = True) -> dict[str, Any]:
    """The metrics of class ``scores`` ``[N, C]``: single-label ``top1``/``top5`` (the ``ks`` up to ``C``),
    ``mean_per_class`` and ``per_class_top1``; multi-label ``mAP`` and ``per_class_ap`` (percent).

    ``"main"`` repeats the number a table prints: ``top1``, or ``mAP`` for multi-label data.
    """
    if multilabel:
        mAP, ap = mean_average_precision(scores, targets)
        out: dict[str, Any] = {"mAP": mAP, "main": mAP, "classes_with_positives": int((~np.isnan(ap)).sum())}
        if per_class:
            out["per_class_ap"] = {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, ap)}
        return out
    out = topk_accuracy(scores, targets, [k for k in ks if k <= len(classes)])
    out["main"] = out["top1"]
    accuracy = per_class_accuracy(predictions(scores), targets, classes)
    present = [v for v in accuracy.values() if v is not None]
    out["mean_per_class"] = float(np.mean(present)) if present else float("nan")
    if per_class:
        out["per_class_top1"] = accuracy
    return out
