"""scripts/bench/ablations.py and the weights analysis it shares with wfa.study: weight variants, variant shards,
learned against BLEU weights, and the retrieval ablation trained through wfa study on a UCM subset."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from conftest import load_script

from wfa.study.weights import attention_vs_bleu, pearson, rankdata, spearman

REPO = Path(__file__).resolve().parents[1]
LIMIT = 16


@pytest.fixture(scope="module")
def ablations():
    """The script as a module (scripts/bench is not a package)."""
    return load_script("scripts/bench/ablations.py")


def test_no_collapse_variant_matches_the_library_without_copies_and_differs_with_them(ablations):
    from wfa.redundancy import bleu_uniqueness

    distinct = ["a large parking lot with many cars", "many cars are parked in the lot", "some trees beside a road"]
    assert ablations.uniqueness_without_collapsing(distinct) == pytest.approx(bleu_uniqueness(distinct), abs=1e-12)
    copies = distinct + ["Some trees  beside a road"]  # an exact copy after normalisation and lower-casing
    collapsed, separate = bleu_uniqueness(copies), ablations.uniqueness_without_collapsing(copies)
    assert collapsed[2] == pytest.approx(collapsed[3]) and separate[2] == pytest.approx(separate[3])
    assert separate.sum() == pytest.approx(1.0) and not separate == pytest.approx(collapsed)
    # each copy now scores BLEU 100 against its twin, so the pair loses uniqueness: less weight per copy
    assert separate[3] < collapsed[3] * 2 and ablations.copy_groups(copies) == [1, 1, 2, 2]


def test_rank_correlations():
    a, b = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 45.0]
    assert spearman(a, b) == pytest.approx(1.0) and pearson(a, b) < 1.0
    assert spearman(a, b[::-1]) == pytest.approx(-1.0)
    assert list(rankdata([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant: undefined, not 0


def test_attention_vs_bleu_of_a_hand_made_record():
    record = {"text_to_image": [0, 0, 1, 1], "bleu_weights": [0.7, 0.3, 0.5, 0.5],
              "learned_weights": [0.6, 0.4, 0.9, 0.1], "seed": 0}
    result = attention_vs_bleu(record)
    assert result["num_images"] == 2 and result["num_captions"] == 4
    assert result["images_with_defined_correlation"] == 1  # image 1's BLEU weights are constant
    assert result["pearson_per_image_mean"] == pytest.approx(1.0)
    assert result["learned_distance_from_uniform"] == pytest.approx((0.1 + 0.4) / 2)


@pytest.fixture(scope="module")
def ucm_subset(ucm_dir, tmp_path_factory):
    """UCM shards of the first 16 images per split, written as configs/studies/ucm.yaml writes its shards."""
    from wfa.data.karpathy import KarpathyReader, write_karpathy_subset
    from wfa.data.writer import write_shards

    root = tmp_path_factory.mktemp("ablations")
    captions = write_karpathy_subset(ucm_dir / "dataset.json", LIMIT, root / "shards-subset.json")
    write_shards(KarpathyReader(captions, ucm_dir / "images", labels=ucm_dir / "labels.csv"), root / "shards",
                 shard_size=200, progress=False)
    return root


def test_variant_shards_change_only_the_weights(ablations, ucm_subset, tmp_path):
    src, dst = ucm_subset / "shards", tmp_path / "variant"
    uniform = lambda captions: [1.0 / len(captions)] * len(captions)
    index = ablations.write_variant_shards(src, dst, uniform, "uniform")
    assert index["weights_variant"] == "uniform" and index["weights_variant_rewritten"] == 3 * LIMIT
    name = index["splits"]["train"]["shards"][0]["name"]
    with tarfile.open(src / name) as a, tarfile.open(dst / name) as b:
        assert a.getnames() == b.getnames()
        for member in a.getmembers():
            old, new = a.extractfile(member).read(), b.extractfile(member.name).read()
            if member.name.endswith(".json"):
                old, new = json.loads(old), json.loads(new)
                assert new["weights"]["bleu"] == [0.2] * 5 and old["weights"]["bleu"] != new["weights"]["bleu"]
                assert {k: v for k, v in old.items() if k != "weights"} == {k: v for k, v in new.items() if k != "weights"}
            else:
                assert old == new


def test_ablations_end_to_end_train_through_wfa_study(ablations, ucm_dir, ucm_subset, monkeypatch):
    monkeypatch.chdir(REPO)  # the study config names its base relative to the repository root
    out = ucm_subset / "study"
    argv = ["--budget-steps", "2", "--seeds", "1", "--limit-images", str(LIMIT), "--retrieval-variants", "no_collapse",
            "--taus", "0.1,1", "--ucm-dir", str(ucm_dir), "--study-dir", str(out),
            "--shards-dir", str(ucm_subset / "shards"), "--runs-dir", str(ucm_subset / "runs"),
            "--set", "model.name=wfa-vit-micro", "--set", "data.image_size=32", "--set", "train.batch_size=8",
            "--set", "train.eval_every=1", "--out", str(ucm_subset / "ablations.json")]
    assert ablations.main(argv) == 0
    report = json.loads((ucm_subset / "ablations.json").read_text())
    assert report["weights"]["num_images"] == LIMIT and report["weights"]["num_captions"] == 5 * LIMIT
    assert set(report["weights"]["variants"]) == {"linear", "softmax_tau0.1", "softmax_tau1", "no_collapse"}
    v = report["weights"]["variants"]
    assert v["softmax_tau0.1"]["normalised_entropy"] < v["softmax_tau1"]["normalised_entropy"]  # lower tau: peakier
    assert list(report["retrieval"]["variants"]) == ["bleu[no_collapse]"]
    record = json.loads((out / "ablation_runs" / "no_collapse" / "runs" / "bleu-no_collapse-s0.json").read_text())
    assert record["version"] == 4 and record["captions_encoded"] == 5 * 2 * 8
    assert record["dataset"] == "UCM-Captions, weights no_collapse"
