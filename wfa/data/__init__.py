"""Data: dataset readers, the WebDataset shard writer, the streaming loader and image transforms.

Readers are a registry (``readers``): ``create_reader(name, **kwargs)``, ``list_readers()``, ``get_reader(name)``
and ``register_reader`` for your own (built in: ``synthetic``, ``karpathy``, ``bigearthnet``,
``bigearthnet-lmdb``, ``bigearthnet-txt``, in the modules of those names). Other submodules: ``sample``
(Sample/Rejected), ``label_captions``, ``writer`` (shards + index.json), ``loader`` (batches of images x K
captions) and ``transforms``. Everything here is re-exported lazily, so that the readers and the writer
never pull in torch and webdataset; only the loader and the transforms do.
"""
from __future__ import annotations

from wfa._lazy import lazy_names

_LAZY = {
    "ReaderArg": "wfa.data.readers",
    "comma_list": "wfa.data.readers",
    "create_reader": "wfa.data.readers",
    "get_reader": "wfa.data.readers",
    "list_readers": "wfa.data.readers",
    "register_reader": "wfa.data.readers",
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
