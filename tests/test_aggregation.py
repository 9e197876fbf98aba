"""Tests for wfa.aggregation: the call contract for every registered aggregator, and each one's weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from wfa import aggregation
from wfa.aggregation import (
    Aggregator,
    create_aggregator,
    distance_from_uniform,
    list_aggregators,
    register_aggregator,
    weight_entropy,
)

NAMES = ["mean", "bleu", "attention"]
D = 16


def make_batch(seed: int = 0, batch: int = 4, k: int = 5, d: int = D) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, a mask with variable K per row (5, 3, 1, 4 captions) and positive weights."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, k, d, generator=g)
    mask = torch.ones(batch, k, dtype=torch.bool)
    counts = [k, 3, 1, 4][:batch]
    for row, n in enumerate(counts):
        mask[row, n:] = False
    weights = torch.rand(batch, k, generator=g) + 0.1
    return features, mask, weights


def build(name: str, d: int = D, seed: int = 0) -> nn.Module:
    """An aggregator; for attention, a non-zero query so its weights are not trivially uniform."""
    torch.manual_seed(seed)
    agg = create_aggregator(name, d)
    if name == "attention":
        with torch.no_grad():
            agg.query.normal_(0.0, 3.0)
    return agg


def call(agg: nn.Module, name: str, features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor):
    return agg(features, mask, weights if name == "bleu" else None)


def test_registry_lists_the_three_names() -> None:
    assert set(NAMES) <= set(list_aggregators())
    assert list_aggregators() == sorted(list_aggregators())


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown aggregator 'nope'.*attention.*bleu.*mean"):
        create_aggregator("nope", D)


def test_register_custom_aggregator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregation, "_REGISTRY", dict(aggregation._REGISTRY))

    @register_aggregator("first")
    class First(Aggregator):
        def caption_weights(self, features, mask, weights):
            return F.one_hot(mask.int().argmax(dim=1), mask.shape[1]).to(features.dtype)

    assert "first" in list_aggregators()
    features, mask, _ = make_batch()
    fused, w = create_aggregator("first", D)(features, mask)
    torch.testing.assert_close(fused, F.normalize(features[:, 0], dim=-1))
    with pytest.raises(ValueError, match="already registered"):
        register_aggregator("first")(type("Other", (Aggregator,), {}))
    with pytest.raises(TypeError, match="nn.Module"):
        register_aggregator("x")(int)


@pytest.mark.parametrize("name", NAMES)
def test_contract_shapes_weights_and_norm(name: str) -> None:
    features, mask, weights = make_batch()
    fused, w = call(build(name), name, features, mask, weights)
    assert fused.shape == (4, D) and w.shape == (4, 5)
    assert fused.dtype == features.dtype
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    assert torch.all(w[~mask] == 0)
    assert torch.all(w[mask] > 0)
    torch.testing.assert_close(fused.norm(dim=-1), torch.ones(4))
    # fused is exactly the documented formula with the returned weights
    expected = F.normalize((w.unsqueeze(-1) * F.normalize(features, dim=-1) * mask.unsqueeze(-1)).sum(1), dim=-1)
    torch.testing.assert_close(fused, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e30])
def test_padding_never_leaks(name: str, garbage: float) -> None:
    features, mask, weights = make_batch()
    agg = build(name)
    poisoned = features.clone()
    poisoned[~mask] = garbage
    poisoned_weights = weights.clone()
    poisoned_weights[~mask] = garbage
    poisoned.requires_grad_(True)
    fused, w = call(agg, name, poisoned, mask, poisoned_weights)
    assert torch.isfinite(fused).all() and torch.isfinite(w).all()
    fused.sum().backward()
    assert torch.isfinite(poisoned.grad).all()
    assert torch.all(poisoned.grad[~mask] == 0)
    # each row equals the same row aggregated alone, without its padded slots
    for row in range(features.shape[0]):
        n = int(mask[row].sum())
        alone, w_alone = call(
            agg, name, features[row : row + 1, :n], torch.ones(1, n, dtype=torch.bool), weights[row : row + 1, :n]
        )
        torch.testing.assert_close(fused[row], alone[0])
        torch.testing.assert_close(w[row, :n], w_alone[0])


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_row_is_an_error_naming_the_row(name: str) -> None:
    features, mask, weights = make_batch()
    mask[2] = False
    with pytest.raises(ValueError, match=r"batch row\(s\) 2 have every caption masked"):
        call(build(name), name, features, mask, weights)


@pytest.mark.parametrize("name", NAMES)
def test_k_equal_one(name: str) -> None:
    features = torch.randn(3, 1, D)
    mask = torch.ones(3, 1, dtype=torch.bool)
    fused, w = call(build(name), name, features, mask, torch.full((3, 1), 0.3))
    torch.testing.assert_close(w, torch.ones(3, 1))
    torch.testing.assert_close(fused, F.normalize(features[:, 0], dim=-1))


@pytest.mark.parametrize("name", NAMES)
def test_input_checks(name: str) -> None:
    features, mask, weights = make_batch()
    agg = build(name)
    with pytest.raises(ValueError, match=r"features must have shape \[B, K, D\]"):
        agg(features[0], mask)
    with pytest.raises(ValueError, match="dimension D=8 but this aggregator was built for dim=16"):
        agg(features[..., :8], mask)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        agg(features, mask.long())
    with pytest.raises(ValueError, match=r"mask must have shape \[4, 5\]"):
        agg(features, mask[:, :3])
    with pytest.raises(TypeError, match="floating-point"):
        agg(features.long(), mask)
    with pytest.raises(ValueError, match=r"weights must have shape \[4, 5\]"):
        agg(features, mask, weights[:, :2])
    with pytest.raises(ValueError, match="dim must be a positive int"):
        create_aggregator(name, 0)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_half_inputs(name: str) -> None:
    features, mask, weights = make_batch()
    agg = build(name).double() if name == "attention" else build(name)
    fused64, w64 = call(agg, name, features.double(), mask, weights.double())
    assert fused64.dtype == torch.float64 and w64.dtype == torch.float64
    fused16, w16 = call(build(name), name, features.half(), mask, weights.half())
    assert fused16.dtype == torch.float16 and w16.dtype == torch.float32
    torch.testing.assert_close(fused16.float(), fused64.float(), atol=2e-3, rtol=2e-3)


def test_mean_equals_hand_computed() -> None:
    features, mask, _ = make_batch()
    fused, w = create_aggregator("mean", D)(features, mask)
    for row, n in enumerate([5, 3, 1, 4]):
        expected_w = torch.tensor([1.0 / n] * n + [0.0] * (5 - n))
        torch.testing.assert_close(w[row], expected_w)
        unit = features[row, :n] / features[row, :n].norm(dim=-1, keepdim=True)
        s = unit.mean(dim=0)
        torch.testing.assert_close(fused[row], s / s.norm())


def test_mean_ignores_given_weights() -> None:
    features, mask, weights = make_batch()
    agg = create_aggregator("mean", D)
    torch.testing.assert_close(agg(features, mask, weights)[0], agg(features, mask)[0])


def test_bleu_renormalisation_equals_hand_computed() -> None:
    features = torch.randn(2, 4, D)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    weights = torch.tensor([[0.2, 0.2, 0.4, 0.2], [0.0, 0.5, 0.3, 0.2]])
    fused, w = create_aggregator("bleu", D)(features, mask, weights)
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.25, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    unit = F.normalize(features, dim=-1)
    s0 = 0.25 * unit[0, 0] + 0.25 * unit[0, 1] + 0.5 * unit[0, 2]
    torch.testing.assert_close(fused[0], s0 / s0.norm())
    torch.testing.assert_close(fused[1], unit[1, 1])


def test_bleu_without_weights_says_what_to_pass() -> None:
    features, mask, _ = make_batch()
    with pytest.raises(ValueError, match=r"needs weights.*batch\['weights'\]"):
        create_aggregator("bleu", D)(features, mask)


def test_bleu_rejects_bad_weights() -> None:
    features, mask, weights = make_batch()
    agg = create_aggregator("bleu", D)
    negative = weights.clone()
    negative[1, 0] = -0.1
    with pytest.raises(ValueError, match=r"row\(s\) 1 are negative"):
        agg(features, mask, negative)
    zero = weights.clone()
    zero[3, :4] = 0.0  # row 3 has 4 real captions; its padded slot keeps a positive weight, which must not count
    with pytest.raises(ValueError, match=r"row\(s\) 3 sum to 0"):
        agg(features, mask, zero)
    nan = weights.clone()
    nan[0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"row\(s\) 0 are NaN"):
        agg(features, mask, nan)


def test_attention_is_uniform_at_init_and_equals_mean() -> None:
    features, mask, _ = make_batch()
    agg = create_aggregator("attention", D)
    fused, w = agg(features, mask)
    fused_mean, w_mean = create_aggregator("mean", D)(features, mask)
    torch.testing.assert_close(w, w_mean, atol=0, rtol=1e-6)
    torch.testing.assert_close(fused, fused_mean)
    assert weight_entropy(w, mask).item() == pytest.approx(1.0)
    assert distance_from_uniform(w, mask).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_kwargs() -> None:
    agg = create_aggregator("attention", D, hidden_dim=4, temperature=0.5)
    assert agg.proj.out_features == 4 and agg.temperature == 0.5
    with torch.no_grad():
        agg.query.normal_()
    features, mask, _ = make_batch()
    cold = create_aggregator("attention", D, hidden_dim=4, temperature=0.1)
    cold.load_state_dict(agg.state_dict())
    # a lower temperature sharpens the same scores
    assert weight_entropy(cold(features, mask)[1], mask) < weight_entropy(agg(features, mask)[1], mask)
    with pytest.raises(ValueError, match="temperature"):
        create_aggregator("attention", D, temperature=0.0)
    with pytest.raises(ValueError, match="hidden_dim"):
        create_aggregator("attention", D, hidden_dim=0)


def test_attention_params_are_float32() -> None:
    agg = create_aggregator("attention", D)
    assert all(p.dtype == torch.float32 for p in agg.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bf16_cpu_matches_float32(name: str) -> None:
    features, mask, weights = make_batch()
    torch.manual_seed(0)
    encoder = nn.Linear(D, D)
    agg = build(name)
    fused32, w32 = call(agg, name, encoder(features), mask, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        text = encoder(features)
        assert text.dtype == torch.bfloat16
        fused, w = call(agg, name, text, mask, weights)
    assert fused.dtype == torch.bfloat16 and w.dtype == torch.float32
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(fused.float(), fused32, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(w, w32, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_features(name: str) -> None:
    features, mask, weights = make_batch()
    features.requires_grad_(True)
    fused, _ = call(build(name), name, features, mask, weights)
    (fused @ torch.randn(D)).sum().backward()
    assert features.grad is not None
    assert features.grad[mask].abs().sum() > 0
    assert torch.all(features.grad[~mask] == 0)


def test_gradients_reach_attention_params() -> None:
    features, mask, _ = make_batch()
    target = torch.randn(D)
    agg = create_aggregator("attention", D)
    optimizer = torch.optim.SGD(agg.parameters(), lr=1.0)
    # step 1: the zero query gets a gradient; the projection is in the graph with a zero gradient
    (agg(features, mask)[0] @ target).sum().backward()
    assert agg.query.grad.abs().sum() > 0
    assert agg.proj.weight.grad is not None and agg.proj.bias.grad is not None
    optimizer.step()
    optimizer.zero_grad()
    # step 2: with a non-zero query every parameter gets a real gradient
    (agg(features, mask)[0] @ target).sum().backward()
    for param in agg.parameters():
        assert param.grad.abs().sum() > 0


def test_attention_learns_to_prefer_the_signal_caption() -> None:
    """Each image has one caption (at a random position) carrying a fixed direction aligned with the target."""
    torch.manual_seed(0)
    k, d, n = 5, 8, 256
    target = F.normalize(torch.randn(d), dim=0)

    def data(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.randn(count, k, d)
        position = torch.randint(0, k, (count,))
        features[torch.arange(count), position] += 5.0 * target
        return features, position

    features, _ = data(n)
    mask = torch.ones(n, k, dtype=torch.bool)
    agg = create_aggregator("attention", d)
    optimizer = torch.optim.Adam(agg.parameters(), lr=0.05)
    for _ in range(200):
        fused, _ = agg(features, mask)
        loss = -(fused @ target).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_features, position = data(n)
    with torch.no_grad():
        _, w = agg(test_features, mask)
    signal_weight = w[torch.arange(n), position].mean().item()
    assert signal_weight > 0.7, f"mean weight on the signal caption {signal_weight:.3f} (uniform = {1 / k})"
    assert distance_from_uniform(w, mask).item() > 0.4
    assert weight_entropy(w, mask).item() < 0.8


def test_attention_under_ddp_single_process_gloo(tmp_path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        encoder = nn.Linear(D, D)
        agg = create_aggregator("attention", D)
        model = nn.ModuleDict({"encoder": encoder, "agg": agg})
        ddp_agg = nn.parallel.DistributedDataParallel(agg)  # default find_unused_parameters=False
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        features, mask, _ = make_batch()
        target = torch.randn(D)
        for step in range(2):
            fused, w = ddp_agg(encoder(features), mask)
            loss = -(fused @ target).mean()
            optimizer.zero_grad()
            loss.backward()
            assert all(p.grad is not None for p in agg.parameters())
            assert encoder.weight.grad.abs().sum() > 0
            optimizer.step()
        assert agg.proj.weight.grad.abs().sum() > 0  # after the first step moved the query
    finally:
        dist.destroy_process_group()


def test_weight_entropy_and_distance_hand_computed() -> None:
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    w = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    h = weight_entropy(w, mask, reduction="none")
    expected_h1 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    torch.testing.assert_close(h, torch.tensor([0.0, expected_h1, 1.0]))
    tv = distance_from_uniform(w, mask, reduction="none")
    torch.testing.assert_close(tv, torch.tensor([0.5, 0.5 * (1 / 6 + 1 / 12 + 1 / 12), 0.0]))
    torch.testing.assert_close(weight_entropy(w, mask), h.mean())
    with pytest.raises(ValueError, match="reduction"):
        weight_entropy(w, mask, reduction="sum")
    with pytest.raises(ValueError, match="every caption masked"):
        distance_from_uniform(w, torch.zeros(3, 3, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(name: str, dtype: torch.dtype) -> None:
    features, mask, weights = make_batch()
    features, mask, weights = features.cuda(), mask.cuda(), weights.cuda()
    torch.manual_seed(0)
    encoder = nn.Linear(D, D).cuda()
    agg = build(name).cuda()
    fused32, w32 = call(agg, name, encoder(features), mask, weights)
    with torch.autocast("cuda", dtype=dtype):
        text = encoder(features)
        assert text.dtype == dtype
        fused, w = call(agg, name, text, mask, weights)
    assert fused.device.type == "cuda" and fused.dtype == dtype and w.dtype == torch.float32
    torch.testing.assert_close(fused.float(), fused32, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(w, w32, atol=3e-2, rtol=3e-2)
    (fused.float().sum()).backward()
    if name == "attention":
        assert agg.query.grad is not None and torch.isfinite(agg.query.grad).all()
