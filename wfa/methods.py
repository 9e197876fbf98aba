"""Training methods: which captions of a batch are encoded, how they are fused, and the loss.

Every method is one class registered with :func:`register_method`; the config check, the loader view, the
trainer and the loss all ask this registry, and nothing else knows method names. A method declares:

- ``view``: the loader view it trains on — ``"images"`` (one sample per image with all its captions),
  ``"pairs"`` (one sample per caption) or ``"distinct-pairs"`` (one sample per distinct caption);
- ``aggregator``: the aggregator that fuses an image's encoded captions into one text feature
  (``None``: every encoded caption is its own text);
- :meth:`Method.select`: the captions encoded in a micro-step (``[B, K, L]`` tokens and a ``[B, K]`` mask,
  drawn with the trainer's per-step generator when the choice is random, so a resumed run draws the same);
- :meth:`Method.build_loss`: the loss on the model's output.

The model (:class:`wfa.model.ContrastiveModel`) encodes the selected captions (``caption_features``
``[B, K, D]``) and, with an aggregator, fuses them (``text_features`` ``[B, D]``). See ``docs/method.md``
for the methods and why they exist. Adding a method is one registration (plus its tests)::

    @register_method("first")
    class FirstCaption(Method):
        '''The first caption of every image, CLIP loss.'''

        def select(self, batch, generator):
            return one_caption(batch, torch.zeros(batch["tokens"].shape[0], dtype=torch.long))

        def build_loss(self, local_loss):
            return SingleTextLoss(local_loss)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from wfa.data.loader import VIEWS
from wfa.loss import clip_loss_module, multi_positive_loss_module

__all__ = [
    "Captions", "FusedTextLoss", "HybridLoss", "Method", "MethodOptions", "MultiPositiveLoss", "SingleTextLoss",
    "create_method", "get_method", "list_methods", "one_caption", "register_method",
]


@dataclass
class MethodOptions:
    """Options of the methods that have any (the ``method_options`` section of a run config).

    ``keep_prob``: the stochastic aggregation methods (``*-subset``) keep each caption of an image with this
    probability at every visit (at least one). 0.5 is the default: with K = 5 it fuses 2.5 captions on
    average, so the fused target differs from visit to visit (31 possible subsets) while half the text
    compute is spent; in the check that motivated these methods (UCM, 400 steps, 2 seeds) 0.5 lifted BLEU
    fusion from 16.1 to 23.5 test mR_t2i (pairs: 24.9).
    ``hybrid_mix``: weight of the fused-target CLIP loss in ``hybrid``; the per-caption multi-positive
    loss gets ``1 - hybrid_mix``.
    ``copy_positives``: in the multi-positive losses (``multipos``, ``wmultipos``, ``hybrid``), a caption of
    another image in the (global) batch that is a copy of one of an image's captions (equal after
    white-space collapsing and lower-casing) is a positive of that image too, not a negative
    (:class:`wfa.loss.MultiPositiveClipLoss`). RSICD has 1,366 train captions shared by two or more images.
    """

    keep_prob: float = 0.5
    hybrid_mix: float = 0.5
    copy_positives: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` for values outside their range."""
        if not 0.0 < self.keep_prob <= 1.0:
            raise ValueError(f"method_options.keep_prob={self.keep_prob} must be in (0, 1]")
        if not 0.0 <= self.hybrid_mix <= 1.0:
            raise ValueError(f"method_options.hybrid_mix={self.hybrid_mix} must be in [0, 1]")


@dataclass
class Captions:
    """The captions one micro-step encodes.

    ``tokens`` ``[B, K, L]``; ``mask`` ``[B, K]`` bool, the captions to encode (at least one per image);
    ``weights`` ``[B, K]``: the shard's BLEU-uniqueness weights of those captions (aggregators and
    losses that use them renormalise over ``mask``); ``keys`` ``[B, K]``: equal for copies of one text
    (:func:`wfa.data.loader.caption_key`), or None when the batch has none.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor
    keys: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """Number of captions encoded."""
        return int(self.mask.sum())


class Method:
    """Base class of a training method; subclasses set the class attributes and override what differs.

    The defaults: the ``images`` view, no aggregator, every valid caption of every image encoded.
    """

    name: ClassVar[str] = ""
    view: ClassVar[str] = "images"
    aggregator: ClassVar[str | None] = None

    def __init__(self, options: MethodOptions | None = None) -> None:
        self.options = options or MethodOptions()

    def select(self, batch: dict[str, Any], generator: torch.Generator) -> Captions:
        """The captions to encode for ``batch`` (``tokens``, ``caption_mask``, ``weights``, ``caption_keys``);
        default all."""
        return Captions(batch["tokens"], batch["caption_mask"].bool(), batch["weights"].float(),
                        batch.get("caption_keys"))

    def build_loss(self, local_loss: bool) -> nn.Module:
        """The loss module, called as ``loss(model_output, captions)``; rank and world size come from
        torch.distributed (build it after the process group exists)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, view={self.view!r}, aggregator={self.aggregator!r})"


_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`Method` subclass under ``name``."""

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}): {cls!r} is not a subclass of wfa.methods.Method")
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered ({_REGISTRY[name].__name__})")
        if cls.view not in VIEWS:
            raise ValueError(f"method {name!r}: view {cls.view!r} is not one of {', '.join(VIEWS)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The registered class of ``name``; ``ValueError`` listing the methods otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(list_methods())}")
    return _REGISTRY[name]


def create_method(name: str, options: MethodOptions | None = None) -> Method:
    """An instance of the registered method ``name``."""
    return get_method(name)(options)


# ------------------------------------------------------------------------------------------------ selections


def one_caption(batch: dict[str, Any], index: torch.Tensor) -> Captions:
    """Caption ``index[b]`` of every image as a K = 1 selection."""
    rows = torch.arange(index.shape[0])
    tokens = batch["tokens"][rows, index].unsqueeze(1)
    ones = torch.ones(index.shape[0], 1)
    keys = batch.get("caption_keys")
    return Captions(tokens, ones.bool(), ones, None if keys is None else keys[rows, index].unsqueeze(1))


def random_subset(mask: torch.Tensor, keep_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each ``True`` of ``mask`` ``[B, K]`` with probability ``keep_prob``; at least one per row."""
    keep = (torch.rand(mask.shape, generator=generator) < keep_prob) & mask
    empty = ~keep.any(dim=1)
    if bool(empty.any()):
        fallback = torch.multinomial(mask[empty].float(), 1, generator=generator).squeeze(1)
        keep[empty.nonzero().squeeze(1), fallback] = True
    return keep


# ---------------------------------------------------------------------------------------------------- losses


class SingleTextLoss(nn.Module):
    """open_clip's ``ClipLoss`` between each image and its one encoded caption (``K = 1`` selections)."""

    def __init__(self, local_loss: bool = False) -> None:
        super().__init__()
        self.clip = clip_loss_module(local_loss)

    def forward(self, out: dict[str, torch.Tensor], captions: Captions) -> torch.Tensor:
        return self.clip(out["image_features"], out["caption_features"][:, 0], out["logit_scale"])


class FusedTextLoss(nn.Module):
    """open_clip's ``ClipLoss`` between each image and its fused text feature."""

    def __init__(self, local_loss: bool = False) -> None:
        super().__init__()
        self.clip = clip_loss_module(local_loss)

    def forward(self, out: dict[str, torch.Tensor], captions: Captions) -> torch.Tensor:
        return self.clip(out["image_features"], out["text_features"], out["logit_scale"])


class MultiPositiveLoss(nn.Module):
    """Every encoded caption its own text, all of an image's captions positives
    (:class:`wfa.loss.MultiPositiveClipLoss`); ``weighted``: image->text targets are the BLEU weights;
    ``copy_positives``: copies of an image's captions held by other images are its positives too."""

    def __init__(self, local_loss: bool = False, weighted: bool = False, copy_positives: bool = True) -> None:
        super().__init__()
        self.loss = multi_positive_loss_module(local_loss)
        self.weighted = weighted
        self.copy_positives = copy_positives

    def forward(self, out: dict[str, torch.Tensor], captions: Captions) -> torch.Tensor:
        targets = captions.weights if self.weighted else None
        keys = captions.keys if self.copy_positives else None
        return self.loss(out["image_features"], out["caption_features"], out["logit_scale"], captions.mask,
                         target_weights=targets, caption_keys=keys)


class HybridLoss(nn.Module):
    """``mix`` x CLIP loss on the fused text + ``(1 - mix)`` x multi-positive loss on the same captions."""

    def __init__(self, local_loss: bool, mix: float, copy_positives: bool = True) -> None:
        super().__init__()
        self.fused = FusedTextLoss(local_loss)
        self.per_caption = MultiPositiveLoss(local_loss, copy_positives=copy_positives)
        self.mix = mix

    def forward(self, out: dict[str, torch.Tensor], captions: Captions) -> torch.Tensor:
        return self.mix * self.fused(out, captions) + (1 - self.mix) * self.per_caption(out, captions)


# ---------------------------------------------------------------------------------------------------- methods


class _OneTextMethod(Method):
    """One text per sample and the CLIP loss."""

    def build_loss(self, local_loss: bool) -> nn.Module:
        return SingleTextLoss(local_loss)


@register_method("pairs")
class Pairs(_OneTextMethod):
    """The classic practice: one sample per (image, caption); an image is encoded K times per epoch."""

    view = "pairs"


@register_method("pairs-dedup")
class DistinctPairs(_OneTextMethod):
    """``pairs`` over the distinct captions of each image only (copies equal after white-space and case
    folding count once): the naive redundancy-aware baseline."""

    view = "distinct-pairs"


@register_method("random")
class RandomCaption(_OneTextMethod):
    """One valid caption per image and visit, drawn uniformly (open_clip's practice)."""

    def select(self, batch: dict[str, Any], generator: torch.Generator) -> Captions:
        index = torch.multinomial(batch["caption_mask"].float(), 1, generator=generator).squeeze(1)
        return one_caption(batch, index)


@register_method("random-bleu")
class BleuWeightedRandomCaption(_OneTextMethod):
    """One caption per image and visit, drawn with the BLEU-uniqueness weights as probabilities."""

    def select(self, batch: dict[str, Any], generator: torch.Generator) -> Captions:
        weights = batch["weights"].float() * batch["caption_mask"].float()
        return one_caption(batch, torch.multinomial(weights, 1, generator=generator).squeeze(1))


class _FusingMethod(Method):
    """All valid captions encoded and fused by ``aggregator``; CLIP loss on the fused text."""

    def build_loss(self, local_loss: bool) -> nn.Module:
        return FusedTextLoss(local_loss)


@register_method("mean")
class MeanFusion(_FusingMethod):
    """Uniform weights over the captions (WFA with w = 1/K)."""

    aggregator = "mean"


@register_method("bleu")
class BleuFusion(_FusingMethod):
    """The shard's BLEU-uniqueness weights."""

    aggregator = "bleu"


@register_method("attention")
class AttentionFusion(_FusingMethod):
    """Weights learned by the attention aggregator (uniform at start)."""

    aggregator = "attention"


class _SubsetFusingMethod(_FusingMethod):
    """Stochastic aggregation: a random subset of the captions (each kept with ``keep_prob``, at least one)
    is encoded and fused at every visit; weights renormalised over the kept captions."""

    def select(self, batch: dict[str, Any], generator: torch.Generator) -> Captions:
        captions = super().select(batch, generator)
        captions.mask = random_subset(captions.mask, self.options.keep_prob, generator)
        # kept captions that all weigh 0 (possible only with hand-made weights) fall back to uniform
        unusable = (captions.weights * captions.mask).sum(dim=1, keepdim=True) <= 0
        captions.weights = torch.where(unusable, captions.mask.float(), captions.weights)
        return captions


@register_method("mean-subset")
class MeanSubsetFusion(_SubsetFusingMethod):
    """Stochastic aggregation with uniform weights."""

    aggregator = "mean"


@register_method("bleu-subset")
class BleuSubsetFusion(_SubsetFusingMethod):
    """Stochastic aggregation with BLEU-uniqueness weights."""

    aggregator = "bleu"


@register_method("attention-subset")
class AttentionSubsetFusion(_SubsetFusingMethod):
    """Stochastic aggregation with learned attention weights."""

    aggregator = "attention"


@register_method("multipos")
class MultiPositive(Method):
    """All valid captions as separate texts, multi-positive loss (uniform image->text targets)."""

    def build_loss(self, local_loss: bool) -> nn.Module:
        return MultiPositiveLoss(local_loss, copy_positives=self.options.copy_positives)


@register_method("wmultipos")
class WeightedMultiPositive(Method):
    """``multipos`` whose image->text targets are the BLEU-uniqueness weights."""

    def build_loss(self, local_loss: bool) -> nn.Module:
        return MultiPositiveLoss(local_loss, weighted=True, copy_positives=self.options.copy_positives)


@register_method("hybrid")
class Hybrid(Method):
    """All captions encoded once; CLIP loss on their BLEU fusion mixed with the multi-positive loss on them."""

    aggregator = "bleu"

    def build_loss(self, local_loss: bool) -> nn.Module:
        return HybridLoss(local_loss, self.options.hybrid_mix, self.options.copy_positives)
