"""Image-text retrieval metrics from features (docs/metrics.md): R@k in both directions, FAISS search, exact ranks.

numpy and FAISS only (no torch): the metrics of precomputed features need no model. The torch
reference backend (``backend="torch"``) lives in :mod:`wfa.eval.torch_search` and is imported on use.

Semantics
---------
* text-to-image (t2i): every caption is a query against the ``N`` images; it hits at ``k`` when its
  own image is among the top ``k``.
* image-to-text (i2t): every image that has at least one caption is a query against all ``T``
  captions; it hits at ``k`` when any of its captions is among the top ``k``. Images without a
  caption stay in the t2i gallery (as distractors) but are not i2t queries (they cannot hit).
* ``mR`` is the mean of the six recalls, ``mR_t2i`` the mean of the three t2i recalls.

Ties and exactness
------------------
The gallery is totally ordered by (score descending, gallery index ascending). The rank of a target
is the number of gallery items strictly before it in that order; a query hits at ``k`` when the rank
of its target (for i2t: its best caption) is below ``k``. Scores that decide a rank are always
recomputed in float64 from the same float32 unit vectors by one routine (:func:`exact_scores`),
so the result does not depend on the backend's float32 rounding or on how it orders ties.

The backend (FAISS ``IndexFlatIP`` or a torch matmul + topk) only proposes candidates: the top
``k'`` (> ``kmax``) items by its float32 score. A candidate whose float32 score is more than ``eps``
above (below) the target's exact score surely precedes (follows) it; the few within ``eps`` (the
target itself, duplicates, near-ties) are rescored exactly. If the target's exact score beats the ``k'``-th
backend score by more than the float32 error bound ``eps`` (``|float32 dot - exact dot| <= eps``),
no item outside the candidates can precede it and its rank is exact; if ``kmax`` candidates already
precede it, it misses at every ``k``. The remaining queries are retried with more candidates and
finally by an exact scan of the whole gallery. Both backends therefore give identical metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import faiss
import numpy as np

from wfa.eval.faiss_device import faiss_gpus

BACKENDS = ("faiss", "torch")
#: queries per search call when ``batch_size`` is None: FAISS blocks internally and only returns
#: ``[B, k]``; torch materialises a ``[B, gallery]`` score matrix, so it gets smaller batches.
DEFAULT_BATCH = {"faiss": 16384, "torch": 1024}
#: floats (float64) held at once by one exact-score gather; bounds memory of the rank step.
_GATHER_BUDGET = 8_000_000
#: largest k a FAISS GPU index searches; beyond it the exact scan takes over.
_FAISS_GPU_MAX_K = 2048


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Return ``x`` with unit-norm rows as contiguous float32 (zero rows stay zero)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D feature array, got shape {x.shape}")
    out = np.empty(x.shape, dtype=np.float32)
    step = max(1, _GATHER_BUDGET // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):  # chunked: float64 temporaries stay small
        chunk = x[start:start + step].astype(np.float64)
        if not np.all(np.isfinite(chunk)):
            raise ValueError("features contain NaN or inf; check the model outputs")
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start:start + step] = chunk / np.maximum(norms, 1e-12)
    return out


def score_margin(dim: int, gpu: bool = False) -> float:
    """Upper bound of ``|float32 dot - exact dot|`` for unit vectors of dimension ``dim``.

    On CPU a float32 dot of unit vectors errs by at most ``dim * 2**-24`` (products exact to half an
    ulp, ``dim`` additions); we double it. GPUs may compute in TF32 (10-bit mantissa), so the
    bound there is ``2e-3`` plus the float32 term.
    """
    bound = 2.0 * dim * 2.0**-24 + 1e-7
    return bound + 2e-3 if gpu else bound


def exact_scores(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float64 dot products ``[Q, M]`` of queries ``[Q, D]`` with per-query items ``[Q, M, D]``.

    float32 products are exact in float64 and numpy reduces each contiguous row the same way, so
    a pair's score depends only on the two vectors (not on batch shape or position): identical
    vectors tie exactly.
    """
    prod = queries.astype(np.float64)[:, None, :] * items.astype(np.float64)
    return np.ascontiguousarray(prod).sum(axis=-1)


def _pair_scores(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Exact scores ``[Q]`` of each query with its gallery item ``targets[q]`` (chunked)."""
    step = max(1, _GATHER_BUDGET // max(1, gallery.shape[1]))
    return np.concatenate([np.zeros(0)] + [
        exact_scores(queries[i:i + step], gallery[targets[i:i + step]][:, None, :])[:, 0]
        for i in range(0, queries.shape[0], step)])


class Searcher:
    """Top-k inner-product search over one gallery with FAISS or torch (float32).

    FAISS ``IndexFlatIP`` (on every GPU when ``faiss`` has GPUs: :func:`wfa.eval.faiss_device.faiss_gpus`) is the fast path; the torch matmul + topk
    of :mod:`wfa.eval.torch_search` is the reference the tests compare it with.
    """

    def __init__(self, gallery: np.ndarray, backend: str, device: str | None = None, batch_size: int | None = None):
        """``gallery`` ``[M, D]`` unit-norm float32; ``device`` is used by the torch backend only."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown retrieval backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.batch_size = max(1, int(batch_size or DEFAULT_BATCH[backend]))
        self.size = gallery.shape[0]
        if backend == "faiss":
            index = faiss.IndexFlatIP(gallery.shape[1])
            index.add(gallery)
            self.gpu = faiss_gpus() > 0
            self._topk = (faiss.index_cpu_to_all_gpus(index) if self.gpu else index).search
        else:
            # torch only for the reference backend: the metrics themselves import without torch
            from wfa.eval.torch_search import TorchTopK

            engine = TorchTopK(gallery, device)
            self.gpu = engine.gpu
            self._topk = engine.search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores ``[Q, k]`` descending, indices ``[Q, k]``) of the top ``k`` gallery items."""
        k = min(k, self.size)
        scores, indices = [], []
        for start in range(0, queries.shape[0], self.batch_size):
            s, i = self._topk(queries[start:start + self.batch_size], k)
            scores.append(s)
            indices.append(i)
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores), np.concatenate(indices).astype(np.int64)


def _ranks_from_candidates(queries, gallery, targets, target_scores, cand_idx, cand_scores, kmax, eps):
    """Ranks (capped at ``kmax``) of the targets, or -1 where the candidates cannot decide.

    A candidate whose backend score exceeds the target's exact score by more than ``eps`` surely
    precedes it, one below by more than ``eps`` surely does not; only the candidates in between
    (the target itself, duplicates, near-ties) are rescored exactly.
    """
    sp = target_scores[:, None]
    backend = cand_scores.astype(np.float64)
    before = backend > sp + eps
    rows, cols = np.nonzero(np.abs(backend - sp) <= eps)
    if rows.size:
        idx = cand_idx[rows, cols]
        exact = np.concatenate([
            exact_scores(queries[rows[i:i + 4096]], gallery[idx[i:i + 4096]][:, None, :])[:, 0]
            for i in range(0, rows.size, 4096)])
        t, p = target_scores[rows], targets[rows]
        before[rows, cols] = (exact > t) | ((exact == t) & (idx < p))
    r = before.sum(axis=1)
    complete = cand_idx.shape[1] >= gallery.shape[0]
    resolved = (r >= kmax) | complete | (target_scores > backend[:, -1] + eps)
    return np.where(resolved, np.minimum(r, kmax), -1)


def _ranks_full_scan(queries, gallery, targets, target_scores, kmax):
    """Exact ranks (capped at ``kmax``) by scoring every gallery item in float64."""
    ranks = np.zeros(queries.shape[0], dtype=np.int64)
    chunk = max(1, _GATHER_BUDGET // gallery.shape[1])
    for q in range(queries.shape[0]):
        count = 0
        for start in range(0, gallery.shape[0], chunk):
            items = gallery[start:start + chunk]
            s = exact_scores(queries[q:q + 1], items[None])[0]
            idx = np.arange(start, start + items.shape[0])
            count += int(np.sum((s > target_scores[q]) | ((s == target_scores[q]) & (idx < targets[q]))))
            if count >= kmax:
                break
        ranks[q] = min(count, kmax)
    return ranks


def target_ranks(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray, kmax: int,
                 backend: str = "faiss", batch_size: int | None = None, device: str | None = None,
                 eps: float | None = None) -> np.ndarray:
    """Rank of each query's target gallery item under (score desc, index asc), capped at ``kmax``.

    ``queries`` ``[Q, D]`` and ``gallery`` ``[M, D]`` are unit-norm float32; ``targets`` ``[Q]`` are
    gallery indices. A query hits at ``k`` iff its rank is ``< k``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if queries.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    searcher = Searcher(gallery, backend, device=device, batch_size=batch_size)
    if eps is None:
        eps = score_margin(gallery.shape[1], gpu=searcher.gpu)
    target_scores = _pair_scores(queries, gallery, targets)
    ranks = np.full(queries.shape[0], -1, dtype=np.int64)
    todo = np.arange(queries.shape[0])
    kprime = kmax + max(kmax, 16)
    for _ in range(2):
        if todo.size == 0 or (searcher.gpu and searcher.backend == "faiss" and kprime > _FAISS_GPU_MAX_K):
            break
        q = queries[todo]
        cand_scores, cand_idx = searcher.search(q, kprime)
        ranks[todo] = _ranks_from_candidates(q, gallery, targets[todo], target_scores[todo],
                                             cand_idx, cand_scores, kmax, eps)
        todo = np.flatnonzero(ranks < 0)
        kprime *= 8
    if todo.size:
        ranks[todo] = _ranks_full_scan(queries[todo], gallery, targets[todo], target_scores[todo], kmax)
    return ranks


def best_positive(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """For each image, the index of its highest-scoring caption (lowest index on ties), or -1."""
    num_images = image_emb.shape[0]
    best = np.full(num_images, -1, dtype=np.int64)
    if text_emb.shape[0] == 0:
        return best
    scores = _pair_scores(text_emb, image_emb, text_to_image)
    # sort by (image, score desc, caption index asc); the first caption of each image wins
    order = np.lexsort((np.arange(len(scores)), -scores, text_to_image))
    first = np.ones(len(order), dtype=bool)
    first[1:] = text_to_image[order][1:] != text_to_image[order][:-1]
    best[text_to_image[order][first]] = order[first]
    return best


@dataclass
class RetrievalRanks:
    """Capped ranks of every query: ``t2i`` per caption, ``i2t`` per image with captions."""

    t2i: np.ndarray
    i2t: np.ndarray
    i2t_images: np.ndarray
    kmax: int

    def recall(self, direction: str, k: int) -> float:
        """Recall@k in percent for ``direction`` in {"t2i", "i2t"} (nan without queries)."""
        if k > self.kmax:
            raise ValueError(f"recall@{k} needs ranks computed with kmax >= {k} (have {self.kmax})")
        ranks = getattr(self, direction)
        return float(100.0 * np.mean(ranks < k)) if ranks.size else float("nan")


def _check_inputs(image_emb, text_emb, text_to_image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image_emb = l2_normalize(image_emb)
    text_emb = l2_normalize(text_emb)
    text_to_image = np.asarray(text_to_image, dtype=np.int64).reshape(-1)
    if text_emb.shape[0] != text_to_image.shape[0]:
        raise ValueError(f"text_to_image has {text_to_image.shape[0]} entries for {text_emb.shape[0]} captions")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image features have dim {image_emb.shape[1]}, text features {text_emb.shape[1]}")
    if text_to_image.size and (text_to_image.min() < 0 or text_to_image.max() >= image_emb.shape[0]):
        raise ValueError(f"text_to_image must index the {image_emb.shape[0]} images; "
                         f"got values in [{text_to_image.min()}, {text_to_image.max()}]")
    if image_emb.shape[0] == 0:
        raise ValueError("no images to evaluate")
    return image_emb, text_emb, text_to_image


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: Sequence[int], kmax: int = 10,
                    backend: str = "faiss", batch_size: int | None = None, device: str | None = None,
                    directions: Iterable[str] = ("t2i", "i2t")) -> RetrievalRanks:
    """Capped ranks for both directions (see the module docstring); features are L2-normalised here."""
    image_emb, text_emb, text_to_image = _check_inputs(image_emb, text_emb, text_to_image)
    directions = set(directions)
    t2i = np.zeros(0, dtype=np.int64)
    if "t2i" in directions:
        t2i = target_ranks(text_emb, image_emb, text_to_image, kmax, backend, batch_size, device)
    best = best_positive(image_emb, text_emb, text_to_image)
    queried = np.flatnonzero(best >= 0)
    i2t = np.zeros(0, dtype=np.int64)
    if "i2t" in directions:
        i2t = target_ranks(image_emb[queried], text_emb, best[queried], kmax, backend, batch_size, device)
    return RetrievalRanks(t2i=t2i, i2t=i2t, i2t_images=queried, kmax=kmax)


def metrics_from_ranks(ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The metric dict (percentages) of :func:`retrieval_metrics` from precomputed ranks."""
    out: dict[str, float] = {}
    for direction in ("t2i", "i2t"):
        for k in ks:
            out[f"{direction}_r{k}"] = ranks.recall(direction, k)
    t2i = [out[f"t2i_r{k}"] for k in ks]
    i2t = [out[f"i2t_r{k}"] for k in ks]
    out["mR"] = float(np.mean(t2i + i2t))
    out["mR_t2i"] = float(np.mean(t2i))
    return out


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: Sequence[int],
                      ks: Sequence[int] = (1, 5, 10), backend: str = "faiss", batch_size: int | None = None,
                      device: str | None = None) -> dict[str, float]:
    """Retrieval recalls in percent: ``t2i_r{k}``, ``i2t_r{k}`` for ``k`` in ``ks``, ``mR``, ``mR_t2i``.

    ``image_emb`` ``[N, D]``, ``text_emb`` ``[T, D]``, ``text_to_image`` ``[T]`` (the image index of
    each caption). ``backend`` is ``"faiss"`` or ``"torch"``; both give identical numbers.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    ranks = retrieval_ranks(image_emb, text_emb, text_to_image, max(ks), backend, batch_size, device)
    return metrics_from_ranks(ranks, ks)


def aggregated_gallery_metrics(image_emb: np.ndarray, fused_emb: np.ndarray, fused_to_image: Sequence[int] | None = None,
                               ks: Sequence[int] = (1, 5, 10), backend: str = "faiss", batch_size: int | None = None,
                               device: str | None = None) -> dict[str, float]:
    """Image-to-text recall against the WFA aggregated gallery: one fused text feature per image.

    ``fused_emb`` ``[M, D]`` holds the aggregator's fused caption feature of the images
    ``fused_to_image`` ``[M]`` (default: image ``i`` for row ``i``); an image hits at ``k`` when its
    own fused feature is in the top ``k`` of the ``M`` fused features — a gallery ``K`` times smaller
    than the caption gallery. Text-to-image is not defined here (the queries of t2i are single
    captions, which the fused gallery replaces), so only ``i2t_r{k}`` and their mean ``mR_i2t``
    are returned (percentages); images without a fused feature are not queries.
    """
    if fused_to_image is None:
        fused_to_image = np.arange(np.asarray(fused_emb).shape[0])
    ks = tuple(int(k) for k in ks)
    ranks = retrieval_ranks(image_emb, fused_emb, fused_to_image, max(ks), backend, batch_size, device,
                            directions=("i2t",))
    out = {f"i2t_r{k}": ranks.recall("i2t", k) for k in ks}
    out["mR_i2t"] = float(np.mean([out[f"i2t_r{k}"] for k in ks]))
    return out


def chance_recalls(num_images: int, captions_per_image: float, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recalls (percent) of a random ranking: t2i R@k = k/N; i2t R@k for K of T captions.

    i2t with ``K`` positives among ``T = N*K`` captions: ``1 - C(T-K, k) / C(T, k)``; ``K`` is
    rounded to the nearest integer (the mean captions per image).
    """
    n = int(num_images)
    kpos = max(1, int(round(captions_per_image)))
    total = n * kpos
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * min(1.0, k / n)
    for k in ks:
        miss = 1.0
        for j in range(min(k, total)):
            miss *= max(0.0, (total - kpos - j) / (total - j))
        out[f"i2t_r{k}"] = 100.0 * (1.0 - miss)
    out["mR"] = float(np.mean([out[f"t2i_r{k}"] for k in ks] + [out[f"i2t_r{k}"] for k in ks]))
    out["mR_t2i"] = float(np.mean([out[f"t2i_r{k}"] for k in ks]))
    return out
