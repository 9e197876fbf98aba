"""Image features of a task's images (torch), streamed in batches by loader workers and cached on disk.

:func:`encode_task` runs a model over some items of a :class:`wfa.eval.tasks.Task` (a torch ``DataLoader``
with ``num_workers`` processes reads and transforms the images; the model encodes batches; a tqdm bar
shows progress) and returns unit-norm float32 features. Images are transformed as for evaluation in
training (``wfa.data.transforms``: resize the short side, centre crop, OpenAI mean/std for RGB; per-band
normalisation for multispectral arrays). An unreadable image is skipped and counted with its reason.

:class:`FeatureCache` keeps features (safetensors) and results (JSON) under one folder, keyed by hashes of
what they depend on: the model's weights (:func:`model_fingerprint`), the image size and transform, and
the items (ids, labels, file size and modification time). A second benchmark run therefore encodes only
data sets or models that changed. Files in the cache are read as data (safetensors, JSON), never unpickled.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wfa.data.transforms import MultispectralTransform, rgb_transform
from wfa.eval.files import write_atomic
from wfa.eval.tasks import Task

#: bump when the features of the same model and images would change (transform, normalisation)
FEATURES_VERSION = 1


@dataclass
class Features:
    """Unit-norm features ``[n, D]`` of the task items ``indices`` ``[n]`` (those that could be read)."""

    features: np.ndarray
    indices: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    cached: bool = False


def model_channels(model: nn.Module) -> int:
    """Input channels of the model's image tower (3 unless a multispectral stem says otherwise)."""
    return int(getattr(model.visual, "in_chans", 3))


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's weights (names, dtypes, shapes and bytes of its state dict)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def band_statistics(task: Task, indices: Sequence[int]) -> dict[str, list[float]]:
    """Per-band mean and std over every pixel of the items' ``C x H x W`` arrays (one streaming pass)."""
    total = total_sq = None
    count = 0
    for i in indices:
        array = np.asarray(task.read(task.items[i]), dtype=np.float64)
        flat = array.reshape(array.shape[0], -1)
        total = flat.sum(axis=1) if total is None else total + flat.sum(axis=1)
        total_sq = (flat ** 2).sum(axis=1) if total_sq is None else total_sq + (flat ** 2).sum(axis=1)
        count += flat.shape[1]
    if not count:
        raise ValueError(f"task {task.name}: no patch to compute band statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist()}


def image_transform(task: Task, image_size: int, channels: int) -> tuple[Callable[[Any], torch.Tensor], str]:
    """(the evaluation transform of the task's images for a model with ``channels`` inputs, a description
    that identifies it for the cache); a ``ValueError`` when the task's images do not have those channels."""
    if task.channels != channels:
        raise ValueError(f"task {task.name} gives {task.channels}-channel images; the model takes {channels}")
    if channels == 3:
        return rgb_transform(image_size, train=False), f"rgb eval {image_size}"
    stats = task.arguments.get("band_stats") or band_statistics(task, range(len(task.items)))
    description = f"bands eval {image_size} " + json.dumps(stats, sort_keys=True)
    return MultispectralTransform(image_size, stats["mean"], stats["std"], train=False), description


class _TaskImages(torch.utils.data.Dataset):
    """The transformed images of some task items; an unreadable one becomes ``(None, index, reason)``."""

    def __init__(self, task: Task, indices: Sequence[int], transform: Callable[[Any], torch.Tensor]) -> None:
        self.task, self.indices, self.transform = task, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor | None, int, str]:
        index = self.indices[position]
        item = self.task.items[index]
        try:
            return self.transform(self.task.read(item)), index, ""
        except Exception as error:  # any decoder failure is this item's problem, counted below
            return None, index, f"{item.id}: {type(error).__name__}: {error}"


def _collate(records: list[tuple[torch.Tensor | None, int, str]]) -> tuple[torch.Tensor | None, list[int], list[str]]:
    kept = [r for r in records if r[0] is not None]
    images = torch.stack([r[0] for r in kept]) if kept else None
    return images, [r[1] for r in kept], [r[2] for r in records if r[0] is None]


@lru_cache(maxsize=None)
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_free_heap() -> None:
    """Give glibc's free heap pages back to the system (``malloc_trim``); nothing elsewhere than glibc.

    glibc raises its mmap threshold after large blocks are freed, so batch-sized buffers then come from the
    heap, and the small objects the loader allocates between them keep freed pages from being returned: the
    process grew with every batch. Trimming after each batch keeps it flat for a few milliseconds; fixing
    the threshold instead slowed the model's forward pass (figures in BENCHMARKS.md).
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def encode_task(model: nn.Module, task: Task, indices: Sequence[int], image_size: int, *, device: Any = None,
                batch_size: int = 64, num_workers: int = 0, progress: bool = True, desc: str = "encode",
                transform: Callable[[Any], torch.Tensor] | None = None) -> Features:
    """Unit-norm image features of ``task.items[indices]`` (see the module docstring).

    ``transform`` defaults to :func:`image_transform`'s. The model is put in eval mode while encoding and
    given back in the mode it was in.
    """
    device = torch.device(device or "cpu")
    if transform is None:
        transform, _ = image_transform(task, image_size, model_channels(model))
    loader = torch.utils.data.DataLoader(
        _TaskImages(task, indices, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate, pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None)
    start, mode = time.perf_counter(), model.training
    feats, kept, failures = [], [], []
    model.to(device).eval()
    try:
        with torch.inference_mode():
            batches = tqdm(loader, desc=desc, unit="batch", disable=None if progress else True)
            for images, batch_indices, failed in batches:
                failures += failed
                if images is None:
                    continue
                out = model.encode_image(images.to(device, non_blocking=True)).float()
                feats.append(F.normalize(out, dim=-1).cpu())
                kept += batch_indices
                del images, out
                release_free_heap()
    finally:
        model.train(mode)
    if not feats:
        raise ValueError(f"task {task.name}: none of the {len(indices)} images could be read "
                         f"(e.g. {failures[0] if failures else 'none listed'})")
    skipped = Counter("unreadable image" for _ in failures)
    return Features(torch.cat(feats).numpy(), np.asarray(kept, dtype=np.int64), dict(skipped),
                    {"unreadable image": failures[0]} if failures else {}, time.perf_counter() - start)


def cache_key(*parts: Any) -> str:
    """sha256 hex of the JSON of ``parts`` (the cache's file names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Features and results on disk under ``root`` (``None``: a cache that keeps nothing)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = self.misses = 0

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        if self.root is None or not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are hex digests made by cache_key, got {key!r}")
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def load_features(self, key: str) -> Features | None:
        """The features stored under ``key``, or ``None`` (absent or unreadable: then they are recomputed)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        if self.root is None or not self._path("features", key, ".safetensors").is_file():
            self.misses += 1
            return None
        path = self._path("features", key, ".safetensors")
        try:
            arrays = load_file(str(path))
            meta = json.loads(self._path("features", key, ".json").read_text(encoding="utf-8"))
            features, indices = arrays["features"], arrays["indices"]
            if features.ndim != 2 or indices.shape != (features.shape[0],):
                raise ValueError("shapes do not match")
        except (OSError, ValueError, KeyError, SafetensorError):
            self.misses += 1
            return None
        self.hits += 1
        return Features(features, indices.astype(np.int64), dict(meta.get("skipped", {})),
                        dict(meta.get("examples", {})), float(meta.get("wall_s", 0.0)), cached=True)

    def save_features(self, key: str, features: Features, describe: dict[str, Any]) -> None:
        """Store ``features`` under ``key`` (atomically; the JSON beside them says what they are)."""
        from safetensors.numpy import save_file

        if self.root is None:
            return
        write_atomic(self._path("features", key, ".safetensors"), lambda p: save_file(
            {"features": np.ascontiguousarray(features.features, dtype=np.float32),
             "indices": np.ascontiguousarray(features.indices, dtype=np.int64)}, str(p)))
        meta = {"skipped": features.skipped, "examples": features.examples, "wall_s": features.wall_s, **describe}
        write_atomic(self._path("features", key, ".json"),
                      lambda p: p.write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8"))

    def load_result(self, key: str) -> dict[str, Any] | None:
        """The JSON result stored under ``key``, or ``None``."""
        if self.root is None:
            return None
        path = self._path("results", key, ".json")
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) else None

    def save_result(self, key: str, result: dict[str, Any]) -> None:
        """Store a JSON ``result`` under ``key`` (atomically)."""
        if self.root is not None:
            write_atomic(self._path("results", key, ".json"),
                          lambda p: p.write_text(json.dumps(result, default=str), encoding="utf-8"))


def cached_encode(model: nn.Module, model_key: str, task: Task, indices: Sequence[int], image_size: int,
                  cache: FeatureCache, **options: Any) -> tuple[Features, str]:
    """:func:`encode_task` through ``cache``: (features, their cache key)."""
    transform, description = image_transform(task, image_size, model_channels(model))
    key = cache_key("features", FEATURES_VERSION, model_key, image_size, description, task.fingerprint(indices))
    found = cache.load_features(key)
    if found is not None:
        return found, key
    features = encode_task(model, task, indices, image_size, transform=transform, **options)
    cache.save_features(key, features, {"task": task.name, "images": len(indices), "image_size": image_size,
                                        "model": model_key})
    return features, key
