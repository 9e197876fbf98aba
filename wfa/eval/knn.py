"""k-nearest-neighbour classification of frozen image features with FAISS (exact neighbours, numpy only).

Features are unit-norm, so the neighbours of a query are the training images of highest cosine similarity,
ordered by (similarity descending, training index ascending). FAISS ``IndexFlatIP`` (on the GPU when FAISS
has one: :mod:`wfa.eval.faiss_device`) proposes ``k'`` > ``k`` candidates in float32; their similarities are
recomputed in float64 by :func:`wfa.eval.metrics.exact_scores` and re-sorted. When the ``k``-th exact
similarity beats the ``k'``-th float32 one by more than the float32 error bound
(:func:`wfa.eval.metrics.score_margin`), no image outside the candidates can be a neighbour; the other
queries are scanned exactly. The neighbours therefore equal those of a plain float64 computation.

Prediction (single-label): the class with the most votes among the ``k`` neighbours; a tie goes to the tied
class whose nearest neighbour comes first. Class scores (for top-5) are ``votes + (k - r) / (k + 1)`` with
``r`` the position of the class's first neighbour (0 when absent), which ranks by exactly that rule.
Multi-label: a class's score is the share of neighbours carrying it (scored by mAP).

``k`` is chosen from :data:`KS` on the held-out images of a :class:`wfa.eval.fewshot.Draw` (ties: the larger
``k``); the final prediction uses ``draw.final`` as the neighbours.
"""
from __future__ import annotations

from typing import Any, Sequence

import faiss
import numpy as np

from wfa.eval.classification import score
from wfa.eval.faiss_device import faiss_gpus
from wfa.eval.fewshot import Draw
from wfa.eval.metrics import exact_scores, l2_normalize, score_margin

KS: tuple[int, ...] = (1, 3, 5, 10, 20, 50)
_SCAN_BLOCK = 4096
_GATHER_FLOATS = 8_000_000


def _full_scan(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query over the whole gallery (float64, ties by index)."""
    idx = np.zeros((len(queries), k), dtype=np.int64)
    sims = np.zeros((len(queries), k))
    everything = np.arange(len(gallery))
    for q in range(len(queries)):
        s = np.concatenate([exact_scores(queries[q:q + 1], gallery[None, start:start + _SCAN_BLOCK])[0]
                            for start in range(0, len(gallery), _SCAN_BLOCK)])
        order = np.lexsort((everything, -s))[:k]
        idx[q], sims[q] = order, s[order]
    return idx, sims


def nearest(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices ``[Q, k]``, float64 similarities ``[Q, k]``) of the exact ``k`` nearest gallery rows (module
    docstring); rows of both are L2-normalised first."""
    gallery, queries = l2_normalize(gallery), l2_normalize(queries)
    k = min(int(k), len(gallery))
    if k < 1 or not len(queries):
        return np.zeros((len(queries), max(k, 0)), dtype=np.int64), np.zeros((len(queries), max(k, 0)))
    gpus = faiss_gpus()
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    if gpus:
        index = faiss.index_cpu_to_all_gpus(index)
    kprime = min(len(gallery), k + max(k, 16), 2048 if gpus else len(gallery))
    backend, candidates = index.search(queries, kprime)
    step = max(1, _GATHER_FLOATS // (kprime * gallery.shape[1]))  # bounds the float64 gather's memory
    exact = np.concatenate([exact_scores(queries[s:s + step], gallery[candidates[s:s + step]])
                            for s in range(0, len(queries), step)])
    order = np.lexsort((candidates, -exact), axis=1)[:, :k]
    idx = np.take_along_axis(candidates, order, axis=1)
    sims = np.take_along_axis(exact, order, axis=1)
    eps = score_margin(gallery.shape[1], gpu=bool(gpus))
    unsure = np.flatnonzero(~((kprime >= len(gallery)) | (sims[:, -1] > backend[:, -1].astype(np.float64) + eps)))
    if unsure.size:
        idx[unsure], sims[unsure] = _full_scan(gallery, queries[unsure], k)
    return idx, sims


def vote_scores(neighbour_labels: np.ndarray, num_classes: int, multilabel: bool = False) -> np.ndarray:
    """Class scores ``[Q, C]`` from the labels of each query's neighbours, nearest first (module docstring).

    ``neighbour_labels`` is ``[Q, k]`` class indices, or ``[Q, k, C]`` 0/1 for multi-label data.
    """
    if multilabel:
        return neighbour_labels.astype(np.float64).mean(axis=1)
    queries, k = neighbour_labels.shape
    votes = np.zeros((queries, num_classes))
    first = np.full((queries, num_classes), k)
    rows = np.arange(queries)
    for position in range(k - 1, -1, -1):  # backwards: the nearest neighbour's position is written last
        labels = neighbour_labels[:, position]
        votes[rows, labels] += 1
        first[rows, labels] = position
    return votes + np.where(votes > 0, (k - first) / (k + 1), 0.0)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int, num_classes: int,
               multilabel: bool = False) -> np.ndarray:
    """Class scores ``[Q, C]`` of the queries by their ``k`` nearest training images."""
    idx, _ = nearest(train_x, query_x, k)
    return vote_scores(np.asarray(train_y)[idx], num_classes, multilabel)


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 classes: Sequence[str], draw: Draw, *, multilabel: bool = False,
                 ks: Sequence[int] = KS) -> dict[str, Any]:
    """One k-NN run: choose ``k`` on ``draw.val`` with ``draw.fit`` as neighbours, then score the test images
    with ``draw.final`` as neighbours. Returns the test metrics, ``k`` and every tried ``k``'s held-out score."""
    if not len(draw.val):
        raise ValueError("the training pool is too small to hold out images for choosing k")
    fit_x, fit_y = train_x[draw.fit], train_y[draw.fit]
    tried = [k for k in ks if k <= len(draw.fit)] or [len(draw.fit)]
    held_out = {}
    for k in tried:
        scores = knn_scores(fit_x, fit_y, train_x[draw.val], k, len(classes), multilabel)
        held_out[k] = float(score(scores, train_y[draw.val], classes, multilabel, ks=(1,), per_class=False)["main"])
    best = max(held_out.values())
    chosen = max(k for k, value in held_out.items() if value == best)
    scores = knn_scores(train_x[draw.final], train_y[draw.final], test_x, chosen, len(classes), multilabel)
    out = score(scores, test_y, classes, multilabel, per_class=False)
    out.update({"k": int(chosen), "held_out": {str(k): v for k, v in held_out.items()},
                "train_images": int(len(draw.final)), "val_images": int(len(draw.val))})
    return out
