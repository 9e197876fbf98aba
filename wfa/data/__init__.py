"""Data: dataset readers, the WebDataset shard writer, the streaming loader and image transforms.

Submodules: ``sample`` (Sample/Rejected), readers (``karpathy``, ``bigearthnet``, ``lmdb_reader``,
``bigearthnet_txt``, ``label_captions``, ``synthetic``), ``writer`` (shards + index.json), ``loader``
(batches of images x K captions) and ``transforms``. The loader API is re-exported here lazily, so that
importing a reader does not pull in torch and webdataset.
"""
from __future__ import annotations

from wfa._lazy import lazy_names

_LAZY = {
    "LoaderConfig": "wfa.data.loader",
    "LoaderStats": "wfa.data.loader",
    "ShardLoader": "wfa.data.loader",
    "build_loader": "wfa.data.loader",
    "build_eval_loader": "wfa.data.loader",
    "read_index": "wfa.data.loader",
    "build_transform": "wfa.data.transforms",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)
