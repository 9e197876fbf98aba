"""Data: dataset readers, the WebDataset shard writer, the streaming loader and image transforms.

Submodules: ``sample`` (Sample/Rejected), readers (``karpathy``, ``bigearthnet``, ``lmdb_reader``,
``bigearthnet_txt``, ``label_captions``, ``synthetic``), ``writer`` (shards + index.json), ``loader``
(batches of images x K captions) and ``transforms``. The loader API is re-exported here lazily, so that
importing a reader does not pull in torch and webdataset.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

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


def __getattr__(name: str) -> Any:
    """Import the loader/transform names on first use."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wfa.data' has no attribute {name!r}")
