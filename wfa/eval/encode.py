"""Encoding an evaluation split with a model (torch): unit-norm image and caption features, fused captions.

The lower half of :func:`wfa.eval.evaluate`: :func:`encode_eval_set` runs a model (and optionally an
aggregator) over an ``images``-view loader and returns an :class:`EncodedSet` of numpy features, which
:mod:`wfa.eval.metrics` turns into recalls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wfa.model import encode_captions


@dataclass
class EncodedSet:
    """Features of one evaluation split: unit-norm images ``[N, D]`` and captions ``[T, D]``.

    ``text_to_image`` ``[T]`` is each caption's image index; ``caption_weights`` ``[T]`` the shards'
    BLEU weights; with an aggregator, ``fused_emb`` ``[M, D]`` / ``fused_to_image`` ``[M]`` are the fused
    caption features of the images that have captions and ``agg_weights`` ``[T]`` the weights it used.
    """

    image_emb: np.ndarray
    text_emb: np.ndarray
    text_to_image: np.ndarray
    caption_weights: np.ndarray
    image_ids: list[str]
    captions: list[str]
    labels: list[list[str] | None]
    fused_emb: np.ndarray | None = None
    fused_to_image: np.ndarray | None = None
    agg_weights: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        """Number of images (the t2i gallery)."""
        return int(self.image_emb.shape[0])

    @property
    def num_captions(self) -> int:
        """Number of captions (the i2t gallery and the t2i queries)."""
        return int(self.text_emb.shape[0])

    @property
    def captions_per_image(self) -> float:
        """Mean number of captions per image (the chance levels' ``K``)."""
        return self.num_captions / max(1, self.num_images)


def model_image_size(model: nn.Module) -> int:
    """The square input size of the model's image tower (224 when it does not say)."""
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def encode_eval_set(model: nn.Module, loader: Iterable[dict[str, Any]], aggregator: nn.Module | None = None,
                    device: Any = None, trim_text: bool = True, text_buckets: int = 1, dedup_captions: bool = False,
                    progress: bool = False) -> EncodedSet:
    """Encode every image and every caption of an ``images``-view loader (H-loader's batches).

    Each batch is a dict with ``images`` ``[B, C, H, W]``, ``tokens`` ``[B, K, L]``, ``caption_mask``
    ``[B, K]``, ``weights`` ``[B, K]`` and ``image_ids``; ``captions`` and ``labels`` are kept when present.
    With ``aggregator`` (an ``wfa.aggregation`` module), the captions of each image are also fused
    (the batch weights are passed; aggregators that learn or ignore weights do not use them).
    Captions go through :func:`wfa.model.encode_captions` with ``trim_text``, ``text_buckets`` and
    ``dedup_captions`` (a run's ``model.*`` options; all exact). The model and aggregator are put in eval
    mode while encoding and then back in the mode they were in.
    """
    device = torch.device(device or "cpu")
    modules = [m for m in (model, aggregator) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.to(device).eval()
    try:
        encoded = _encode_batches(model, loader, aggregator, device, progress,
                                  {"trim": trim_text, "buckets": text_buckets, "dedup": dedup_captions})
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return encoded


def _encode_batches(model, loader, aggregator, device, progress: bool, text: dict) -> EncodedSet:
    """The loop of :func:`encode_eval_set` (model and aggregator already on ``device`` in eval mode)."""
    images, texts, owners, bleu, agg_w, fused, fused_owner = [], [], [], [], [], [], []
    ids: list[str] = []
    captions: list[str] = []
    labels: list[list[str] | None] = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="encode", disable=None if progress else True, unit="batch"):
            x = batch["images"].to(device)
            mask = batch["caption_mask"].to(device).bool()
            weights = batch["weights"].to(device).float()
            offset = len(ids)
            images.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())
            has_caption = mask.any(dim=1)
            feats = torch.zeros(*mask.shape, images[-1].shape[1], device=device)
            if bool(has_caption.any()):
                feats = encode_captions(model, batch["tokens"].to(device), mask, **text).float()
            rows, cols = mask.nonzero(as_tuple=True)
            texts.append(feats[rows, cols].cpu())
            owners.append(rows.cpu() + offset)
            bleu.append(weights[rows, cols].cpu())
            if aggregator is not None and bool(has_caption.any()):
                keep = has_caption.nonzero().squeeze(1)
                f, w = aggregator(feats[keep], mask[keep], weights[keep])
                fused.append(F.normalize(f.float(), dim=-1).cpu())
                fused_owner.append(keep.cpu() + offset)
                full = torch.zeros(mask.shape, device=device)
                full[keep] = w.float()
                agg_w.append(full[rows, cols].cpu())
            batch_ids = list(batch["image_ids"])
            ids.extend(batch_ids)
            if batch.get("captions") is not None:
                captions.extend(batch["captions"][r][c] for r, c in zip(rows.tolist(), cols.tolist()))
            batch_labels = batch.get("labels")
            labels.extend(batch_labels if batch_labels is not None else [None] * len(batch_ids))

    def cat(parts: list, dim: int | None = None) -> np.ndarray:
        if parts:
            return torch.cat(parts).numpy()
        return np.zeros((0, dim) if dim else (0,), dtype=np.float32)

    if not images:
        raise ValueError("the evaluation loader gave no batch: is the split empty?")
    dim = images[0].shape[1]
    return EncodedSet(
        image_emb=cat(images), text_emb=cat(texts, dim), text_to_image=cat(owners).astype(np.int64),
        caption_weights=cat(bleu), image_ids=ids, captions=captions, labels=labels,
        fused_emb=cat(fused, dim) if aggregator is not None else None,
        fused_to_image=cat(fused_owner).astype(np.int64) if aggregator is not None else None,
        agg_weights=cat(agg_w) if aggregator is not None else None,
    )
