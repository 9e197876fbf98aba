"""Evaluation: one door, :func:`evaluate`, and the retrieval metrics of precomputed features.

``evaluate(model, tokenizer, shards, split, aggregator=None, ...) -> EvalReport`` is what ``wfa eval``,
``wfa demo``, training's validation and the benchmarks use. Behind it, lower-level modules with one job
each: :mod:`wfa.eval.metrics` (exact R@k with FAISS, numpy only: no torch), :mod:`wfa.eval.torch_search`
(the torch reference search), :mod:`wfa.eval.encode` (features of a split, torch),
:mod:`wfa.eval.zeroshot` (zero-shot classification) and :mod:`wfa.eval.report` (tables, JSON, plots).
"""
from wfa.eval.evaluation import EvalReport, evaluate
from wfa.eval.metrics import aggregated_gallery_metrics, chance_recalls, retrieval_metrics

__all__ = ["EvalReport", "aggregated_gallery_metrics", "chance_recalls", "evaluate", "retrieval_metrics"]
