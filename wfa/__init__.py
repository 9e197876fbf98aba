"""wfa: redundancy-aware contrastive pretraining of vision-language models on remote-sensing data.

The doors most people need, importable from here (each is loaded on first use, so ``import wfa`` stays light):

- captions: :func:`bleu_uniqueness`, :func:`bleu_uniqueness_batch` (BLEU-uniqueness weights of an image's
  captions / of many images);
- aggregation: :func:`create_aggregator`, :func:`list_aggregators` (fuse K caption embeddings into one);
- data: :func:`create_reader`, :func:`list_readers` (the registered data-set readers), :func:`write_shards`
  (WebDataset shards from a reader);
- models: :func:`create_model` (an open_clip model and tokenizer by name or JSON config);
- training: :func:`load_config`, :func:`train`, :func:`list_methods` (the registered training methods);
  :class:`Run` (a run folder read back: config, metrics, val curve, checkpoints, models, evaluation);
- evaluation: :func:`evaluate` (retrieval report of a model on a shard split), :func:`retrieval_metrics`
  (recalls of given embeddings).

See README.md ("Python API") and docs/ for the method, the formats and the metrics.
"""
from __future__ import annotations

from wfa._lazy import lazy_names

__version__ = "0.1.0"

_DOORS = {
    "bleu_uniqueness": "wfa.redundancy",
    "bleu_uniqueness_batch": "wfa.redundancy",
    "create_aggregator": "wfa.aggregation",
    "list_aggregators": "wfa.aggregation",
    "create_reader": "wfa.data.readers",
    "list_readers": "wfa.data.readers",
    "write_shards": "wfa.data.writer",
    "create_model": "wfa.model",
    "load_config": "wfa.config",
    "train": "wfa.trainer",
    "Run": "wfa.run",
    "list_methods": "wfa.methods",
    "evaluate": "wfa.eval",
    "retrieval_metrics": "wfa.eval",
}

__all__ = sorted(_DOORS) + ["__version__"]

__getattr__, __dir__ = lazy_names(__name__, globals(), _DOORS)
