"""Zero-shot classification: prompts, the registered tasks end to end (UCM, BigEarthNet, a folder), an
independent numpy reference, ``wfa eval --zeroshot KIND``."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wfa.eval.classification import average_precision, mean_average_precision, topk_accuracy
from wfa.eval.zeroshot import load_templates, prompts, readable_classnames, section_for


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
    targets = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 1]])  # class 2 ranking: row 2 (+), row 1 (-), row 0 (+)
    assert mean_average_precision(scores, targets)[0] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_topk_accuracy_with_ties():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.2, 0.1, 0.0]])
    targets = np.array([1, 2, 2])
    acc = topk_accuracy(scores, targets, (1, 2, 3))
    # row 0 rank 0; row 1 all tie -> class 2 after classes 0 and 1 -> rank 2; row 2 rank 2
    assert acc == {"top1": pytest.approx(100 / 3), "top2": pytest.approx(100 / 3), "top3": pytest.approx(100.0)}


def test_templates_cover_ucm_rsicd_and_bigearthnet(ucm_dir, rsicd_dir):
    from wfa.data.label_captions import V2_LABELS

    config = load_templates()
    assert all("{c}" in t for section in config.values() for t in section.get("templates", []))
    assert "a satellite photo of {c}." in config["default"]["templates"]
    for folder, section, count in ((ucm_dir, "ucm", 21), (rsicd_dir, "rsicd", 31)):
        with open(folder / "labels.csv", newline="") as f:
            classes = sorted({row["class"] for row in csv.DictReader(f)})
        assert len(classes) == count and set(classes) <= set(config[section]["classnames"])
        assert section_for(classes, config) == section
    assert readable_classnames(["mediumresidential", "UnknownClass"], config["ucm"]["classnames"]) == [
        "a medium residential area", "unknown class"]
    assert set(V2_LABELS) == set(config["bigearthnet"]["classnames"])
    assert section_for(["farmland", "lake"], config) == "labels"
    # a section without its own templates (or an unknown one) uses the default templates, readable names
    assert prompts("no-such-section", ["SeaLake"], config) == (config["default"]["templates"], ["sea lake"])


def test_load_templates_rejects_bad_files_and_merges_good_ones(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("ucm:\n  templates: ['an aerial photo']\n")
    with pytest.raises(ValueError, match="ucm"):
        load_templates(bad)
    bad.write_text("mine: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_templates(bad)
    mine = tmp_path / "mine.yaml"
    mine.write_text("ucm:\n  templates: ['a photo of {c} from a drone.']\nmine:\n  classnames: {x: the x}\n")
    merged = load_templates(mine)
    assert merged["ucm"]["templates"] == ["a photo of {c} from a drone."] and "bigearthnet" in merged
    assert prompts("mine", ["x", "y"], merged)[1] == ["the x", "y"]


@pytest.fixture(scope="module")
def micro_model():
    import torch

    from wfa.model import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return create_model("wfa-vit-micro")


def test_zeroshot_ucm_test_split(micro_model, ucm_dir):
    from wfa.eval.tasks import create_task
    from wfa.eval.zeroshot import run_zeroshot

    model, tokenizer = micro_model
    out = run_zeroshot(create_task("ucm", root=ucm_dir), model, tokenizer, batch_size=105, progress=False)
    assert out["num_images"] == 210 and out["num_classes"] == 21 and out["prompts"] == "ucm"
    assert 0.0 <= out["top1"] <= out["top5"] <= 100.0 and out["chance_top1"] == pytest.approx(100 / 21)
    assert len(out["per_class_top1"]) == 21 and out["skipped"] == {}
    assert run_zeroshot(create_task("ucm", root=ucm_dir, split="all"), model, tokenizer, batch_size=525,
                        progress=False)["num_images"] == 2100


def test_zeroshot_bigearthnet_v1_patches(ben_v1_dir):
    import torch

    from wfa.eval.tasks import create_task
    from wfa.eval.zeroshot import run_zeroshot
    from wfa.model import create_model

    torch.manual_seed(0)
    task = create_task("bigearthnet", root=ben_v1_dir)
    model, tokenizer = create_model("wfa-vit-micro", bands=["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                                            "B8A", "B09", "B11", "B12"])
    out = run_zeroshot(task, model, tokenizer, progress=False)
    assert task.arguments["mode"] == "s2"  # chosen from the model's 12 input channels
    assert out["num_images"] == 11 and out["num_classes"] == 19
    assert 1 <= out["classes_with_positives"] <= 19
    assert 0.0 < out["mAP"] <= 100.0
    present = [ap for ap in out["per_class_ap"].values() if ap is not None]
    assert len(present) == out["classes_with_positives"]
    assert out["mAP"] == pytest.approx(np.mean(present))
    # an RGB model sees a true-colour composite of the same patches
    rgb_model, rgb_tokenizer = create_model("wfa-vit-micro")
    rgb = run_zeroshot(create_task("bigearthnet", root=ben_v1_dir), rgb_model, rgb_tokenizer, progress=False)
    assert rgb["num_images"] == 11 and 0.0 < rgb["mAP"] <= 100.0
    with pytest.raises(ValueError, match="takes 5 input channels"):
        create_task("bigearthnet", root=ben_v1_dir).for_channels(5)


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


def scene_tree(root, classes=("beach", "forest", "harbor"), per_class=4, size=40):
    """A class-per-folder tree of small coloured images (each class its own hue, each image its own noise)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), dtype=np.float64)
            base[..., c] = 200
            pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def test_zeroshot_equals_an_independent_reference(micro_model, tmp_path):
    """open_clip's own encode_image / encode_text on the same tensors, numpy cosine scores: same numbers."""
    import torch

    from wfa.data.karpathy import read_rgb
    from wfa.data.transforms import rgb_transform
    from wfa.eval.tasks import create_task
    from wfa.eval.zeroshot import run_zeroshot

    model, tokenizer = micro_model
    task = create_task("folder", root=scene_tree(tmp_path / "scenes"), test_fraction=1.0)
    out = run_zeroshot(task, model, tokenizer, batch_size=5, progress=False)

    templates = load_templates()["default"]["templates"]
    names = ["beach", "forest", "harbor"]
    files = sorted((tmp_path / "scenes").rglob("*.png"))
    transform = rgb_transform(32, train=False)
    with torch.no_grad():
        images = model.encode_image(torch.stack([transform(read_rgb(f)) for f in files])).double().numpy()
        classes = []
        for name in names:
            t = model.encode_text(tokenizer([p.replace("{c}", name) for p in templates])).double().numpy()
            mean = (t / np.linalg.norm(t, axis=1, keepdims=True)).mean(axis=0)
            classes.append(mean / np.linalg.norm(mean))
    scores = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ np.array(classes).T
    truth = np.array([names.index(f.parent.name) for f in files])
    predicted = scores.argmax(axis=1)
    assert out["num_images"] == 12 and out["top1"] == pytest.approx(100 * np.mean(predicted == truth))
    assert out["per_class_top1"] == {n: pytest.approx(100 * np.mean(predicted[truth == i] == i))
                                     for i, n in enumerate(names)}
    assert out["mean_per_class"] == pytest.approx(np.mean(list(out["per_class_top1"].values())))


def test_wfa_eval_zeroshot_registered_kinds(micro_model, tmp_path, capsys):
    import wfa.cli
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards
    from wfa.model import save_open_clip_checkpoint

    model, _ = micro_model
    checkpoint = save_open_clip_checkpoint(model, tmp_path / "run" / "model_final.pt")
    (tmp_path / "run" / "config.yaml").write_text("model: {name: wfa-vit-micro}\ndata: {image_size: 32}\n")
    shards = tmp_path / "shards"
    write_shards(SyntheticReader(num_images=24, seed=0, image_size=32), shards, shard_size=12, progress=False)
    tree = scene_tree(tmp_path / "scenes")
    out = tmp_path / "eval" / "report.json"
    assert wfa.cli.main(["eval", "--checkpoint", str(checkpoint), "--shards", str(shards), "--split", "test",
                         "--zeroshot", "folder", "--folder-root", str(tree), "--zeroshot-test-fraction", "1",
                         "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["zeroshot"]["folder"]["num_images"] == 12 and report["zeroshot"]["folder"]["num_classes"] == 3
    capsys.readouterr()
    code = wfa.cli.main(["eval", "--checkpoint", str(checkpoint), "--shards", str(shards), "--zeroshot", "ucm",
                         "--out", str(out)])
    assert code == 2 and "--zeroshot ucm needs --ucm-dir" in capsys.readouterr().err
    code = wfa.cli.main(["eval", "--checkpoint", str(checkpoint), "--shards", str(shards), "--zeroshot", "folder",
                         "--folder-root", str(tmp_path / "nowhere"), "--out", str(out)])
    assert code == 2 and "is not a folder" in capsys.readouterr().err


def test_ucm_task_counts_what_it_leaves_out(ucm_dir, tmp_path, micro_model):
    from wfa.eval.tasks import create_task
    from wfa.eval.zeroshot import run_zeroshot

    task = create_task("ucm", root=ucm_dir)
    assert len(task.items) == 2100 and len(task.partition().test) == 210
    with pytest.raises(ValueError, match="no image has split 'tset'"):
        create_task("ucm", root=ucm_dir, split="tset").partition()
    # a copy of UCM whose labels.csv lacks one image, whose images/ lacks another and holds a broken one
    copy = tmp_path / "ucm"
    (copy / "images").mkdir(parents=True)
    (copy / "dataset.json").write_text((ucm_dir / "dataset.json").read_text())
    test = [task.items[i] for i in task.partition().test]
    rows = (ucm_dir / "labels.csv").read_text().splitlines()
    (copy / "labels.csv").write_text("\n".join(r for r in rows if not r.startswith(f"{test[0].id}.")) + "\n")
    for item in test[3:]:
        shutil.copy(item.ref, copy / "images")
    (copy / "images" / f"{test[2].id}.jpg").write_bytes(b"not a jpeg")
    damaged = create_task("ucm", root=copy)
    model, tokenizer = micro_model
    out = run_zeroshot(damaged, model, tokenizer, batch_size=105, progress=False)
    assert out["num_images"] == 207
    assert out["skipped"] == {"no class in the labels file": 1, "missing image": 1891, "unreadable image": 1}
