"""Which FAISS runs the searches: the GPU index where FAISS has GPUs, else the CPU index, with a message.

``faiss-cpu`` (a base dependency) and ``faiss-gpu`` (the ``gpu`` extra: ``pip install -e '.[gpu]'``) both
install the Python module ``faiss``; the one installed last provides its files. :func:`faiss_gpus` says how
many GPUs the loaded module can use and, once per process, why it is none where GPU search was possible
(a GPU build that sees no GPU, faiss-gpu installed under faiss-cpu's files, or CUDA without a GPU build).
numpy-free and torch-free: it only looks at ``torch`` when something else imported it.
"""
from __future__ import annotations

import logging
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

import faiss

logger = logging.getLogger("wfa.faiss")
GPU_DISTRIBUTIONS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")


def installed_faiss() -> dict[str, str]:
    """``{distribution: version}`` of the FAISS packages installed (``faiss-cpu``, ``faiss-gpu``, ...)."""
    found = {}
    for name in ("faiss-cpu", *GPU_DISTRIBUTIONS):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_build() -> bool:
    """Whether the loaded ``faiss`` module was built with GPU support."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_all_gpus")


def fallback_reason(gpus: int, has_gpu_build: bool, distributions: dict[str, str], cuda: bool) -> str | None:
    """Why FAISS searches on the CPU where GPU search was possible, or ``None`` when there is nothing to say."""
    if gpus > 0:
        return None
    if has_gpu_build:
        return "FAISS: the GPU build sees no GPU; searching with the CPU index"
    if any(name in distributions for name in GPU_DISTRIBUTIONS):
        return ("FAISS: faiss-gpu is installed but the module faiss holds faiss-cpu's files (both install it; the "
                "last installed wins): run `pip install --force-reinstall --no-deps faiss-gpu`; searching with the "
                "CPU index")
    if cuda:
        return ("FAISS: CPU build on a machine with CUDA (pip install -e '.[gpu]' for GPU search); searching with "
                "the CPU index")
    return None


@lru_cache(maxsize=None)
def faiss_gpus() -> int:
    """GPUs FAISS searches on (0: the CPU index); the first call logs :func:`fallback_reason` if any."""
    has_gpu_build = gpu_build()
    gpus = int(faiss.get_num_gpus()) if has_gpu_build else 0
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_available())
    reason = fallback_reason(gpus, has_gpu_build, installed_faiss(), cuda)
    if reason:
        logger.warning(reason)
    return gpus


def describe() -> dict[str, Any]:
    """The loaded FAISS for reports: version, GPU build, GPUs used, installed distributions."""
    return {"version": getattr(faiss, "__version__", "unknown"), "gpu_build": gpu_build(), "gpus": faiss_gpus(),
            "distributions": installed_faiss()}
