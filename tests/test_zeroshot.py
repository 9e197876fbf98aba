"""Zero-shot classification: AP / top-k by hand, prompt config, UCM and BigEarthNet end to end."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from wfa.eval.zeroshot import (
    average_precision,
    load_templates,
    mean_average_precision,
    readable_classnames,
    section_for,
    topk_accuracy,
)


def test_average_precision_by_hand():
    # ranking: + - + -  -> precision at the positives 1/1 and 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # all positives first -> 1
    assert average_precision([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
    # tie between a positive and a negative at the top: one threshold with P = 1/2, R = 1/2, then
    # the second positive at P = 2/3, R = 1 -> 0.5 * 0.5 + 0.5 * 2/3
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 1]) == pytest.approx(0.25 + 1 / 3)
    # order of the input inside a tie does not matter
    assert average_precision([0.5, 0.5, 0.1], [0, 1, 1]) == pytest.approx(0.25 + 1 / 3)
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_mean_average_precision_skips_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.7, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    m, per_class = mean_average_precision(scores, targets)
    # class 0: + first -> 1; class 1: ranking rows 1 (+), 2 (+), 0 -> 1; class 2: no positive
    assert per_class[:2] == pytest.approx([100.0, 100.0]) and np.isnan(per_class[2])
    assert m == pytest.approx(100.0)
    targets[0] = [0, 1, 0]  # class 1 ranking: row 1 (+), row 2 (+), row 0 (+) -> still 1; class 0 empty
    assert mean_average_precision(scores, targets)[0] == pytest.approx(100.0)
    targets = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 1]])  # class 2 ranking: row 2 (+), row 1 (-), row 0 (+)
    assert mean_average_precision(scores, targets)[0] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_topk_accuracy_with_ties():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.2, 0.1, 0.0]])
    targets = np.array([1, 2, 2])
    acc = topk_accuracy(scores, targets, (1, 2, 3))
    # row 0 rank 0; row 1 all tie -> class 2 after classes 0 and 1 -> rank 2; row 2 rank 2
    assert acc == {"top1": pytest.approx(100 / 3), "top2": pytest.approx(100 / 3), "top3": pytest.approx(100.0)}


def test_templates_cover_ucm_and_bigearthnet(ucm_dir):
    from wfa.data.label_captions import V2_LABELS

    config = load_templates()
    assert all("{c}" in t for section in config.values() for t in section["templates"])
    with open(ucm_dir / "labels.csv", newline="") as f:
        classes = sorted({row["class"] for row in csv.DictReader(f)})
    assert len(classes) == 21 and set(classes) <= set(config["ucm"]["classnames"])
    assert readable_classnames(["mediumresidential", "unknownclass"], config["ucm"]["classnames"]) == [
        "a medium residential area", "unknownclass"]
    assert set(V2_LABELS) == set(config["bigearthnet"]["classnames"])
    assert section_for(classes, config) == "ucm" and section_for(["farmland", "lake"], config) == "labels"


def test_load_templates_rejects_prompts_without_placeholder(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("ucm:\n  templates: ['an aerial photo']\n")
    with pytest.raises(ValueError, match="ucm"):
        load_templates(bad)


@pytest.fixture(scope="module")
def micro_model():
    import torch

    from wfa.model import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return create_model("wfa-vit-micro")


def test_zeroshot_ucm_test_split(micro_model, ucm_dir):
    from wfa.eval.zeroshot import zeroshot_ucm

    model, tokenizer = micro_model
    out = zeroshot_ucm(model, tokenizer, ucm_dir, split="test", batch_size=105)
    assert out["num_images"] == 210 and out["num_classes"] == 21
    assert 0.0 <= out["top1"] <= out["top5"] <= 100.0
    assert len(out["per_class_top1"]) == 21


def test_zeroshot_bigearthnet_v1_patches(ben_v1_dir):
    import torch

    from wfa.data.bigearthnet import BigEarthNetReader
    from wfa.eval.zeroshot import zeroshot_bigearthnet
    from wfa.model import create_model

    torch.manual_seed(0)
    reader = BigEarthNetReader(root=ben_v1_dir, mode="s2")
    model, tokenizer = create_model("wfa-vit-micro", bands=reader.bands)
    out = zeroshot_bigearthnet(model, tokenizer, reader)
    assert out["num_images"] == 11 and out["num_classes"] == 19
    assert 1 <= out["classes_with_positives"] <= 19
    assert 0.0 < out["mAP"] <= 100.0
    present = [ap for ap in out["per_class_ap"].values() if ap is not None]
    assert len(present) == out["classes_with_positives"]
    assert out["mAP"] == pytest.approx(np.mean(present))


def test_zeroshot_from_labels_on_encoded_features(micro_model):

    from wfa.eval.zeroshot import class_text_features, zeroshot_from_labels

    model, tokenizer = micro_model
    config = load_templates()
    classes = ["farmland", "lake", "forest"]
    text = class_text_features(model, tokenizer, readable_classnames(classes, config["labels"]["classnames"]),
                               config["labels"]["templates"]).numpy()
    # "images" equal to their class's text feature are classified perfectly
    labels = [["lake"], ["farmland"], ["forest"], ["lake"]]
    feats = np.stack([text[classes.index(lab[0])] for lab in labels])
    out = zeroshot_from_labels(model, tokenizer, feats, labels)
    assert out["top1"] == pytest.approx(100.0) and out["num_classes"] == 3 and "top5" not in out
    assert zeroshot_from_labels(model, tokenizer, feats, [["a", "b"]] * 4) is None


def test_ucm_reader_splits_and_named_errors(ucm_dir, tmp_path, micro_model):
    from wfa.eval.zeroshot import ucm_reader, zeroshot_ucm

    reader, labels = ucm_reader(ucm_dir, "test")
    assert len(reader) == len(labels) == 210 and len(set(labels)) == 21
    assert len(ucm_reader(ucm_dir, "all")[1]) == 2100
    with pytest.raises(ValueError, match="no UCM image has split 'tset'"):
        ucm_reader(ucm_dir, "tset")
    # a copy of UCM whose labels.csv lacks one image, and whose images/ lacks another
    copy = tmp_path / "ucm"
    (copy / "images").mkdir(parents=True)
    (copy / "dataset.json").write_text((ucm_dir / "dataset.json").read_text())
    first_test = reader.entries[0]
    rows = (ucm_dir / "labels.csv").read_text().splitlines()
    (copy / "labels.csv").write_text("\n".join(r for r in rows if not r.startswith(f"{first_test.id}.")) + "\n")
    with pytest.raises(ValueError, match=rf"1 image\(s\) have no class in labels.csv, e.g. '{first_test.filename}'"):
        ucm_reader(copy, "test")
    (copy / "labels.csv").write_text((ucm_dir / "labels.csv").read_text())
    for entry in reader.entries[1:]:
        source = reader.resolve(entry.filename)
        (copy / "images" / source.name).symlink_to(source)
    model, tokenizer = micro_model
    with pytest.raises(ValueError, match=rf"UCM image {first_test.id}: missing image"):
        zeroshot_ucm(model, tokenizer, copy, split="test", batch_size=105)
