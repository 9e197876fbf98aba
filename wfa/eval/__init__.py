"""Evaluation: retrieval metrics (FAISS / torch), zero-shot classification, reports.

``from wfa.eval import retrieval_metrics`` gives the metric function; the encoding and report
helpers live in :mod:`wfa.eval.retrieval`, :mod:`wfa.eval.zeroshot` and :mod:`wfa.eval.report`.
"""
from wfa.eval.retrieval import aggregated_gallery_metrics, chance_recalls, retrieval_metrics

__all__ = ["aggregated_gallery_metrics", "chance_recalls", "retrieval_metrics"]
