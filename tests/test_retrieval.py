"""Retrieval metrics: hand-computed cases, ties, FAISS vs torch vs a naive oracle, and the evaluation door on UCM."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from wfa.eval.metrics import (
    _ranks_full_scan,
    aggregated_gallery_metrics,
    best_positive,
    chance_recalls,
    l2_normalize,
    retrieval_metrics,
    retrieval_ranks,
    target_ranks,
)

BACKENDS = ("faiss", "torch")


def oracle(image_emb, text_emb, text_to_image, ks=(1, 5, 10)):
    """Naive float64 reference: rank = #strictly greater + #equal with lower index, loops only."""
    img = l2_normalize(image_emb).astype(np.float64)
    txt = l2_normalize(text_emb).astype(np.float64)
    t2i = np.asarray(text_to_image)
    scores = txt @ img.T

    def rank(row, target):
        return int(np.sum(row > row[target]) + np.sum((row == row[target]) & (np.arange(len(row)) < target)))

    t_ranks = np.array([rank(scores[t], t2i[t]) for t in range(len(txt))])
    i_ranks = np.array([min(rank(scores[:, i], p) for p in np.flatnonzero(t2i == i))
                        for i in range(len(img)) if np.any(t2i == i)])
    out = {f"t2i_r{k}": 100 * np.mean(t_ranks < k) for k in ks}
    out.update({f"i2t_r{k}": 100 * np.mean(i_ranks < k) for k in ks})
    return out


def assert_same(a: dict, b: dict) -> None:
    for key in b:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_case(backend):
    # 3 images on axes of 2-D space; image 2 has no caption (a t2i distractor, not an i2t query).
    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = np.array([[1.0, 0.1],    # caption of image 0: best image 0 -> rank 0
                      [0.1, 1.0],    # caption of image 1: image 1 (0.995) then image 2 (0.85) -> rank 0
                      [1.0, 1.0],    # caption of image 1: image 2 (0.99), then images 0 and 1 tie at
                                     # exactly 0.707: image 0 (lower index) goes first -> rank 2
                      [1.0, -0.2]])  # caption of image 1: image 0 (0.98), image 2 (0.43), image 1 -> rank 2
    owner = [0, 1, 1, 1]
    m = retrieval_metrics(images, texts, owner, ks=(1, 2, 3), backend=backend)
    assert m["t2i_r1"] == pytest.approx(50.0)   # ranks [0, 0, 2, 2]
    assert m["t2i_r2"] == pytest.approx(50.0)
    assert m["t2i_r3"] == pytest.approx(100.0)
    # image 0 query: scores 0.995 (t0), 0.1 (t1), 0.707 (t2), 0.98 (t3) -> own t0 first: rank 0
    # image 1 query: 0.1, 0.995 (t1), 0.707, -0.196 -> t1 first: rank 0
    assert m["i2t_r1"] == pytest.approx(100.0)
    assert m["mR"] == pytest.approx(np.mean([50, 50, 100, 100, 100, 100]))
    assert m["mR_t2i"] == pytest.approx(200 / 3)
    assert list(m) == ["t2i_r1", "t2i_r2", "t2i_r3", "i2t_r1", "i2t_r2", "i2t_r3", "mR", "mR_t2i"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_gallery_index(backend):
    # Four identical images: every caption scores all images equally, so the rank of image j is j.
    images = np.tile([[0.3, 0.4, 0.5]], (4, 1))
    texts = np.array([[1.0, 0.0, 0.0]] * 4)
    owner = [0, 1, 2, 3]
    m = retrieval_metrics(images, texts, owner, ks=(1, 2, 3, 4), backend=backend)
    assert [m[f"t2i_r{k}"] for k in (1, 2, 3, 4)] == pytest.approx([25.0, 50.0, 75.0, 100.0])
    # i2t: all captions are identical too; image i's caption i has rank i among the four.
    assert [m[f"i2t_r{k}"] for k in (1, 2, 3, 4)] == pytest.approx([25.0, 50.0, 75.0, 100.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_i2t_best_caption_among_tied_duplicates(backend):
    # Image 1 owns captions 2 and 3, identical to caption 0 and 1 of image 0: on ties the lower index wins.
    images = np.array([[1.0, 0.0], [0.9, 0.1]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    owner = [0, 0, 1, 1]
    ranks = retrieval_ranks(images, texts, owner, kmax=4, backend=backend)
    assert ranks.i2t.tolist() == [0, 2]
    assert best_positive(l2_normalize(images), l2_normalize(texts), np.array(owner)).tolist() == [0, 2]


def random_case(rng, n, k_max, dim, noise, duplicates=True):
    images = rng.normal(size=(n, dim))
    counts = rng.integers(0, k_max + 1, size=n)  # some images have no caption
    owner = np.repeat(np.arange(n), counts)
    texts = images[owner] + noise * rng.normal(size=(len(owner), dim))
    if duplicates:
        texts[::5] = texts[0]          # repeated captions -> exact ties in i2t
        images[n // 2:n // 2 + 8] = images[n // 2]  # repeated images -> exact ties in t2i
    return images, texts, owner


@pytest.mark.parametrize("seed", [0, 1])
def test_faiss_torch_oracle_parity(seed):
    rng = np.random.default_rng(seed)
    images, texts, owner = random_case(rng, n=120, k_max=6, dim=32, noise=1.5)
    ks = (1, 3, 5, 10)
    expected = oracle(images, texts, owner, ks)
    results = [retrieval_metrics(images, texts, owner, ks=ks, backend=b, batch_size=37) for b in BACKENDS]
    assert results[0] == results[1]
    assert_same(results[0], expected)
    assert results[0]["mR"] == pytest.approx(np.mean([expected[k] for k in expected]))


def test_retry_and_full_scan_paths_are_exact():
    # 300 identical captions: every candidate list is a tie block wider than the first k', so the
    # retry (k' x 8) and the exact scan must both produce the true ranks.
    rng = np.random.default_rng(3)
    gallery = l2_normalize(np.tile(rng.normal(size=(1, 16)), (300, 1)))
    queries = l2_normalize(rng.normal(size=(6, 16)))
    targets = np.array([0, 3, 9, 10, 150, 299])
    expected = np.minimum(targets, 10)  # all scores tie: rank = target index, capped at kmax
    for backend in BACKENDS:
        assert target_ranks(queries, gallery, targets, 10, backend).tolist() == expected.tolist()
    exact = (queries.astype(np.float64)[:, None, :] * gallery[targets][:, None, :].astype(np.float64)).sum(-1)[:, 0]
    assert _ranks_full_scan(queries, gallery, targets, exact, 10).tolist() == expected.tolist()


def test_aggregated_gallery():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    # row 0 is the fused feature of image 1, row 1 that of image 0; image 2 has none (not a query)
    fused = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = aggregated_gallery_metrics(images, fused, [1, 0], ks=(1, 2))
    # each image scores the other image's fused feature 1.0 and its own 0.0 -> rank 1
    assert m == {"i2t_r1": pytest.approx(0.0), "i2t_r2": pytest.approx(100.0), "mR_i2t": pytest.approx(50.0)}
    same = aggregated_gallery_metrics(images[:2], fused[::-1], ks=(1,))  # default: row i is image i
    assert same["i2t_r1"] == pytest.approx(0.0)


def test_chance_levels():
    c = chance_recalls(100, 5, ks=(1, 5, 10))
    assert c["t2i_r1"] == pytest.approx(1.0) and c["t2i_r10"] == pytest.approx(10.0)
    assert c["mR_t2i"] == pytest.approx(16 / 3)
    # i2t R@1 with 5 of 500 captions positive: 5/500
    assert c["i2t_r1"] == pytest.approx(1.0)
    # i2t R@2 = 1 - (495/500) * (494/499)
    assert chance_recalls(100, 5, ks=(2,))["i2t_r2"] == pytest.approx(100 * (1 - 495 / 500 * 494 / 499))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="text_to_image must index"):
        retrieval_metrics(np.ones((2, 3)), np.ones((2, 3)), [0, 5])
    with pytest.raises(ValueError, match="entries for"):
        retrieval_metrics(np.ones((2, 3)), np.ones((2, 3)), [0])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 3), np.nan), np.ones((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="unknown retrieval backend"):
        retrieval_metrics(np.ones((2, 3)), np.ones((2, 3)), [0, 1], backend="annoy")


@pytest.fixture(scope="module")
def ucm_test_shards(ucm_dir, tmp_path_factory):
    from wfa.data.karpathy import KarpathyReader
    from wfa.data.writer import write_shards

    out = tmp_path_factory.mktemp("ucm_shards")
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", splits=["test"],
                            labels=ucm_dir / "labels.csv")
    index = write_shards(reader, out, shard_size=100, progress=False)
    assert index["splits"]["test"]["num_samples"] == 210
    return out


def test_evaluate_on_ucm_shards(ucm_test_shards, tmp_path):
    import torch

    from wfa.aggregation import create_aggregator
    from wfa.eval import evaluate
    from wfa.model import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, tokenizer = create_model("wfa-vit-micro")
    aggregator = create_aggregator("bleu", 128)
    report = evaluate(model, tokenizer, ucm_test_shards, "test", aggregator, batch_size=105, label_zeroshot=True)
    m = report.metrics
    assert (m["num_images"], m["num_captions"], m["num_i2t_queries"]) == (210, 1050, 210)
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "mR_t2i", "agg_mR_i2t"):
        assert 0.0 <= m[key] <= 100.0
    assert m["t2i_r1"] <= m["t2i_r5"] <= m["t2i_r10"] and m["agg_gallery_size"] == 210
    assert report.chance["t2i_r1"] == pytest.approx(100 / 210)
    zs = report.zeroshot["test labels"]
    assert zs["num_classes"] == 21 and zs["templates"] == "ucm" and 0 <= zs["top1"] <= zs["top5"] <= 100

    # the door's numbers are the metrics of its features, identical through both search backends
    enc = report.encoded
    assert np.allclose(np.linalg.norm(enc.image_emb, axis=1), 1, atol=1e-5)
    expected = retrieval_metrics(enc.image_emb, enc.text_emb, enc.text_to_image)
    assert {key: m[key] for key in expected} == expected
    assert retrieval_metrics(enc.image_emb, enc.text_emb, enc.text_to_image, backend="torch") == expected
    fused = aggregated_gallery_metrics(enc.image_emb, enc.fused_emb, enc.fused_to_image)
    assert {key: m[f"agg_{key}"] for key in fused} == fused
    assert evaluate(model, tokenizer, ucm_test_shards, "test", aggregator, batch_size=105, backend="torch").metrics == m
    assert report.recall_curve()["t2i"][0] == m["t2i_r1"] and report.recall_curve()["i2t"][9] == m["i2t_r10"]

    written = report.write(tmp_path / "report.json", echo=False)
    for name in ("report.json", "report.md", "recall_at_k.png", "caption_weights.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["test"] == m and saved["num_test_images"] == 210 and len(saved["curves"]["retrieval"]["t2i"]) == 10
    assert saved["zeroshot"]["test labels"]["top1"] == zs["top1"] and "files" in written and "files" not in saved

    # a training run's text options (length buckets, shared repeats) are exact; the model's mode is restored
    model.train()
    fast = evaluate(model, tokenizer, ucm_test_shards, "test", batch_size=105, text_buckets=4, dedup_captions=True)
    assert model.training
    assert np.allclose(fast.encoded.text_emb, enc.text_emb, atol=1e-5)
    assert np.array_equal(fast.encoded.text_to_image, enc.text_to_image)
    assert "agg_mR_i2t" not in fast.metrics and fast.zeroshot == {}
    with pytest.raises(ValueError, match="ks must be positive"):
        evaluate(model, tokenizer, ucm_test_shards, "test", ks=(0, 5))


def test_metrics_import_without_torch():
    # the metrics of precomputed features need numpy and FAISS only: with torch blocked in a fresh
    # interpreter they import and run (through wfa.eval and import wfa's door too); only the torch backend fails
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        import wfa
        from wfa.eval import chance_recalls, retrieval_metrics
        from wfa.eval.metrics import aggregated_gallery_metrics
        m = wfa.retrieval_metrics([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.1], [0.2, 1.0]], [0, 1], ks=(1,))
        assert m == retrieval_metrics([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.1], [0.2, 1.0]], [0, 1], ks=(1,))
        assert m["t2i_r1"] == 100.0 and m["i2t_r1"] == 100.0, m
        try:
            retrieval_metrics([[1.0, 0.0]], [[1.0, 0.0]], [0], backend="torch")
        except ImportError:
            print("torch blocked")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch blocked"


def test_eval_names_are_lazy_and_documented():
    import wfa.eval

    for name in wfa.eval.__all__:
        assert getattr(wfa.eval, name).__doc__, name
    assert wfa.eval.evaluate.__module__ == "wfa.eval.evaluation"
    with pytest.raises(AttributeError, match="no attribute 'evaluate_model'"):
        wfa.eval.evaluate_model
