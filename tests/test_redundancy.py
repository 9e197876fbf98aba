"""BLEU-uniqueness weights (fast vs the sacrebleu reference), the redundancy report and its CLI."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

import wfa.cli
import wfa.redundancy as redundancy
from wfa.redundancy import (
    EmptyCaptionError,
    bleu_uniqueness,
    bleu_uniqueness_batch,
    bleu_uniqueness_reference,
    normalize_caption,
    plot_redundancy,
    redundancy_report,
)

TOL = 1e-9


@pytest.fixture(scope="module")
def ucm_groups(ucm_dir: Path) -> list[list[str]]:
    data = json.loads((ucm_dir / "dataset.json").read_text())
    return [[s["raw"] for s in image["sentences"]] for image in data["images"]]


def assert_matches_reference(captions, tau=None) -> np.ndarray:
    fast = bleu_uniqueness(captions, tau=tau)
    ref = bleu_uniqueness_reference(captions, tau=tau)
    assert fast.dtype == np.float64 and fast.shape == (len(captions),)
    assert np.max(np.abs(fast - ref)) <= TOL, (captions, fast, ref)
    assert np.all(fast >= 0) and math.isclose(fast.sum(), 1.0, abs_tol=1e-12)
    return fast


def long_caption(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n)) + " ."


# ---- the definition -------------------------------------------------------------------------

def test_normalize_caption():
    assert normalize_caption("  a \t big\n\nroad  ") == "a big road"
    assert normalize_caption("\u00a0x\u3000y ") == "x y"
    with pytest.raises(TypeError):
        normalize_caption(None)  # type: ignore[arg-type]


def test_hand_checked_two_copies_and_one_different():
    a, b = "a large green field .", "two planes parked near the terminal ."
    weights = bleu_uniqueness([a, a, b])
    # A (5 tokens) vs B (7 tokens) share only "."; exp smoothing halves each zero-match order.
    bleu_ab = math.exp(1 - 7 / 5) * math.exp(
        (math.log(100 / 5) + math.log(100 / (2 * 4)) + math.log(100 / (4 * 3)) + math.log(100 / (8 * 2))) / 4)
    bleu_ba = math.exp(
        (math.log(100 / 7) + math.log(100 / (2 * 6)) + math.log(100 / (4 * 5)) + math.log(100 / (8 * 4))) / 4)
    assert math.isclose(bleu_ab, sacrebleu.sentence_bleu(a, [b], lowercase=True).score, rel_tol=1e-12)
    u_a, u_b = 1 - bleu_ab / 100, 1 - bleu_ba / 100
    expected = np.array([u_a / (u_a + u_b) / 2, u_a / (u_a + u_b) / 2, u_b / (u_a + u_b)])
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)
    assert weights[2] > weights[0] == weights[1]
    assert_matches_reference([a, a, b])


def test_fast_equals_reference_on_ucm(ucm_groups):
    sample = ucm_groups[::3]  # 700 real images, all splits and classes
    fast = bleu_uniqueness_batch(sample)
    worst = max(float(np.max(np.abs(f - bleu_uniqueness_reference(g)))) for f, g in zip(fast, sample))
    assert worst <= TOL
    for f, g in zip(fast[:50], sample[:50]):
        np.testing.assert_array_equal(f, bleu_uniqueness(g))
    assert all(np.all(w >= 0) and math.isclose(w.sum(), 1.0, abs_tol=1e-12) for w in fast)


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0, 10.0])
def test_tau_matches_reference(ucm_groups, tau):
    for captions in ucm_groups[5::70]:
        assert_matches_reference(captions, tau=tau)


def test_tau_limits():
    captions = ["a red roof .", "a red roof near a road .", "many trees beside a blue river ."]
    linear = bleu_uniqueness(captions)
    sharp = bleu_uniqueness(captions, tau=1e-3)
    flat = bleu_uniqueness(captions, tau=1e3)
    assert np.argmax(sharp) == np.argmax(linear) == 2 and sharp[2] > 0.99
    np.testing.assert_allclose(flat, 1 / 3, atol=1e-3)


def test_copies_exact_and_case_space_variants():
    captions = ["A road runs through.", "a  road RUNS through.", " A ROAD runs through. ",
                "a river runs through the forest .", "A road runs through."]
    weights = assert_matches_reference(captions)
    road = weights[[0, 1, 2, 4]]
    assert np.all(road == road[0])
    # the distinct "road" caption's weight is split evenly among its four copies
    two = bleu_uniqueness(["A road runs through.", "a river runs through the forest ."])
    np.testing.assert_allclose([road.sum(), weights[3]], two, atol=1e-15)


def test_k1_and_all_identical_are_uniform():
    np.testing.assert_array_equal(bleu_uniqueness(["just one caption ."]), [1.0])
    np.testing.assert_array_equal(bleu_uniqueness(["same", "SAME ", "  same"]), np.full(3, 1 / 3))
    np.testing.assert_array_equal(bleu_uniqueness(["same", "same"], tau=0.1), [0.5, 0.5])
    assert_matches_reference(["just one caption ."])


def test_all_u_zero_is_uniform():
    # distinct strings that 13a tokenises identically: every BLEU is 100, every u is 0
    captions = ["a,b", "a , b", "a ,b", "a,b"]
    np.testing.assert_array_equal(bleu_uniqueness(captions), np.full(4, 0.25))
    np.testing.assert_array_equal(bleu_uniqueness(captions, tau=0.5), np.full(4, 0.25))
    assert_matches_reference(captions)


@pytest.mark.parametrize("captions", [
    ["Un café près de l'église .", "un cafe pres de l'eglise .", "Übung: Straße, Brücke & Fluß."],
    ["北京的机场有很多飞机。", "机场 有 很多 飞机", "many planes at the airport ."],
    ["a beach 🏖️ with umbrellas ☂", "a beach with umbrellas 😀 .", "🏖️"],
    ["x1.5 km, 3-4 roads; \"quoted\" (paren) [b] {c} ~!@#$%^*_+=|\\:;'<>?/`", "1,000 2.5. 7, a.b,c",
     "&quot;x&quot; &amp; &lt;y&gt;", "<skipped> road", "-- ... ,,"],
])
def test_unicode_and_punctuation(captions):
    assert_matches_reference(captions)
    assert_matches_reference(captions, tau=0.3)


def test_random_punctuation_fuzz():
    # seeded random captions dense in the characters the 13a rules treat specially
    rng = random.Random(1)
    pieces = ["a", "b", "road", "1", "2.5", ".", ",", "-", "&amp;", "&quot;", "&lt;", "<skipped>", "(", ")",
              "'", "$", "é", "北", "😀", "x.y", "3-4", "..", ",,", "-.", "9,", "", " "]
    groups = [["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) or "z" for _ in range(4)]
              for _ in range(150)]
    groups = [[c if c.strip() else "z" for c in g] for g in groups]
    for f, g in zip(bleu_uniqueness_batch(groups), groups):
        assert np.max(np.abs(f - bleu_uniqueness_reference(g))) <= TOL, g


def test_caption_with_no_tokens():
    assert_matches_reference(["<skipped>", "a road", "a road near houses"])
    assert_matches_reference(["<skipped>", "<skipped> <skipped>"])  # no tokens at all


def test_very_long_captions(ucm_groups):
    rng = random.Random(0)
    words = sorted({w for g in ucm_groups[:300] for c in g for w in c.split()})
    captions = [long_caption(rng, words, n) for n in (300, 450, 600)]
    captions.append(captions[0] + " " + captions[1])
    assert_matches_reference(captions)
    k50 = [long_caption(rng, words[:40], rng.randint(5, 40)) for _ in range(50)]
    assert_matches_reference(k50)


def test_batched_13a_equals_sacrebleu_tokenizer(ucm_groups):
    texts = [normalize_caption(c).lower() for g in ucm_groups[:200] for c in g]
    texts += [normalize_caption(p).lower() for p in redundancy._PROBES_13A]
    rules = redundancy._batched_13a_rules()
    assert rules is not None
    assert redundancy._tokenize_batched(texts, rules) == [redundancy._TOKENIZER(t).split() for t in texts]


def test_fallback_tokenizer_path_matches_reference(ucm_groups, monkeypatch):
    monkeypatch.setattr(redundancy, "_BATCHED_13A", None)
    for captions in ucm_groups[:40:4]:
        assert_matches_reference(captions)


# ---- errors ---------------------------------------------------------------------------------

def test_empty_caption_errors():
    with pytest.raises(EmptyCaptionError, match="caption 1 ") as info:
        bleu_uniqueness(["a road", "  \t "])
    assert info.value.caption_index == 1 and info.value.image_index is None
    with pytest.raises(EmptyCaptionError, match="caption 0"):
        bleu_uniqueness_reference([""])
    with pytest.raises(EmptyCaptionError, match="caption 2 of image 1") as info:
        bleu_uniqueness_batch([["a"], ["a", "b", ""]])
    assert (info.value.image_index, info.value.caption_index) == (1, 2)


def test_empty_caption_error_from_worker(monkeypatch):
    monkeypatch.setattr(redundancy, "CHUNK_CAPTIONS", 2)
    groups = [["a road", "a river"]] * 5 + [["a road", ""]]
    with pytest.raises(EmptyCaptionError, match="caption 1 of image 5") as info:
        bleu_uniqueness_batch(groups, workers=2)
    assert (info.value.image_index, info.value.caption_index) == (5, 1)


@pytest.mark.parametrize("call", [
    lambda: bleu_uniqueness([]),
    lambda: bleu_uniqueness("a caption"),
    lambda: bleu_uniqueness(["a", "b"], tau=0),
    lambda: bleu_uniqueness(["a", "b"], tau=-1.0),
    lambda: bleu_uniqueness_reference(["a", "b"], tau=float("nan")),
    lambda: bleu_uniqueness_batch([["a"], []]),
    lambda: bleu_uniqueness_batch([["a"]], workers=0),
])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_non_string_caption():
    with pytest.raises(TypeError):
        bleu_uniqueness(["a", 3])  # type: ignore[list-item]


# ---- batch ----------------------------------------------------------------------------------

def test_batch_chunking_does_not_change_results(ucm_groups, monkeypatch):
    groups = ucm_groups[:60] + [["a lone caption"]] + ucm_groups[60:80]
    whole = bleu_uniqueness_batch(groups)
    monkeypatch.setattr(redundancy, "CHUNK_CAPTIONS", 7)
    chunked = bleu_uniqueness_batch(groups)
    assert len(whole) == len(chunked) == len(groups)
    for w, c, g in zip(whole, chunked, groups):
        np.testing.assert_array_equal(w, c)
        np.testing.assert_array_equal(w, bleu_uniqueness(g))


def test_batch_workers_equal_serial(ucm_groups):
    serial = bleu_uniqueness_batch(ucm_groups, tau=0.2)
    parallel = bleu_uniqueness_batch(ucm_groups, tau=0.2, workers=2, progress=True)
    assert len(serial) == len(parallel) == 2100
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(s, p)


# ---- report and plot ------------------------------------------------------------------------

def test_report_on_hand_example(tmp_path):
    groups = [["a cat sits .", "a cat sits .", "A  CAT sits .", "a dog runs on grass ."],
              ["only one caption"],
              ["a red car .", "a blue boat on water ."]]
    report = redundancy_report(groups)
    json.dumps(report)
    assert report["num_images"] == 3 and report["num_captions"] == 7
    assert report["num_distinct_captions"] == 5
    assert report["distinct_ratio"] == pytest.approx(5 / 7)
    assert report["exact_duplicate_rate"] == pytest.approx(1 / 7)  # only the verbatim repeat
    assert report["images_with_copies"] == pytest.approx(1 / 3)
    assert report["k_histogram"] == {"1": 1, "2": 1, "4": 1}
    assert report["k"] == {"mean": pytest.approx(7 / 3), "min": 1, "max": 4}

    def bleu(h, r):
        return sacrebleu.sentence_bleu(h, [r], lowercase=True).score

    pairs = [("a cat sits .", "a dog runs on grass ."), ("a red car .", "a blue boat on water .")]
    scores = [bleu(h, r) for x, y in pairs for h, r in ((x, y), (y, x))]
    assert report["num_pairs"] == 4
    assert report["mean_pairwise_bleu"] == pytest.approx(sum(scores) / 4, abs=1e-12)

    entropies = []
    for g in groups:
        w = bleu_uniqueness_reference(g)
        entropies.append(float(-(w * np.log(w)).sum()))
    assert report["weight_entropy"]["mean"] == pytest.approx(np.mean(entropies), abs=1e-12)
    assert report["weight_entropy"]["min"] == pytest.approx(0.0, abs=1e-15)
    normalized = [entropies[0] / math.log(4), entropies[2] / math.log(2)]
    assert report["weight_entropy_normalized"]["mean"] == pytest.approx(np.mean(normalized), abs=1e-12)
    assert report["weight_entropy_normalized"]["min"] == pytest.approx(min(normalized), abs=1e-12)
    assert sum(report["histograms"]["weight_entropy_normalized"]["counts"]) == 2
    assert sum(report["histograms"]["image_mean_pairwise_bleu"]["counts"]) == 2

    png = plot_redundancy(report, tmp_path / "sub" / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_only_single_captions():
    report = redundancy_report([["one"], ["two"]])
    assert report["mean_pairwise_bleu"] is None and report["num_pairs"] == 0
    assert report["weight_entropy_normalized"]["mean"] is None


# ---- CLI ------------------------------------------------------------------------------------

def write_karpathy(path: Path, images: list[list[str]], extra: dict | None = None) -> Path:
    data = {"dataset": "tiny", "images": [
        {"filename": f"{i}.tif", "split": "train" if i % 2 == 0 else "test", "imgid": i,
         "sentences": [{"raw": c, "tokens": c.split(), "imgid": i} for c in captions]}
        for i, captions in enumerate(images)]}
    data["images"].extend((extra or {}).get("images", []))
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def cli(monkeypatch):
    # only this command's module: the others belong to other parts of the project
    monkeypatch.setattr(wfa.cli, "COMMANDS", ("redundancy",))
    return wfa.cli.main


def test_cli_tiny_file(cli, tmp_path, capsys):
    captions = write_karpathy(tmp_path / "caps.json", [
        ["a cat sits .", "a cat sits .", "a dog runs ."], ["a red car .", "a blue boat ."], ["one"]],
        extra={"images": [{"filename": "empty.tif", "split": "train", "sentences": []}]})
    out, plot = tmp_path / "r" / "report.json", tmp_path / "r" / "hist.png"
    assert cli(["redundancy", "--captions", str(captions), "--out", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 3 and report["num_captions"] == 6 and report["skipped_images"] == 1
    assert report["source"] == str(captions)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "distinct ratio" in printed and "skipped without captions: 1" in printed

    assert cli(["redundancy", "--captions", str(captions), "--split", "train", "--tau", "0.5",
                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 2 and report["tau"] == 0.5 and report["split"] == "train"


def test_cli_bad_input(cli, tmp_path, capsys):
    assert cli(["redundancy", "--captions", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = write_karpathy(tmp_path / "bad.json", [["fine"], ["ok", "   "]])
    assert cli(["redundancy", "--captions", str(bad)]) == 2
    assert "'1.tif' caption 1 is empty" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[]")
    assert cli(["redundancy", "--captions", str(tmp_path / "list.json")]) == 2
    assert "Karpathy" in capsys.readouterr().err
    (tmp_path / "noraw.json").write_text(json.dumps({"images": [{"filename": "x.tif", "sentences": [{}]}]}))
    assert cli(["redundancy", "--captions", str(tmp_path / "noraw.json")]) == 2
    assert "'x.tif'" in capsys.readouterr().err


def test_cli_ucm(cli, ucm_dir, tmp_path):
    out, plot = tmp_path / "ucm.json", tmp_path / "ucm.png"
    assert cli(["redundancy", "--captions", str(ucm_dir / "dataset.json"), "--out", str(out),
                "--plot", str(plot), "--workers", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 2100 and report["num_captions"] == 10500
    assert report["k_histogram"] == {"5": 2100}
    assert 0.9 < report["distinct_ratio"] < 1.0  # UCM repeats sentences within images
    assert 0 < report["mean_pairwise_bleu"] < 100
    assert plot.stat().st_size > 1000
