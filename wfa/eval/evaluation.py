"""The evaluation door: :func:`evaluate` a model on a shard split, get an :class:`EvalReport`.

``wfa eval``, ``wfa demo``, training's validation and the benchmark scripts all evaluate through
:func:`evaluate`: an ordered, non-augmented pass over the split keeping every caption
(:mod:`wfa.eval.encode`), exact retrieval recalls of the features (:mod:`wfa.eval.metrics`), chance
levels, the aggregated-gallery recalls when an aggregator is given, and optional zero-shot scores.
:meth:`EvalReport.write` writes ``report.json``, ``report.md`` and the plots (:mod:`wfa.eval.report`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch import nn

from wfa.data.loader import LoaderConfig, ShardLoader, build_eval_loader, read_index
from wfa.eval.encode import EncodedSet, encode_eval_set, model_image_size
from wfa.eval.metrics import (
    RetrievalRanks,
    aggregated_gallery_metrics,
    chance_recalls,
    metrics_from_ranks,
    retrieval_ranks,
)
from wfa.eval.report import format_table, recall_curve, write_report_files
from wfa.eval.zeroshot import zeroshot_from_labels

#: a zero-shot task run by :func:`evaluate`: ``(model, tokenizer) -> scores``.
ZeroShotTask = Callable[[nn.Module, Callable], dict[str, Any]]


@dataclass
class EvalReport:
    """What :func:`evaluate` measured on one split.

    ``metrics`` is flat: ``t2i_r{k}``, ``i2t_r{k}``, ``mR``, ``mR_t2i`` (percent), ``num_images``,
    ``num_captions``, ``num_i2t_queries`` and, with an aggregator, ``agg_i2t_r{k}``, ``agg_mR_i2t``,
    ``agg_gallery_size``. ``chance`` holds the recalls of a random ranking, ``ranks`` the capped ranks
    of every query (for recall@k curves), ``encoded`` the features, ids, captions and caption weights,
    ``zeroshot`` the zero-shot scores by task name.
    """

    shards: str
    split: str
    backend: str
    metrics: dict[str, float]
    chance: dict[str, float]
    ranks: RetrievalRanks
    encoded: EncodedSet
    zeroshot: dict[str, dict[str, Any]] = field(default_factory=dict)
    aggregator: str | None = None
    wall_s: float = 0.0

    def recall_curve(self) -> dict[str, list[float]]:
        """Recall@k for k = 1..kmax in both directions: ``{"k", "t2i", "i2t"}``."""
        return recall_curve(self.ranks)

    def chance_curve(self) -> dict[str, list[float]]:
        """Recall@k of a random ranking for the same k as :meth:`recall_curve`."""
        ks = range(1, self.ranks.kmax + 1)
        chance = chance_recalls(self.encoded.num_images, self.encoded.captions_per_image, ks)
        return {"k": list(ks), "t2i": [chance[f"t2i_r{k}"] for k in ks], "i2t": [chance[f"i2t_r{k}"] for k in ks]}

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: ``{split: metrics, "num_<split>_images", "num_captions", "chance", "curves",
        "shards", "split", "backend", ["zeroshot"], "eval_wall_s"}``."""
        out: dict[str, Any] = {
            self.split: self.metrics, f"num_{self.split}_images": self.encoded.num_images,
            "num_captions": self.encoded.num_captions, "chance": self.chance,
            "curves": {"retrieval": self.recall_curve()}, "shards": self.shards, "split": self.split,
            "backend": self.backend}
        if self.zeroshot:
            out["zeroshot"] = self.zeroshot
        out["eval_wall_s"] = self.wall_s
        return out

    def write(self, out: str | Path, title: str = "wfa evaluation", extra: Mapping[str, Any] | None = None,
              echo: bool = True) -> dict[str, Any]:
        """Write ``out`` (JSON: :meth:`to_dict` + ``extra``), a Markdown report and plots beside it.

        Plots: recall@k against chance, and histograms of the shards' BLEU caption weights and of the
        aggregator's weights when they differ from them (learned ones). With ``echo``, the table and the
        key facts are printed. Returns the written JSON as a dict plus ``"files"`` (``{kind: path}``).
        """
        report = {**self.to_dict(), **(extra or {})}
        rows = {self.split: self.metrics, "chance": self.chance}
        encoded = self.encoded
        weights = {"bleu (shards)": encoded.caption_weights}
        if encoded.agg_weights is not None and not np.allclose(encoded.agg_weights, encoded.caption_weights):
            # a bleu aggregator reproduces the shard weights: plot only weights that differ (learned ones)
            weights[self.aggregator or "aggregator"] = encoded.agg_weights
        facts: dict[str, Any] = {
            f"{self.split} images": encoded.num_images, f"{self.split} captions": encoded.num_captions,
            "mR_t2i / chance mR_t2i": self.metrics["mR_t2i"] / self.chance["mR_t2i"]}
        for key, value in self.metrics.items():
            if key.startswith("agg_"):
                facts[f"aggregated gallery {key[4:]}"] = value
        for name, result in self.zeroshot.items():
            facts[f"zero-shot {name}"] = {k: v for k, v in result.items() if not isinstance(v, dict)}
        curves = {self.split: self.recall_curve(), "chance": self.chance_curve()}
        files = write_report_files(Path(out).parent, report, rows, curves=curves, weights=weights, title=title,
                                   json_name=Path(out).name, extra=facts)
        if echo:
            print(format_table(rows))
            for key, value in facts.items():
                print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
            print(f"wrote {', '.join(files.values())}")
        return {**report, "files": files}


def evaluate(model: nn.Module, tokenizer: Callable, shards: str | Path, split: str,
             aggregator: nn.Module | None = None, *, device: Any = None, image_size: int | None = None,
             batch_size: int = 64, num_workers: int = 0, ks: Sequence[int] = (1, 5, 10), curve_k: int = 10,
             backend: str = "faiss", trim_text: bool = True, text_buckets: int = 1, dedup_captions: bool = False,
             label_zeroshot: bool = False, zeroshot: Mapping[str, ZeroShotTask] | None = None,
             progress: bool = False) -> EvalReport:
    """Evaluate ``model`` (an open_clip CLIP) on ``split`` of the shard directory ``shards``.

    Every image and every caption of the split is encoded once, in shard order, without augmentation, at
    ``image_size`` (default: the model's); recalls at ``ks`` and ranks up to ``max(max(ks), curve_k)`` come
    from one exact retrieval pass (``backend`` ``"faiss"`` or ``"torch"``: identical numbers). With
    ``aggregator`` (a ``wfa.aggregation`` module) each image's captions are also fused and the
    aggregated-gallery recalls ``agg_*`` are added. ``trim_text``, ``text_buckets`` and ``dedup_captions``
    are a run's exact text-encoding options (:func:`wfa.model.encode_captions`). ``label_zeroshot`` adds
    zero-shot accuracy over the shards' labels as ``"<split> labels"`` when every image has exactly one
    label; ``zeroshot`` maps task names to callables ``(model, tokenizer) -> scores`` run afterwards.
    Encoding runs in eval mode and gives the model and aggregator back in the mode they were in.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    start = time.perf_counter()
    loader = _split_loader(shards, split, tokenizer, image_size or model_image_size(model), batch_size, num_workers)
    encoded = encode_eval_set(model, loader, aggregator, device, trim_text=trim_text, text_buckets=text_buckets,
                              dedup_captions=dedup_captions, progress=progress)
    metrics, ranks = _retrieval(encoded, ks, backend, curve_k)
    chance = chance_recalls(encoded.num_images, encoded.captions_per_image, ks)
    scores: dict[str, dict[str, Any]] = {}
    if label_zeroshot:
        from_labels = zeroshot_from_labels(model, tokenizer, encoded.image_emb, encoded.labels, device)
        if from_labels is not None:
            scores[f"{split} labels"] = from_labels
    for name, task in (zeroshot or {}).items():
        scores[name] = task(model, tokenizer)
    name = None if aggregator is None else type(aggregator).__name__.replace("Aggregator", "").lower() or "aggregator"
    return EvalReport(shards=str(shards), split=split, backend=backend, metrics=metrics, chance=chance, ranks=ranks,
                      encoded=encoded, zeroshot=scores, aggregator=name, wall_s=time.perf_counter() - start)


def _split_loader(shards: str | Path, split: str, tokenizer: Callable, image_size: int, batch_size: int,
                  num_workers: int) -> ShardLoader:
    """An ordered, non-augmented ``images``-view loader over ``split`` that keeps every caption.

    ``max_captions`` is the index's largest caption count (``captions.k_max``), so no caption is dropped.
    """
    max_captions = int(read_index(shards).get("captions", {}).get("k_max") or 5)
    cfg = LoaderConfig(shards=str(shards), split=split, batch_size=batch_size, num_workers=num_workers,
                       max_captions=max_captions, image_size=image_size, shuffle=0, view="images", augment=False)
    return build_eval_loader(cfg, tokenizer)[0]


def _retrieval(encoded: EncodedSet, ks: tuple[int, ...], backend: str,
               curve_k: int) -> tuple[dict[str, float], RetrievalRanks]:
    """Flat metrics of the encoded split (recalls, counts, ``agg_*`` when fused) and the ranks up to curve_k."""
    ranks = retrieval_ranks(encoded.image_emb, encoded.text_emb, encoded.text_to_image, max(max(ks), curve_k),
                            backend)
    out: dict[str, float] = dict(metrics_from_ranks(ranks, ks))
    out["num_images"] = encoded.num_images
    out["num_captions"] = encoded.num_captions
    out["num_i2t_queries"] = int(ranks.i2t.size)
    if encoded.fused_emb is not None and encoded.fused_emb.shape[0]:
        agg = aggregated_gallery_metrics(encoded.image_emb, encoded.fused_emb, encoded.fused_to_image, ks, backend)
        out.update({f"agg_{key}": value for key, value in agg.items()})
        out["agg_gallery_size"] = int(encoded.fused_emb.shape[0])
    return out, ranks
