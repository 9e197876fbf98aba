"""Contrastive losses: open_clip's ClipLoss for one text per image, a multi-positive loss for many.

Which method uses which loss is decided in :mod:`wfa.methods`.

Both gather features across ranks with gradients (``gather_with_grad=True``) when torch.distributed is
initialised, and support open_clip's ``local_loss`` (each rank scores only its own rows against all columns).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, gather_features
from torch import nn

def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def clip_loss_module(local_loss: bool = False) -> ClipLoss:
    """open_clip's ``ClipLoss`` (``gather_with_grad=True``, ``cache_labels=True``) with rank / world size from
    torch.distributed. Call it after the process group is initialised."""
    rank, world_size = distributed_info()
    return ClipLoss(local_loss=local_loss, gather_with_grad=True, cache_labels=True, rank=rank,
                    world_size=world_size)


def multi_positive_loss_module(local_loss: bool = False) -> "MultiPositiveClipLoss":
    """:class:`MultiPositiveClipLoss` with rank / world size from torch.distributed."""
    rank, world_size = distributed_info()
    return MultiPositiveClipLoss(local_loss=local_loss, rank=rank, world_size=world_size)


class MultiPositiveClipLoss(nn.Module):
    """Contrastive loss where image i has all its valid captions as positives (``multipos``).

    ``forward(image_features [B, D], text_features [B, K, D], logit_scale, caption_mask [B, K] = all valid)``;
    features normalised (as from ``wfa.model.encode_captions``). Every valid caption is its own text column.

    - image -> text: cross-entropy of the softmax over all texts against a target distribution over the
      image's k_i valid captions: uniform, or ``target_weights`` ``[B, K]`` renormalised over them
      (``wmultipos``: the BLEU-uniqueness weights); averaged over images.
    - text -> image: cross-entropy towards the caption's own image; averaged over texts.
    - loss = (image->text + text->image) / 2.

    ``caption_keys`` ``[B, K]`` (int, :func:`wfa.data.loader.caption_key`: equal for copies of one text) makes a
    caption of another image that is a copy of one of image i's captions a positive of image i, not a
    negative: image i's target weight of each of its captions is shared equally among every copy of that
    caption in the (global) batch, and a caption's text -> image target is uniform over every image that has
    a copy of it. Without copies across images this is the loss above, exactly.

    With K = 1 and no padding this equals open_clip's ``ClipLoss``. Across ranks, image features, caption
    features and masks are gathered (features with gradients, via open_clip's ``gather_features``; target
    weights and keys without); K is padded to the largest K of all ranks first, so a caption's owner is its
    row in the gathered batch. Every rank must pass the same B.
    """

    def __init__(self, local_loss: bool = False, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.rank = rank
        self.world_size = world_size

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        caption_mask: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
        output_dict: bool = False,
        target_weights: torch.Tensor | None = None,
        caption_keys: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The loss (a scalar), or ``{"contrastive_loss": loss}`` with ``output_dict``."""
        if text_features.dim() != 3:
            raise ValueError(
                f"MultiPositiveClipLoss: text features must be [B, K, D], got {tuple(text_features.shape)}"
            )
        batch, k, _ = text_features.shape
        if caption_mask is None:
            caption_mask = torch.ones(batch, k, dtype=torch.bool, device=text_features.device)
        if (image_features.shape[0] != batch or caption_mask.shape != (batch, k)
                or caption_keys is not None and caption_keys.shape != (batch, k)):
            raise ValueError(
                f"MultiPositiveClipLoss: image features {tuple(image_features.shape)}, text features "
                f"{tuple(text_features.shape)}, caption mask {tuple(caption_mask.shape)} and caption keys must be "
                "[B, D], [B, K, D], [B, K] and [B, K]"
            )
        mask = caption_mask.bool()
        if not mask.any(dim=1).all():
            raise ValueError("MultiPositiveClipLoss: every image needs at least one valid caption")
        weights = mask.to(text_features.dtype) if target_weights is None else target_weights.detach().to(
            text_features.dtype) * mask
        if target_weights is not None and (weights.shape != mask.shape or not torch.isfinite(weights).all()
                                           or (weights < 0).any() or not (weights.sum(dim=1) > 0).all()):
            raise ValueError("MultiPositiveClipLoss: target_weights must be [B, K], finite, >= 0 and not all 0 "
                             "over an image's valid captions")
        keys = None if caption_keys is None else caption_keys.long()
        local_texts, local_owner = mask_to_texts(text_features, mask, offset=self.rank * batch)
        if self.world_size > 1:
            all_images, all_texts, all_mask, all_weights, all_keys = self._gather(
                image_features, text_features, mask, weights, keys)
            texts, owner = mask_to_texts(all_texts, all_mask)
            text_weights = all_weights[all_mask]
            text_keys = None if keys is None else all_keys[all_mask]
        else:
            all_images, texts, owner = image_features, local_texts, local_owner
            text_weights = weights[mask]
            text_keys = None if keys is None else keys[mask]
        if self.local_loss and self.world_size > 1:
            image_rows, first = image_features, self.rank * batch
            text_rows, text_owner = local_texts, local_owner
            local = (owner >= first) & (owner < first + batch)
        else:
            image_rows, first = all_images, 0
            text_rows, text_owner = texts, owner
            local = None
        logits_per_image = logit_scale * image_rows @ texts.T
        logits_per_text = logit_scale * text_rows @ all_images.T
        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        rows = torch.arange(first, first + image_rows.shape[0], device=owner.device)
        if text_keys is None:
            targets = (owner.unsqueeze(0) == rows.unsqueeze(1)).to(logits_per_image.dtype) * text_weights.unsqueeze(0)
            text_loss = F.cross_entropy(logits_per_text, text_owner)
        else:
            targets, text_targets = copy_targets(owner, text_keys, text_weights, all_images.shape[0])
            targets = targets[first:first + image_rows.shape[0]]
            text_targets = text_targets if local is None else text_targets[local]
            text_loss = -(text_targets * F.log_softmax(logits_per_text, dim=1)).sum(dim=1).mean()
        targets = targets / targets.sum(dim=1, keepdim=True)
        image_loss = -(targets * F.log_softmax(logits_per_image, dim=1)).sum(dim=1).mean()
        loss = (image_loss + text_loss) / 2
        return {"contrastive_loss": loss} if output_dict else loss

    def _gather(
        self, image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
        keys: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        k = torch.tensor([mask.shape[1]], device=mask.device)
        dist.all_reduce(k, op=dist.ReduceOp.MAX)
        pad = int(k) - mask.shape[1]
        if pad:
            text_features = F.pad(text_features, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
            weights = F.pad(weights, (0, pad))
            keys = None if keys is None else F.pad(keys, (0, pad), value=-1)
        all_images, all_texts = gather_features(
            image_features, text_features, local_loss=self.local_loss, gather_with_grad=True,
            rank=self.rank, world_size=self.world_size,
        )
        masks = [torch.zeros_like(mask, dtype=torch.uint8) for _ in range(self.world_size)]
        dist.all_gather(masks, mask.to(torch.uint8))
        all_weights = [torch.zeros_like(weights) for _ in range(self.world_size)]
        dist.all_gather(all_weights, weights.contiguous())
        all_keys = None
        if keys is not None:
            gathered = [torch.zeros_like(keys) for _ in range(self.world_size)]
            dist.all_gather(gathered, keys.contiguous())
            all_keys = torch.cat(gathered)
        return all_images, all_texts, torch.cat(masks).bool(), torch.cat(all_weights), all_keys


def copy_targets(owner: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, num_images: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of :class:`MultiPositiveClipLoss` when copies of a caption count as positives of every image
    that has one: ``(image_targets [N, T], text_targets [T, N])`` for ``T`` texts of ``N`` images.

    ``owner [T]``: each text's image; ``keys [T]``: equal for copies; ``weights [T]``: each text's target weight
    for its own image. Image i's weight of each of its captions is shared equally among every copy of that
    caption in the batch (image targets: unnormalised); a text's targets are uniform over the images that own
    a copy of it (each row sums to 1).
    """
    _, key_index = torch.unique(keys, return_inverse=True)
    distinct = int(key_index.max()) + 1
    per_image = weights.new_zeros(num_images, distinct).index_put_((owner, key_index), weights, accumulate=True)
    has_copy = weights.new_zeros(num_images, distinct).index_put_((owner, key_index), torch.ones_like(weights),
                                                                  accumulate=True) > 0
    copies = torch.bincount(key_index, minlength=distinct).to(weights.dtype)
    image_targets = per_image[:, key_index] / copies[key_index].unsqueeze(0)
    text_targets = has_copy[:, key_index].T.to(weights.dtype)
    return image_targets, text_targets / text_targets.sum(dim=1, keepdim=True)


def mask_to_texts(
    text_features: torch.Tensor, mask: torch.Tensor, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid captions of ``[B, K, D]`` features as ``[T, D]`` and their image index ``[T]`` (+ ``offset``)."""
    owner = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask] + offset
    return text_features[mask], owner
