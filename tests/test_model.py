"""Tests for wfa.model: configs, exact text trimming, multispectral input, checkpoints, encode_captions."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from wfa.model import (
    adapt_input_channels,
    create_model,
    encode_captions,
    encode_text,
    encode_texts,
    first_conv,
    inflate_rgb_kernel,
    list_wfa_models,
    save_open_clip_checkpoint,
    text_trimming_is_exact,
)

torch.set_num_threads(1)

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S1_BANDS = ["VV", "VH"]
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TEST_CONFIGS = {
    # ModifiedResNet image tower
    "wfa-test-rn": {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
                    "text_cfg": TINY_TEXT},
    # timm image tower
    "wfa-test-timm": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "timm_model_name": "resnet10t",
                                                      "timm_pool": "avg", "timm_proj": "linear"},
                      "text_cfg": TINY_TEXT},
    # CustomTextCLIP with a native text transformer pooling at the first EOT id
    "wfa-test-custom-eos": {"embed_dim": 64, "custom_text": True,
                            "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                            "text_cfg": {**TINY_TEXT, "pool_type": "eos", "eos_id": 49407, "proj_bias": True}},
    # bidirectional text tower: trimming would not be exact, encode_text falls back
    "wfa-test-bidir": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                       "text_cfg": {**TINY_TEXT, "no_causal_mask": True}},
}
CAPTIONS = [
    "There is a piece of farmland .",
    "Many buildings and some green trees are around a large parking lot with many cars in it .",
    "a river",
    "Several white storage tanks stand beside a road next to a bare field .",
]


@pytest.fixture(scope="module")
def config_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model_configs")
    paths = {}
    for name, config in TEST_CONFIGS.items():
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    return paths


def _model_name(name: str, config_paths: dict[str, Path]) -> str:
    return str(config_paths[name]) if name in config_paths else name


def test_wfa_configs_are_registered_with_open_clip() -> None:
    assert {"wfa-vit-tiny", "wfa-vit-micro"} <= set(list_wfa_models())
    model, _, _ = open_clip.create_model_and_transforms("wfa-vit-micro")
    assert model.visual.image_size == (32, 32)
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        create_model("no-such-model")
    with pytest.raises(ValueError, match="in_chans=3 but 12 band names"):
        create_model("wfa-vit-micro", in_chans=3, bands=S2_BANDS)


@pytest.mark.parametrize(
    "name, bands",
    [("wfa-vit-micro", None), ("wfa-vit-tiny", None), ("wfa-vit-micro", S2_BANDS + S1_BANDS), ("ViT-B-32", None),
     ("wfa-test-rn", None), ("wfa-test-custom-eos", None)],
)
def test_trimmed_text_equals_untrimmed(name: str, bands: list[str] | None, config_paths: dict[str, Path]) -> None:
    model, tokenizer = create_model(_model_name(name, config_paths), bands=bands)
    model.eval()
    tokens = tokenizer(CAPTIONS)
    longest = int((tokens != 0).sum(dim=1).max())
    assert text_trimming_is_exact(model)
    transformer = model.text.transformer if hasattr(model, "text") else model.transformer
    seen = []
    hook = transformer.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        trimmed = encode_text(model, tokens)
        full = model.encode_text(tokens)
    hook.remove()
    assert seen[0] == longest < tokens.shape[1]
    assert torch.allclose(trimmed, full, atol=1e-5, rtol=0)


def test_untrimmable_tower_falls_back(config_paths: dict[str, Path]) -> None:
    model, tokenizer = create_model(str(config_paths["wfa-test-bidir"]))
    tokens = tokenizer(CAPTIONS)
    assert not text_trimming_is_exact(model)
    with torch.no_grad():
        assert torch.equal(encode_text(model, tokens), model.encode_text(tokens))


@pytest.mark.parametrize(
    "name, bands, size",
    [("wfa-vit-micro", S2_BANDS + S1_BANDS, 32), ("wfa-vit-micro", S1_BANDS, 64),
     ("wfa-test-rn", S2_BANDS + S1_BANDS, 64), ("wfa-test-timm", S1_BANDS, 32)],
)
def test_multispectral_forward(name: str, bands: list[str], size: int, config_paths: dict[str, Path]) -> None:
    model, _ = create_model(_model_name(name, config_paths), bands=bands, image_size=size)
    images = torch.randn(2, len(bands), size, size)
    features = model.encode_image(images)
    assert features.shape == (2, model.text_projection.shape[1])
    assert torch.isfinite(features).all()
    assert model.visual.in_chans == len(bands) and model.visual.bands == bands
    features.sum().backward()
    assert first_conv(model)[1].weight.grad.shape[1] == len(bands)


@pytest.mark.parametrize("name", ["wfa-vit-micro", "wfa-test-rn", "wfa-test-timm"])
def test_rgb_weights_land_on_b04_b03_b02(name: str, config_paths: dict[str, Path], tmp_path: Path) -> None:
    rgb, _ = create_model(_model_name(name, config_paths))
    path = save_open_clip_checkpoint(rgb, tmp_path / "rgb.pt")
    model, _ = create_model(_model_name(name, config_paths), pretrained=str(path), bands=S2_BANDS)
    old = first_conv(rgb)[1].weight.detach()
    new = first_conv(model)[1].weight.detach()
    scale = 3 / len(S2_BANDS)
    assert new.shape[1] == len(S2_BANDS)
    for rgb_index, band in enumerate(["B04", "B03", "B02"]):
        assert torch.equal(new[:, S2_BANDS.index(band)], old[:, rgb_index] * scale)
    assert torch.allclose(new[:, S2_BANDS.index("B08")], old.mean(dim=1) * scale)
    conv_key = first_conv(rgb)[0] + ".weight"
    other = {k: v for k, v in rgb.state_dict().items() if k != conv_key}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.items())


def test_inflation_rules() -> None:
    weight = torch.randn(5, 3, 4, 4)
    assert torch.equal(inflate_rgb_kernel(weight, 3), weight)
    assert torch.equal(inflate_rgb_kernel(weight, 3, ["B02", "B03", "B04"]), weight.flip(1))
    s1 = inflate_rgb_kernel(weight, 2, S1_BANDS)
    assert torch.allclose(s1, weight.mean(1, keepdim=True).repeat(1, 2, 1, 1) * 1.5)
    # equal inputs on every channel give the RGB kernel's response
    x = torch.randn(1, 1, 4, 4)
    rgb_out = F.conv2d(x.repeat(1, 3, 1, 1), weight)
    assert torch.allclose(F.conv2d(x.repeat(1, 14, 1, 1), inflate_rgb_kernel(weight, 14, S2_BANDS + S1_BANDS)), rgb_out,
                          atol=1e-5)
    with pytest.raises(ValueError, match="2 band names given for 3 channels"):
        inflate_rgb_kernel(weight, 3, S1_BANDS)


def test_bgr_band_order_permutes_pretrained_kernel(tmp_path: Path) -> None:
    rgb, _ = create_model("wfa-vit-micro")
    path = save_open_clip_checkpoint(rgb, tmp_path / "rgb.pt")
    model, _ = create_model("wfa-vit-micro", pretrained=str(path), bands=["B02", "B03", "B04"])
    assert torch.equal(model.visual.conv1.weight, rgb.visual.conv1.weight.flip(1))


def test_checkpoint_round_trip_through_open_clip(config_paths: dict[str, Path], tmp_path: Path) -> None:
    for name in ("wfa-vit-micro", str(config_paths["wfa-test-rn"])):
        model, _ = create_model(name)
        wrapper = torch.nn.Module()
        wrapper.module = model  # as DDP / accelerate wrap it
        path = save_open_clip_checkpoint(wrapper, tmp_path / "model.pt")
        arch = Path(name).stem
        loaded, _, _ = open_clip.create_model_and_transforms(arch, pretrained=str(path))
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
    # multispectral: open_clip cannot build a 14-channel model, wfa.model.create_model reads C from the file
    ms, _ = create_model("wfa-vit-micro", bands=S2_BANDS + S1_BANDS)
    path = save_open_clip_checkpoint(ms, tmp_path / "ms.pt")
    loaded, _ = create_model("wfa-vit-micro", pretrained=str(path))
    assert loaded.visual.conv1.in_channels == 14
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ms.state_dict().items())
    with pytest.raises(ValueError, match="has 14 input channels, but 2"):
        create_model("wfa-vit-micro", pretrained=str(path), bands=S1_BANDS)


def test_encode_captions_masks_padding() -> None:
    model, tokenizer = create_model("wfa-vit-micro")
    model.eval()
    tokens = tokenizer(CAPTIONS * 3).view(3, 4, -1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    tokens[~mask] = tokenizer(["padding that must never be encoded"])[0]
    with torch.no_grad():
        out = encode_captions(model, tokens, mask)
    assert out.shape == (3, 4, 128)
    assert torch.all(out[~mask] == 0)
    for b, k in mask.nonzero().tolist():
        with torch.no_grad():
            expected = F.normalize(model.encode_text(tokens[b, k : k + 1]), dim=-1)[0]
        assert torch.allclose(out[b, k], expected, atol=1e-5)
    with pytest.raises(ValueError, match="no valid caption"):
        encode_captions(model, tokens, torch.zeros_like(mask))


def test_bucketed_deduplicated_text_encoding_is_exact() -> None:
    """encode_captions with length buckets and shared repeats == one trimmed pass, values and gradients."""
    torch.manual_seed(0)
    model, tokenizer = create_model("wfa-vit-micro")
    captions = [["a lake", "a lake", "a small lake with trees around it and a road along the shore"],
                ["many buildings", "a lake", "dense residential area with many houses and green trees"]]
    tokens = torch.stack([tokenizer(c) for c in captions])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    reference = encode_captions(model, tokens, mask)  # defaults: one trimmed pass, no sharing
    ref_grad = torch.autograd.grad(reference.square().sum() + reference[:, :, 0].sum(),
                                   model.token_embedding.weight)[0]
    for buckets, dedup in ((1, True), (3, False), (3, True)):
        fast = encode_captions(model, tokens, mask, trim=True, buckets=buckets, dedup=dedup)
        assert torch.allclose(fast, reference, atol=1e-5), (buckets, dedup)
        assert torch.equal(fast[~mask], torch.zeros_like(fast[~mask]))
        grad = torch.autograd.grad(fast.square().sum() + fast[:, :, 0].sum(), model.token_embedding.weight)[0]
        assert torch.allclose(grad, ref_grad, atol=1e-5), (buckets, dedup)
    # the flat form, against open_clip's own untrimmed encoder
    flat = tokens[mask]
    with torch.no_grad():
        expected = F.normalize(model.encode_text(flat), dim=-1)
        assert torch.allclose(encode_texts(model, flat, buckets=2, dedup=True), expected, atol=1e-5)
        assert torch.allclose(encode_texts(model, flat, trim=False), expected, atol=1e-6)


def test_adapt_input_channels_from_scratch_keeps_module_settings() -> None:
    model, _ = create_model("wfa-vit-micro")
    conv = adapt_input_channels(model, 5, from_rgb=False)
    assert model.visual.conv1 is conv
    assert conv.weight.shape == (128, 5, 8, 8) and conv.stride == (8, 8) and conv.bias is None
    assert model.visual.bands is None
