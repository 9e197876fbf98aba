"""Evaluation: one door, :func:`evaluate`, and the retrieval metrics of precomputed features.

``evaluate(model, tokenizer, shards, split, aggregator=None, ...) -> EvalReport`` is what ``wfa eval``,
``wfa demo``, training's validation and the benchmarks use. Behind it, lower-level modules with one job
each: :mod:`wfa.eval.metrics` (exact R@k with FAISS, numpy only: no torch), :mod:`wfa.eval.torch_search`
(the torch reference search), :mod:`wfa.eval.encode` (features of a split, torch),
:mod:`wfa.eval.zeroshot` (zero-shot classification) and :mod:`wfa.eval.report` (tables, JSON, plots).

The benchmark (``wfa benchmark``): :mod:`wfa.eval.tasks` (labelled image collections as registered tasks:
``create_task``, ``list_tasks``, ``register_task``), :mod:`wfa.eval.features` (streamed, cached image
features), :mod:`wfa.eval.classification` (top-k, mAP), :mod:`wfa.eval.fewshot` (n-shot draws),
:mod:`wfa.eval.probe` (linear probe), :mod:`wfa.eval.knn` (k-NN with FAISS), :mod:`wfa.eval.faiss_device`
(GPU or CPU FAISS), :mod:`wfa.eval.benchmark` (suites: ``load_suite``, ``run_suite``),
:mod:`wfa.eval.benchmark_report` (tables as papers print them, CSV, JSON, plot) and :mod:`wfa.eval.files`
(results written atomically).

The names below load on first use, like ``import wfa``'s doors: the metrics of given features never
pull in torch, the door does.
"""
from __future__ import annotations

from wfa._lazy import lazy_names

_DOORS = {
    "EvalReport": "wfa.eval.evaluation",
    "evaluate": "wfa.eval.evaluation",
    "aggregated_gallery_metrics": "wfa.eval.metrics",
    "chance_recalls": "wfa.eval.metrics",
    "retrieval_metrics": "wfa.eval.metrics",
    "create_task": "wfa.eval.tasks",
    "list_tasks": "wfa.eval.tasks",
    "register_task": "wfa.eval.tasks",
    "run_zeroshot": "wfa.eval.zeroshot",
    "linear_probe": "wfa.eval.probe",
    "knn_classify": "wfa.eval.knn",
    "load_suite": "wfa.eval.benchmark",
    "run_suite": "wfa.eval.benchmark",
}

__all__ = sorted(_DOORS)

__getattr__, __dir__ = lazy_names(__name__, globals(), _DOORS)
