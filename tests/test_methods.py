"""The method registry: registration rules, what each method selects, its loss, and a toy method trained
end to end by registration alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import wfa.methods as methods
from wfa.config import load_config
from wfa.data.loader import LoaderConfig, build_loader, distinct_captions
from wfa.loss import MultiPositiveClipLoss
from wfa.methods import (Captions, Method, MethodOptions, SingleTextLoss, create_method, list_methods, one_caption,
                         random_subset, register_method)
from wfa.model import create_model


def _batch(b: int = 6, k: int = 5, length: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    weights = torch.rand(b, k, generator=g) * mask
    return {"tokens": torch.randint(1, 100, (b, k, length), generator=g), "caption_mask": mask,
            "weights": weights / weights.sum(dim=1, keepdim=True)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_lists_and_rejects():
    assert {"pairs", "pairs-dedup", "random", "mean", "bleu", "attention", "multipos", "wmultipos", "hybrid",
            "bleu-subset", "attention-subset", "mean-subset"} <= set(list_methods())
    with pytest.raises(ValueError, match="unknown method 'nope'.*pairs"):
        create_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method("pairs")(type("Again", (Method,), {}))
    with pytest.raises(ValueError, match="view"):
        register_method("bad-view")(type("BadView", (Method,), {"view": "triples"}))
    with pytest.raises(TypeError, match="not a subclass"):
        register_method("not-a-method")(object)
    assert "bad-view" not in list_methods() and "not-a-method" not in list_methods()


@pytest.mark.parametrize("name", list_methods())
def test_every_method_selects_valid_captions(name):
    """Shape and validity contract: [B, K, L] tokens, a mask inside the valid captions, >= 1 caption per image."""
    batch, method = _batch(), create_method(name)
    captions = method.select(batch, _gen())
    b = batch["tokens"].shape[0]
    assert captions.tokens.dim() == 3 and captions.tokens.shape[0] == b
    assert captions.mask.shape == captions.weights.shape == captions.tokens.shape[:2]
    assert captions.mask.any(dim=1).all()
    if captions.tokens.shape[1] == batch["tokens"].shape[1]:  # a subset of the image's own captions
        assert not (captions.mask & ~batch["caption_mask"]).any()
        assert torch.equal(captions.tokens, batch["tokens"])
    else:  # one caption per image, one of its valid ones
        assert captions.tokens.shape[1] == 1
        matches = (captions.tokens == batch["tokens"]).all(dim=2) & batch["caption_mask"]
        assert matches.any(dim=1).all()
    # the same generator state draws the same captions (exact resume)
    again = method.select(batch, _gen())
    assert torch.equal(again.mask, captions.mask) and torch.equal(again.tokens, captions.tokens)


def test_random_subset_keeps_the_probability_and_at_least_one():
    mask = torch.ones(4000, 5, dtype=torch.bool)
    mask[:, 3:] = False
    kept = random_subset(mask, 0.5, _gen())
    assert not (kept & ~mask).any() and kept.any(dim=1).all()
    # P(keep) = 0.5 plus the at-least-one rescue: E[kept] = 3 * 0.5 + 1/8 * 1 = 1.625 per row of 3
    assert kept.sum(dim=1).float().mean().item() == pytest.approx(1.625, abs=0.05)
    assert random_subset(mask, 1.0, _gen()).equal(mask)


def test_subset_methods_renormalise_bleu_weights_over_the_kept_captions():
    from wfa.aggregation import create_aggregator

    batch = _batch()
    captions = create_method("bleu-subset", MethodOptions(keep_prob=0.4)).select(batch, _gen(3))
    features = F.normalize(torch.randn(*captions.mask.shape, 8), dim=-1)
    _, used = create_aggregator("bleu", 8)(features, captions.mask, captions.weights)
    expected = batch["weights"] * captions.mask
    assert torch.allclose(used, expected / expected.sum(dim=1, keepdim=True), atol=1e-6)


def test_random_bleu_draws_by_weight():
    batch = {"tokens": torch.arange(3).view(1, 3, 1).expand(20000, 3, 1).contiguous(),
             "caption_mask": torch.ones(20000, 3, dtype=torch.bool),
             "weights": torch.tensor([[0.6, 0.3, 0.1]]).expand(20000, 3)}
    picked = create_method("random-bleu").select(batch, _gen()).tokens[:, 0, 0]
    freq = torch.bincount(picked, minlength=3).float() / len(picked)
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015)


def test_distinct_captions_fold_space_and_case():
    assert distinct_captions(["A  road .", "a road .", "two roads", "Two roads "]) == ["A  road .", "two roads"]


def test_distinct_pairs_view_counts_distinct_captions(tmp_path):
    from wfa.data.sample import Sample
    from wfa.data.writer import write_shards

    from PIL import Image

    rgb = Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy())
    samples = [Sample(id=f"im{i}", image=rgb, captions=caps, split="train")
               for i, caps in enumerate([["a road", "A road", "a road"], ["x", "y", "z"], ["one"] * 5])]
    write_shards(samples, tmp_path / "s", progress=False)
    tokenizer = create_model("wfa-vit-micro")[1]
    counts = {}
    for view in ("images", "pairs", "distinct-pairs"):
        cfg = LoaderConfig(shards=str(tmp_path / "s"), split="train", batch_size=1, image_size=32, view=view,
                           shuffle=0)
        loader, steps = build_loader(cfg, tokenizer)
        counts[view] = steps
    assert counts == {"images": 3, "pairs": 11, "distinct-pairs": 5}


def test_weighted_multipositive_targets_follow_the_weights():
    g = _gen()
    images = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    texts = F.normalize(torch.randn(3, 2, 8, generator=g), dim=-1)
    mask = torch.ones(3, 2, dtype=torch.bool)
    weights = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    scale = torch.tensor(5.0)
    loss = MultiPositiveClipLoss()
    # by hand: image->text cross-entropy against the weights, text->image as in multipos
    logits = scale * images @ texts.reshape(6, 8).T
    targets = torch.zeros(3, 6)
    for i in range(3):
        targets[i, 2 * i:2 * i + 2] = weights[i]
    image_part = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_part = F.cross_entropy(logits.T, torch.tensor([0, 0, 1, 1, 2, 2]))
    expected = (image_part + text_part) / 2
    assert loss(images, texts, scale, mask, target_weights=weights).item() == pytest.approx(expected.item(), rel=1e-5)
    # uniform weights give exactly the unweighted loss
    uniform = loss(images, texts, scale, mask, target_weights=torch.full((3, 2), 0.5))
    assert uniform.item() == pytest.approx(loss(images, texts, scale, mask).item(), rel=1e-6)
    with pytest.raises(ValueError, match="target_weights"):
        loss(images, texts, scale, mask, target_weights=torch.zeros(3, 2))


def test_hybrid_is_the_mix_of_its_two_losses():
    g = _gen()
    out = {"image_features": F.normalize(torch.randn(4, 8, generator=g), dim=-1),
           "caption_features": F.normalize(torch.randn(4, 3, 8, generator=g), dim=-1),
           "text_features": F.normalize(torch.randn(4, 8, generator=g), dim=-1), "logit_scale": torch.tensor(10.0)}
    captions = Captions(torch.zeros(4, 3, 2, dtype=torch.long), torch.ones(4, 3, dtype=torch.bool),
                        torch.full((4, 3), 1 / 3))
    fused = create_method("bleu").build_loss(False)(out, captions)
    per_caption = create_method("multipos").build_loss(False)(out, captions)
    for mix in (0.0, 0.3, 1.0):
        hybrid = create_method("hybrid", MethodOptions(hybrid_mix=mix)).build_loss(False)(out, captions)
        assert hybrid.item() == pytest.approx(mix * fused.item() + (1 - mix) * per_caption.item(), rel=1e-6)


def test_a_registered_toy_method_trains_without_touching_another_module(tmp_path, monkeypatch):
    """Adding a method is one registration: the config check, loader, trainer and loss all take it."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards
    from wfa.trainer import train

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))  # forget the toy after the test

    @register_method("toy-first")
    class FirstCaption(Method):
        """The first caption of every image, CLIP loss."""

        def select(self, batch, generator):
            return one_caption(batch, torch.zeros(batch["tokens"].shape[0], dtype=torch.long))

        def build_loss(self, local_loss):
            return SingleTextLoss(local_loss)

    shards = tmp_path / "shards"
    write_shards(SyntheticReader(num_images=12, seed=0, image_size=32, splits=(1.0, 0.0, 0.0)), shards,
                 progress=False)
    result = train(load_config(None, [f"data.shards={shards}", f"out={tmp_path / 'run'}", "method=toy-first",
                                      "model.name=wfa-vit-micro", "data.image_size=32", "train.batch_size=4",
                                      "train.steps=2", "train.tensorboard=false"]))
    assert result["steps"] == 2 and result["captions_seen"] == result["images_seen"] == 8
    assert torch.isfinite(torch.tensor(result["final_loss"]))
