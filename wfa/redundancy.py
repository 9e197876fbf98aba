"""BLEU-uniqueness caption weights (docs/method.md) and caption-redundancy statistics.

Definition (one place, implemented twice: :func:`bleu_uniqueness_reference` on plain
``sacrebleu.sentence_bleu``, and the vectorised :func:`bleu_uniqueness`):

1. Normalise each caption (:func:`normalize_caption`: strip, collapse white space). Captions
   equal after lower-casing are copies of one *distinct* caption; the first copy's text stands
   for all of them. An empty caption raises :class:`EmptyCaptionError`.
2. For each of the D distinct captions ``c``::

       u(c) = clip(1 - mean_{c' != c} BLEU(c, refs=[c']) / 100, 0, 1)

   with ``sacrebleu.sentence_bleu(c, [c'], lowercase=True)`` and its defaults (13a tokenizer,
   4-grams, ``exp`` smoothing, effective order); ``c`` is always the hypothesis.
3. ``w(c) = u(c) / sum(u)`` (or ``softmax(u / tau)`` when ``tau`` is given), and a distinct
   caption's weight is split evenly among its copies. D = 1, or all u = 0: every caption gets
   ``1 / K`` (with or without ``tau``).

The fast path works on chunks of images at once: it tokenises each distinct caption text once
with sacrebleu's 13a rules (sacrebleu's own compiled regexes, applied to all texts of a chunk in
one pass; checked against sacrebleu's tokenizer, which is used instead if it ever differs),
turns n-grams into exact integer ids, gets the clipped n-gram matches of every ordered caption
pair with numpy, and evaluates ``BLEU.compute_bleu`` (exp smoothing, effective order)
vectorised over the pairs, operation by operation. It matches the reference to ~1e-16.
Memory grows with D^2 per image (all pairs), which is fine for K in the hundreds.
"""
from __future__ import annotations

import math
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sacrebleu
from sacrebleu.metrics.bleu import BLEU

__all__ = [
    "EmptyCaptionError",
    "normalize_caption",
    "bleu_uniqueness",
    "bleu_uniqueness_reference",
    "bleu_uniqueness_batch",
    "redundancy_report",
    "plot_redundancy",
]

MAX_ORDER = 4
# Images are scored in chunks of about this many captions: big enough to amortise numpy's
# per-call overhead, small enough to keep the pair expansion in memory and feed a worker pool.
CHUNK_CAPTIONS = 4096
HISTOGRAM_BINS = 40

# The exact tokenizer object ``sentence_bleu(..., tokenize="13a")`` builds (lru-cached calls).
_TOKENIZER = BLEU(lowercase=True, tokenize="13a", effective_order=True).tokenizer
# sacrebleu's 13a post-tokenizer regexes (sacrebleu 2.x), checked before the batched path is used.
_EXPECTED_13A = [(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "), (r"([^0-9])([\.,])", r"\1 \2 "),
                 (r"([\.,])([^0-9])", r" \1 \2"), (r"([0-9])(-)", r"\1 \2 ")]
_PROBES_13A = [
    "a, b. c-d 1-2 1.5 1,000 3.-4 x.y,z end.", ",start .5 -1 a-", "e.g. u.s.a. ... ,, .,",
    "&quot;x&quot; &amp; &lt;y&gt; &amp;quot; &", "<skipped> a<skipped>b -<skipped>",
    "(a) [b] {c} ~!@#$%^*_+=|\\:;'\"<>?/`", "caf\u00e9 \u00fcbung \u5317\u4eac\u6e2f 1\uff0c2 \U0001f600.",
    "2-3-4 a1.b2,c3 9.9. 7,", "tab\tsep\u00a0nbsp",
]


class EmptyCaptionError(ValueError):
    """A caption is empty (or only white space) after normalisation."""

    def __init__(self, caption_index: int, image_index: int | None = None) -> None:
        self.caption_index = caption_index
        self.image_index = image_index
        where = f"caption {caption_index}" if image_index is None else (
            f"caption {caption_index} of image {image_index}")
        super().__init__(f"{where} is empty after normalisation; remove it or give it text")

    def __reduce__(self):  # keep the indices when the error crosses a process boundary
        return (type(self), (self.caption_index, self.image_index))


def normalize_caption(text: str) -> str:
    """Strip ``text`` and collapse every run of white space into one space."""
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a str, got {type(text).__name__}")
    return " ".join(text.split())


def _check_tau(tau: float | None) -> None:
    if tau is not None and not (isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite number or None, got {tau!r}")


# --------------------------------------------------------------------------------------------
# Reference implementation: the definition, literally, on sacrebleu.sentence_bleu.
# --------------------------------------------------------------------------------------------

def bleu_uniqueness_reference(captions: Sequence[str], tau: float | None = None) -> np.ndarray:
    """BLEU-uniqueness weights computed with a plain loop over ``sacrebleu.sentence_bleu``.

    Slow (one sacrebleu call per ordered pair of distinct captions); kept as the executable
    definition that :func:`bleu_uniqueness` is tested against. Returns float64 weights, one per
    caption, summing to 1.
    """
    _check_tau(tau)
    if len(captions) == 0:
        raise ValueError("an image needs at least one caption")
    normalized = [normalize_caption(c) for c in captions]
    distinct: list[str] = []
    index: dict[str, int] = {}
    copy_of: list[int] = []
    for k, text in enumerate(normalized):
        if not text:
            raise EmptyCaptionError(k)
        key = text.lower()
        if key not in index:
            index[key] = len(distinct)
            distinct.append(text)
        copy_of.append(index[key])
    uniform = np.full(len(captions), 1.0 / len(captions))
    if len(distinct) == 1:
        return uniform
    u = []
    for i, hyp in enumerate(distinct):
        scores = [sacrebleu.sentence_bleu(hyp, [ref], lowercase=True).score
                  for j, ref in enumerate(distinct) if j != i]
        u.append(min(max(1 - (sum(scores) / len(scores)) / 100, 0.0), 1.0))
    total = sum(u)
    if total == 0:
        return uniform
    if tau is None:
        per_distinct = [x / total for x in u]
    else:
        top = max(u)
        exps = [math.exp((x - top) / tau) for x in u]
        per_distinct = [e / sum(exps) for e in exps]
    copies = Counter(copy_of)
    return np.array([per_distinct[d] / copies[d] for d in copy_of], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Fast implementation.
# --------------------------------------------------------------------------------------------

@dataclass
class _ChunkResult:
    """Per-caption weights and per-image statistics of a chunk of images."""

    weights: np.ndarray       # [sum K] float64, image after image
    k: np.ndarray             # [M] captions per image
    distinct: np.ndarray      # [M] distinct captions per image
    exact_copies: np.ndarray  # [M] captions whose raw text repeats an earlier one verbatim
    bleu_sum: np.ndarray      # [M] sum of BLEU over the ordered pairs of distinct captions
    num_pairs: np.ndarray     # [M] D * (D - 1)
    entropy: np.ndarray       # [M] entropy of the weights, nats


def _sentence_bleu_vectorised(correct: np.ndarray, hyp_len: np.ndarray,
                              ref_len: np.ndarray) -> np.ndarray:
    """``BLEU.compute_bleu`` with ``exp`` smoothing and effective order, over many pairs.

    ``correct`` is [P, 4] clipped n-gram matches, ``hyp_len``/``ref_len`` are [P] token counts;
    the arithmetic follows sacrebleu's operation by operation.
    """
    hyp = hyp_len.astype(np.float64)
    ref = ref_len.astype(np.float64)
    orders = np.arange(MAX_ORDER)
    total = np.maximum(hyp_len[:, None] - orders[None, :], 0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(hyp >= ref, 1.0, np.where(hyp > 0, np.exp(1 - ref / hyp), 0.0))
        # effective order = the orders whose total is > 0 (totals shrink with n)
        eff = np.minimum(hyp_len, MAX_ORDER)
        used = orders[None, :] < eff[:, None]
        zero = (correct == 0) & used
        smooth = np.cumprod(np.where(zero, 2.0, 1.0), axis=1)
        precision = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
        logs = np.where(used, np.log(np.where(used, precision, 1.0)), 0.0)
        log_sum = ((logs[:, 0] + logs[:, 1]) + logs[:, 2]) + logs[:, 3]
        score = bp * np.exp(log_sum / np.maximum(eff, 1))
    return np.where(correct.any(axis=1), score, 0.0)


def _dedupe(groups: Sequence[Sequence[str]], first_index: int):
    """Distinct lower-cased captions of every image, and each caption's distinct index."""
    texts: list[str] = []
    copy_of: list[int] = []
    k = np.empty(len(groups), dtype=np.int64)
    d = np.empty(len(groups), dtype=np.int64)
    exact = np.empty(len(groups), dtype=np.int64)
    for m, captions in enumerate(groups):
        if isinstance(captions, str) or len(captions) == 0:
            raise ValueError(f"image {first_index + m} has no captions (or is a bare string): "
                             "give every image a list of at least one caption")
        base = len(texts)
        index: dict[str, int] = {}
        for c, caption in enumerate(captions):
            key = normalize_caption(caption).lower()
            if not key:
                raise EmptyCaptionError(c, first_index + m)
            local = index.setdefault(key, len(index))
            copy_of.append(base + local)
        texts.extend(index)
        k[m], d[m] = len(captions), len(index)
        exact[m] = len(captions) - len(set(captions))
    return texts, np.asarray(copy_of, dtype=np.int64), k, d, exact


def _batched_13a_rules() -> tuple[dict, list] | None:
    """The 13a rules for :func:`_tokenize_batched`, or None when sacrebleu's tokenizer differs.

    The first 13a regex pads single characters of one ASCII class with spaces; ``str.translate``
    does exactly that without a Python call per match. The other three come from sacrebleu's
    compiled regexes. Used only if the regexes are the known ones and a probe set tokenises
    identically to sacrebleu.
    """
    regexes = getattr(getattr(_TOKENIZER, "_post_tokenizer", None), "_re", None)
    if regexes is None or [(r.pattern, t) for r, t in regexes] != _EXPECTED_13A:
        return None
    pad = regexes[0][0]
    rules = ({i: f" {chr(i)} " for i in range(128) if pad.fullmatch(chr(i))}, regexes[1:])
    probes = [normalize_caption(p).lower() for p in _PROBES_13A]
    if _tokenize_batched(probes, rules) != [_TOKENIZER(p).split() for p in probes]:
        return None
    return rules


def _tokenize_batched(texts: list[str], rules: tuple[dict, list]) -> list[list[str]]:
    """sacrebleu's 13a tokenisation of many normalised texts in one pass over a joined string.

    Joining with `` \\n `` is safe: normalised texts hold no newline, every 13a rule matches at
    most two characters, and none can match across a space-newline-space separator, so each text
    is transformed exactly as ``Tokenizer13a()(text)`` would (``f" {text} "``, same rule order).
    """
    table, regexes = rules
    line = " " + " \n ".join(texts) + " "
    line = line.replace("<skipped>", "")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = line.translate(table)
    for regex, template in regexes:
        line = regex.sub(template, line)
    return [part.split() for part in line.split("\n")]


_BATCHED_13A: tuple[dict, list] | None | bool = False  # False: not checked yet


def _tokenize(texts: list[str]) -> list[list[str]]:
    """13a tokens of lower-cased normalised texts, as ``sentence_bleu(lowercase=True)`` sees them."""
    global _BATCHED_13A
    if _BATCHED_13A is False:
        _BATCHED_13A = _batched_13a_rules()
    if _BATCHED_13A is None:
        # sacrebleu: tokenizer(sent.lower().rstrip()), then str.split() in the n-gram extraction
        return [_TOKENIZER(t).split() for t in texts]
    unique = {text: i for i, text in enumerate(dict.fromkeys(texts))}  # captions repeat across images
    tokens = _tokenize_batched(list(unique), _BATCHED_13A)
    return [tokens[unique[text]] for text in texts]


def _ngram_entries(texts: list[str]):
    """(caption, n-gram id, order, count) of every n-gram (n = 1..4) of every text.

    N-gram ids are exact (no hashing): order-n ids are the ranks of (order-(n-1) id, next token)
    pairs, so equal ids mean equal token tuples.
    """
    tokens = _tokenize(texts)
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    num_tokens = int(lengths.sum())
    # a token's id is the position of its first occurrence (unique, < num_tokens)
    first_seen: dict[str, int] = {}
    tok = np.fromiter(map(first_seen.setdefault, chain.from_iterable(tokens), range(num_tokens)),
                      dtype=np.int64, count=num_tokens)
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    caps, ids, offsets = [owner], [tok], [num_tokens]
    prev = tok
    for n in range(2, MAX_ORDER + 1):
        if num_tokens < n:
            break
        uniq, inv = np.unique(prev[: num_tokens - n + 1] * num_tokens + tok[n - 1:], return_inverse=True)
        valid = owner[: num_tokens - n + 1] == owner[n - 1:]
        caps.append(owner[: num_tokens - n + 1][valid])
        ids.append(inv[valid] + offsets[-1])
        offsets.append(offsets[-1] + len(uniq))
        prev = inv
    # count each (n-gram, caption); sorting by n-gram then caption groups equal n-grams
    keys, counts = np.unique(np.concatenate(ids) * len(texts) + np.concatenate(caps), return_counts=True)
    gid = keys // len(texts)
    return lengths, keys % len(texts), gid, np.searchsorted(offsets, gid, side="right"), counts


def _score_chunk(groups: Sequence[Sequence[str]], tau: float | None, first_index: int = 0) -> _ChunkResult:
    """Weights and statistics for a chunk of images (see the module docstring)."""
    texts, copy_of, k, d, exact = _dedupe(groups, first_index)
    m_images, g_texts = len(k), len(texts)
    lengths, cap, gid, order, count = _ngram_entries(texts)

    image_of_text = np.repeat(np.arange(m_images), d)
    text_base = np.cumsum(d) - d
    pair_base = np.cumsum(d * d) - d * d
    num_slots = int((d * d).sum())

    # Every ordered pair (i, j) of distinct captions of an image as a slot, row-major per image.
    slot_img = np.repeat(np.arange(m_images), d * d)
    local = np.arange(num_slots) - pair_base[slot_img]
    row, col = local // d[slot_img], local % d[slot_img]

    # Clipped matches sum_g min(count_i(g), count_j(g)) are symmetric in (i, j): pair each
    # caption's entry of an n-gram with the later captions' entries of that n-gram in the same
    # image (entries are sorted by n-gram, then caption), then mirror.
    img = image_of_text[cap]
    new_group = np.r_[True, (gid[1:] != gid[:-1]) | (img[1:] != img[:-1])]
    group_end = np.r_[np.flatnonzero(new_group)[1:], len(gid)][np.cumsum(new_group) - 1]
    later = group_end - np.arange(len(gid)) - 1
    a = np.repeat(np.arange(len(gid)), later)
    b = a + 1 + (np.arange(len(a)) - np.repeat(np.cumsum(later) - later, later))
    pair_img = img[a]
    slot = pair_base[pair_img] + (cap[a] - text_base[pair_img]) * d[pair_img] + (cap[b] - text_base[pair_img])
    upper = np.bincount(slot * MAX_ORDER + order[a], weights=np.minimum(count[a], count[b]),
                        minlength=num_slots * MAX_ORDER).reshape(num_slots, MAX_ORDER)
    correct = upper + upper[pair_base[slot_img] + col * d[slot_img] + row]

    hyp = text_base[slot_img] + row
    ref = text_base[slot_img] + col
    off = hyp != ref
    hyp, ref, slot_img = hyp[off], ref[off], slot_img[off]
    bleu = _sentence_bleu_vectorised(correct[off], lengths[hyp], lengths[ref])

    # u(c) = clip(1 - mean BLEU / 100); bincount adds in pair order, like the reference's sum().
    multi = d >= 2
    row_sum = np.bincount(hyp, weights=bleu, minlength=g_texts)
    others = np.maximum(d - 1, 1)[image_of_text]
    u = np.clip(1 - (row_sum / others) / 100, 0.0, 1.0)
    u_sum = np.bincount(image_of_text, weights=u, minlength=m_images)
    uniform = ~multi | (u_sum == 0)
    if tau is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            per_text = u / u_sum[image_of_text]
    else:
        top = np.maximum.reduceat(u, text_base)
        exps = np.exp((u - top[image_of_text]) / tau)
        per_text = exps / np.bincount(image_of_text, weights=exps, minlength=m_images)[image_of_text]
    copies = np.bincount(copy_of, minlength=g_texts)
    image_of_caption = np.repeat(np.arange(m_images), k)
    weights = np.where(uniform[image_of_caption], 1.0 / k[image_of_caption],
                       per_text[copy_of] / copies[copy_of])

    plogp = np.where(weights > 0, weights * np.log(np.where(weights > 0, weights, 1.0)), 0.0)
    return _ChunkResult(
        weights=weights, k=k, distinct=d, exact_copies=exact,
        bleu_sum=np.bincount(slot_img, weights=bleu, minlength=m_images),
        num_pairs=d * (d - 1),
        entropy=np.maximum(-np.bincount(image_of_caption, weights=plogp, minlength=m_images), 0.0),
    )


def bleu_uniqueness(captions: Sequence[str], tau: float | None = None) -> np.ndarray:
    """BLEU-uniqueness weights of one image's captions (fast; equals the reference to ~1e-15).

    ``captions``: the K captions of one image. ``tau``: optional softmax temperature (> 0);
    ``None`` is the linear normalisation. Returns float64 weights, one per caption, >= 0,
    summing to 1. Raises :class:`EmptyCaptionError` for an empty caption.
    For many images, :func:`bleu_uniqueness_batch` is much faster than calling this in a loop.
    """
    _check_tau(tau)
    if isinstance(captions, str) or len(captions) == 0:
        raise ValueError("an image needs a list of at least one caption")
    try:
        return _score_chunk([captions], tau).weights
    except EmptyCaptionError as error:
        raise EmptyCaptionError(error.caption_index) from None


def _chunks(groups: Iterable[Sequence[str]], tau: float | None) -> Iterator[tuple]:
    batch: list[Sequence[str]] = []
    size, first = 0, 0
    for captions in groups:
        batch.append(captions)
        size += len(captions)
        if size >= CHUNK_CAPTIONS:
            yield batch, tau, first
            first += len(batch)
            batch, size = [], 0
    if batch:
        yield batch, tau, first


def _score_chunk_star(job: tuple) -> _ChunkResult:
    return _score_chunk(*job)


def _score_all(groups: Iterable[Sequence[str]], tau: float | None, workers: int,
               progress: bool) -> list[_ChunkResult]:
    """Score every image in chunks, serially or on a process pool, with a progress bar."""
    _check_tau(tau)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    from tqdm.auto import tqdm

    total = len(groups) if hasattr(groups, "__len__") else None
    results: list[_ChunkResult] = []
    with tqdm(total=total, unit="img", desc="BLEU uniqueness", disable=None if progress else True) as bar:
        if workers == 1:
            scored: Iterable[_ChunkResult] = map(_score_chunk_star, _chunks(groups, tau))
            pool = None
        else:
            pool = multiprocessing.get_context().Pool(workers)
            scored = pool.imap(_score_chunk_star, _chunks(groups, tau))
        try:
            for result in scored:
                results.append(result)
                bar.update(len(result.k))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return results


def bleu_uniqueness_batch(groups: Sequence[Sequence[str]], tau: float | None = None,
                          workers: int = 1, progress: bool = False) -> list[np.ndarray]:
    """BLEU-uniqueness weights for many images: one float64 array per image, in order.

    Images are scored in vectorised chunks of about ``CHUNK_CAPTIONS`` captions; ``workers > 1``
    spreads the chunks over a process pool. ``progress`` shows a tqdm bar (on a terminal).
    Errors name the image index and the caption index.
    """
    weights: list[np.ndarray] = []
    for result in _score_all(groups, tau, workers, progress):
        weights.extend(np.split(result.weights, np.cumsum(result.k)[:-1]))
    return weights


# --------------------------------------------------------------------------------------------
# Statistics.
# --------------------------------------------------------------------------------------------

def _histogram(values: np.ndarray, low: float, high: float) -> dict:
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    return {"edges": np.round(edges, 6).tolist(), "counts": counts.tolist()}


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def redundancy_report(groups: Sequence[Sequence[str]], tau: float | None = None,
                      workers: int = 1, progress: bool = False) -> dict:
    """Redundancy statistics of a caption set (``groups``: the captions of each image).

    Returns a JSON-serialisable dict:

    - ``num_images``, ``num_captions``, ``num_distinct_captions``, ``distinct_ratio`` (distinct
      after normalisation and lower-casing / all), ``exact_duplicate_rate`` (captions whose raw
      text repeats an earlier caption of the same image verbatim / all),
      ``images_with_copies`` (fraction of images with at least two equal captions);
    - ``mean_pairwise_bleu``: mean sentence BLEU over all ordered pairs of distinct captions of
      the same image (``num_pairs`` of them; ``None`` when there are none);
    - ``weight_entropy`` (nats) and ``weight_entropy_normalized`` (divided by log K, images with
      K >= 2 only): mean / min / max over images;
    - ``k_histogram`` {K: images}, ``k`` mean / min / max;
    - ``histograms``: binned per-image normalised weight entropy and mean pairwise BLEU, for
      :func:`plot_redundancy`.

    BLEU is computed once per pair; ``workers``/``progress`` as in :func:`bleu_uniqueness_batch`.
    """
    results = _score_all(groups, tau, workers, progress)
    if not results:
        raise ValueError("no images to report on")
    cat = {name: np.concatenate([getattr(r, name) for r in results])
           for name in ("k", "distinct", "exact_copies", "bleu_sum", "num_pairs", "entropy")}
    k, d = cat["k"], cat["distinct"]
    num_captions, num_pairs = int(k.sum()), int(cat["num_pairs"].sum())
    multi = k >= 2
    entropy_norm = cat["entropy"][multi] / np.log(k[multi])
    has_pairs = cat["num_pairs"] > 0
    image_bleu = cat["bleu_sum"][has_pairs] / cat["num_pairs"][has_pairs]
    ks, counts = np.unique(k, return_counts=True)
    return {
        "num_images": int(len(k)),
        "num_captions": num_captions,
        "num_distinct_captions": int(d.sum()),
        "distinct_ratio": float(d.sum() / num_captions),
        "exact_duplicate_rate": float(cat["exact_copies"].sum() / num_captions),
        "images_with_copies": float(np.mean(d < k)),
        "num_pairs": num_pairs,
        "mean_pairwise_bleu": float(cat["bleu_sum"].sum() / num_pairs) if num_pairs else None,
        "weight_entropy": _summary(cat["entropy"]),
        "weight_entropy_normalized": _summary(entropy_norm),
        "k_histogram": {str(int(a)): int(b) for a, b in zip(ks, counts)},
        "k": {"mean": float(k.mean()), "min": int(k.min()), "max": int(k.max())},
        "tau": tau,
        "histograms": {
            "weight_entropy_normalized": _histogram(entropy_norm, 0.0, 1.0),
            "image_mean_pairwise_bleu": _histogram(image_bleu, 0.0, 100.0),
        },
    }


def plot_redundancy(report: dict, path: str | Path) -> Path:
    """Draw a report's K histogram, normalised weight entropy and pairwise BLEU as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    ks = sorted(report["k_histogram"], key=int)
    axes[0].bar([int(x) for x in ks], [report["k_histogram"][x] for x in ks], color="tab:blue")
    axes[0].set(title="captions per image (K)", xlabel="K", ylabel="images")
    if len(ks) <= 20:
        axes[0].set_xticks([int(x) for x in ks])
    panels = [("weight_entropy_normalized", "weight entropy / log K", "tab:green"),
              ("image_mean_pairwise_bleu", "mean pairwise BLEU per image", "tab:orange")]
    for axis, (key, title, color) in zip(axes[1:], panels):
        hist = report["histograms"][key]
        edges = np.asarray(hist["edges"])
        axis.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color=color)
        axis.set(title=title, ylabel="images")
    figure.suptitle(f"{report['num_images']} images, {report['num_captions']} captions, "
                    f"distinct ratio {report['distinct_ratio']:.3f}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
