"""Tests for wfa.loss: ClipLoss wrappers and the multi-positive loss (reference, K=1, padding, gradients, 2 ranks)."""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from wfa.loss import MultiPositiveClipLoss, clip_loss_module, mask_to_texts, multi_positive_loss_module


def _features(b: int = 4, k: int = 3, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    texts = F.normalize(torch.randn(b, k, d, generator=g), dim=-1)
    mask = torch.ones(b, k, dtype=torch.bool)
    if k == 3:
        mask[1, 2] = False
        mask[3, 1:] = False
    return images, texts, mask


def _reference_terms(images: torch.Tensor, texts: torch.Tensor, mask: torch.Tensor, scale: float):
    """Plain-loop multi-positive terms: per image (soft uniform targets image->text), per text (CE text->image).

    Returns ``(image_terms, [(owner, text_term), ...])``.
    """
    columns = [(i, texts[i, j]) for i in range(mask.shape[0]) for j in range(mask.shape[1]) if mask[i, j]]
    image_terms = []
    for i in range(images.shape[0]):
        logits = [scale * float(images[i] @ t) for _, t in columns]
        log_z = math.log(sum(math.exp(v) for v in logits))
        positives = [v for (owner, _), v in zip(columns, logits) if owner == i]
        image_terms.append(-sum(v - log_z for v in positives) / len(positives))
    text_terms = []
    for owner, t in columns:
        logits = [scale * float(images[i] @ t) for i in range(images.shape[0])]
        text_terms.append((owner, -(logits[owner] - math.log(sum(math.exp(v) for v in logits)))))
    return image_terms, text_terms


def _reference(images: torch.Tensor, texts: torch.Tensor, mask: torch.Tensor, scale: float,
               rows: range | None = None) -> float:
    """The loss over all images and texts, or only over image ``rows`` and their texts (open_clip's local loss)."""
    image_terms, text_terms = _reference_terms(images, texts, mask, scale)
    rows = rows if rows is not None else range(len(image_terms))
    image_part = [image_terms[i] for i in rows]
    text_part = [term for owner, term in text_terms if owner in rows]
    return (sum(image_part) / len(image_part) + sum(text_part) / len(text_part)) / 2


def test_multipos_matches_reference() -> None:
    images, texts, mask = _features()
    loss = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask)
    assert loss.item() == pytest.approx(_reference(images, texts, mask, 10.0), rel=1e-5)


def test_multipos_with_k1_equals_clip_loss() -> None:
    images, texts, _ = _features(b=6, k=1)
    scale = torch.tensor(14.0)
    ours = MultiPositiveClipLoss()(images, texts, scale)
    theirs = ClipLoss()(images, texts[:, 0], scale)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert clip_loss_module()(images, texts[:, 0], scale).item() == pytest.approx(theirs.item(), rel=1e-6)


def test_padding_never_leaks() -> None:
    images, texts, mask = _features()
    scale = torch.tensor(10.0)
    garbage = texts.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), texts.shape[-1]) * 100
    garbage.requires_grad_(True)
    loss_fn = MultiPositiveClipLoss()
    loss = loss_fn(images, garbage, scale, caption_mask=mask)
    assert loss.item() == pytest.approx(loss_fn(images, texts, scale, caption_mask=mask).item(), rel=1e-6)
    loss.backward()
    assert torch.all(garbage.grad[~mask] == 0)
    assert torch.all(garbage.grad[mask].abs().sum(-1) > 0)


def test_gradients_finite_and_output_dict() -> None:
    images, texts, mask = _features()
    images.requires_grad_(True)
    texts.requires_grad_(True)
    scale = torch.tensor(math.log(1 / 0.07)).exp().requires_grad_(True)
    out = multi_positive_loss_module()(images, texts, scale, caption_mask=mask, output_dict=True)
    out["contrastive_loss"].backward()
    for grad in (images.grad, texts.grad, scale.grad):
        assert torch.isfinite(grad).all()


def test_bad_inputs() -> None:
    images, texts, mask = _features()
    mask[0] = False
    with pytest.raises(ValueError, match="at least one valid caption"):
        MultiPositiveClipLoss()(images, texts, torch.tensor(1.0), caption_mask=mask)
    with pytest.raises(ValueError, match=r"\[B, K, D\]"):
        MultiPositiveClipLoss()(images, texts[:, 0], torch.tensor(1.0))
    loss = clip_loss_module()
    assert isinstance(loss, ClipLoss) and loss.gather_with_grad and loss.world_size == 1


def test_mask_to_texts_owner_offsets() -> None:
    _, texts, mask = _features()
    flat, owner = mask_to_texts(texts, mask, offset=10)
    assert owner.tolist() == [10, 10, 10, 11, 11, 12, 12, 12, 13]
    assert torch.equal(flat[3], texts[1, 0])


def _copy_reference(images: torch.Tensor, texts: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor, scale: float,
                    weights: torch.Tensor | None = None, rows: range | None = None) -> float:
    """The copies-as-positives loss by plain loops over its definition (docs/method.md): image i's target weight
    of each own caption is shared equally among all copies of it in the batch; a text's targets are uniform
    over the images that hold a copy of it. ``rows``: only these images and their texts as rows (local loss)."""
    rows = rows if rows is not None else range(images.shape[0])
    columns = [(i, j) for i in range(mask.shape[0]) for j in range(mask.shape[1]) if mask[i, j]]
    key_of = {c: int(keys[c]) for c in columns}
    copies = {key: sum(1 for c in columns if key_of[c] == key) for key in key_of.values()}
    holders = {key: {i for (i, _), k in key_of.items() if k == key} for key in key_of.values()}
    image_terms = []
    for i in rows:
        logits = [scale * float(images[i] @ texts[c]) for c in columns]
        log_z = math.log(sum(math.exp(v) for v in logits))
        own = [(c, 1.0 if weights is None else float(weights[c])) for c in columns if c[0] == i]
        target = [sum(w for o, w in own if key_of[o] == key_of[c]) / copies[key_of[c]] for c in columns]
        total = sum(target)
        image_terms.append(-sum(t / total * (v - log_z) for t, v in zip(target, logits)))
    text_terms = []
    for c in (c for c in columns if c[0] in rows):
        logits = [scale * float(images[i] @ texts[c]) for i in range(images.shape[0])]
        log_z = math.log(sum(math.exp(v) for v in logits))
        positive = holders[key_of[c]]
        text_terms.append(-sum(logits[i] - log_z for i in positive) / len(positive))
    return (sum(image_terms) / len(image_terms) + sum(text_terms) / len(text_terms)) / 2


def test_copies_across_images_are_positives_hand_computed() -> None:
    """A caption of image 2 that is a copy of image 0's first caption is a positive of both images; the loss
    equals the plain-loop definition, unweighted and with BLEU-style target weights."""
    images, texts, mask = _features(b=4, k=3)
    keys = torch.arange(12).view(4, 3)
    keys[2, 1] = keys[0, 0]  # image 2's second caption copies image 0's first
    keys[3, 0] = keys[1, 1]  # image 3's only caption copies image 1's second
    loss = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask, caption_keys=keys)
    assert loss.item() == pytest.approx(_copy_reference(images, texts, mask, keys, 10.0), rel=1e-5)
    weights = torch.linspace(0.1, 1.0, 12).view(4, 3)
    weighted = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask, caption_keys=keys,
                                       target_weights=weights)
    assert weighted.item() == pytest.approx(_copy_reference(images, texts, mask, keys, 10.0, weights), rel=1e-5)
    plain = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask)
    assert abs(loss.item() - plain.item()) > 1e-3  # the copies changed the targets


def test_copies_within_one_image_only_change_nothing() -> None:
    """Keys whose copies all sit in one image (RSICD's repeated sentence) give exactly the loss without keys."""
    images, texts, mask = _features(b=4, k=3)
    keys = torch.tensor([[5, 5, 6], [7, 8, 0], [9, 9, 9], [1, 0, 0]])
    with_keys = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask, caption_keys=keys)
    without = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask)
    assert with_keys.item() == pytest.approx(without.item(), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_keys() -> torch.Tensor:
    """Caption keys of the 4 x 3 two-rank batch: rank 1's image 2 holds a copy of rank 0's image 0 caption."""
    keys = torch.arange(12).view(4, 3)
    keys[2, 1] = keys[0, 0]
    return keys


def _rank_main(rank: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        images, texts, mask = _features(b=4, k=3)
        # rank 1 holds a batch with smaller K: the loss pads K across ranks
        rows = slice(2 * rank, 2 * rank + 2)
        k = 3 if rank == 0 else 2
        local = (images[rows].clone().requires_grad_(True), texts[rows, :k].clone().requires_grad_(True),
                 mask[rows, :k])
        out = {}
        for local_loss in (False, True):
            loss = multi_positive_loss_module(local_loss=local_loss)
            value = loss(local[0], local[1], torch.tensor(10.0), caption_mask=local[2])
            grads = torch.autograd.grad(value, local[:2])
            out[local_loss] = (value.item(), grads[0], grads[1])
        weights = torch.linspace(0.1, 1.0, 12).view(4, 3)[rows, :k]  # wmultipos: weighted image->text targets
        out["weighted"] = multi_positive_loss_module()(local[0], local[1], torch.tensor(10.0), caption_mask=local[2],
                                                       target_weights=weights).item()
        keys = _copy_keys()[rows, :k]
        for local_loss in (False, True):
            out[("keys", local_loss)] = multi_positive_loss_module(local_loss=local_loss)(
                local[0], local[1], torch.tensor(10.0), caption_mask=local[2], caption_keys=keys).item()
        out["world_size"] = loss.world_size
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_rank_gather_matches_single_process() -> None:
    """Two gloo ranks, each with half the batch (and a different K), give the single-process loss."""
    images, texts, mask = _features(b=4, k=3)
    mask[2:, 2] = False  # rank 1 keeps K = 2: its third column is padding in the global batch
    single = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask).item()
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_rank_main, args=(_free_port(), results), nprocs=2, start_method="spawn")
    assert results[0]["world_size"] == 2 and results[1]["world_size"] == 2
    weighted = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask,
                                       target_weights=torch.linspace(0.1, 1.0, 12).view(4, 3)).item()
    assert results[0]["weighted"] == pytest.approx(weighted, rel=1e-5)
    assert results[1]["weighted"] == pytest.approx(weighted, rel=1e-5)
    images_ = images.clone().requires_grad_(True)
    texts_ = texts.clone().requires_grad_(True)
    single_grads = torch.autograd.grad(
        MultiPositiveClipLoss()(images_, texts_, torch.tensor(10.0), caption_mask=mask), (images_, texts_))
    copies = MultiPositiveClipLoss()(images, texts, torch.tensor(10.0), caption_mask=mask, caption_keys=_copy_keys())
    assert copies.item() == pytest.approx(_copy_reference(images, texts, mask, _copy_keys(), 10.0), rel=1e-5)
    for rank in (0, 1):  # a copy held by the other rank's image is a positive across the gather
        assert results[rank][("keys", False)] == pytest.approx(copies.item(), rel=1e-5)
        assert results[rank][("keys", True)] == pytest.approx(
            _copy_reference(images, texts, mask, _copy_keys(), 10.0, rows=range(2 * rank, 2 * rank + 2)), rel=1e-5)
    for rank, k in ((0, 3), (1, 2)):
        rows = slice(2 * rank, 2 * rank + 2)
        value, image_grad, text_grad = results[rank][False]
        assert value == pytest.approx(single, rel=1e-5)
        # every rank computes the full loss; the all_gather backward sums the ranks' gradients, so each rank
        # holds world_size x the single-process gradient (DDP's averaging then gives the single-process one)
        assert torch.allclose(image_grad, 2 * single_grads[0][rows], atol=1e-6)
        assert torch.allclose(text_grad, 2 * single_grads[1][rows, :k], atol=1e-6)
        # local loss: the rank's own images and texts as rows, all gathered columns
        local_value = results[rank][True][0]
        assert local_value == pytest.approx(_reference(images, texts, mask, 10.0, rows=range(2 * rank, 2 * rank + 2)),
                                            rel=1e-5)
        assert all(torch.isfinite(g).all() for g in results[rank][True][1:])
