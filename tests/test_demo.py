"""`wfa demo` end to end with a reduced budget: files, report schema, open_clip-loadable checkpoint."""
from __future__ import annotations

import json

import pytest

METRIC_KEYS = {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "mR_t2i"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    import torch

    from wfa.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--num-images", "60", "--steps", "2", "--batch-size", "8",
                 "--image-size", "32", "--model", "wfa-vit-micro"])
    assert code == 0
    return out


def test_demo_writes_everything(demo_dir):
    for name in ("report.json", "report.md", "recall_at_k.png", "caption_weights.png", "model_final.pt",
                 "aggregator.safetensors", "config.yaml", "metrics.jsonl", "shards/index.json"):
        assert (demo_dir / name).stat().st_size > 0, name
    assert not (demo_dir / "calibration").exists() and not (demo_dir / "checkpoints").exists()
    assert "| test |" in (demo_dir / "report.md").read_text()


def test_demo_report_schema(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    index = json.loads((demo_dir / "shards" / "index.json").read_text())
    n_test = index["splits"]["test"]["num_samples"]
    assert report["num_test_images"] == n_test == report["test"]["num_images"]
    assert METRIC_KEYS <= set(report["test"]) and METRIC_KEYS <= set(report["chance"])
    assert all(0.0 <= report["test"][k] <= 100.0 for k in METRIC_KEYS)
    assert report["chance"]["t2i_r1"] == pytest.approx(100.0 / n_test)
    assert report["train"]["method"] == "bleu" and report["train"]["steps"] == 2
    assert report["train"]["images_seen"] == 16
    assert report["zeroshot"]["test labels"]["num_images"] == n_test
    assert set(report["demo"]) == {"mR_t2i_over_chance", "beats_chance_5x", "total_wall_s"}
    assert report["demo"]["mR_t2i_over_chance"] == pytest.approx(report["test"]["mR_t2i"] / report["chance"]["mR_t2i"])
    assert report["model"]["name"] == "wfa-vit-micro"


def test_demo_checkpoint_loads_with_open_clip(demo_dir):
    import open_clip
    import torch

    import wfa.model  # noqa: F401  (registers the wfa model configs with open_clip)

    model, _, preprocess = open_clip.create_model_and_transforms("wfa-vit-micro",
                                                                 pretrained=str(demo_dir / "model_final.pt"))
    state = torch.load(demo_dir / "model_final.pt", map_location="cpu")
    assert torch.equal(model.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
    with torch.no_grad():
        features = model.encode_image(torch.zeros(1, 3, 32, 32))
    assert features.shape == (1, 128) and torch.isfinite(features).all()


def test_eval_command_on_the_demo_run(demo_dir, tmp_path, capsys):
    from wfa.cli import main

    out = tmp_path / "eval" / "report.json"
    assert main(["eval", "--checkpoint", str(demo_dir / "model_final.pt"), "--shards", str(demo_dir / "shards"),
                 "--split", "test", "--out", str(out), "--backend", "torch"]) == 0
    report = json.loads(out.read_text())
    demo = json.loads((demo_dir / "report.json").read_text())
    # same checkpoint, same split: the command reproduces the demo's numbers (model name from config.yaml)
    for key in METRIC_KEYS:
        assert report["test"][key] == pytest.approx(demo["test"][key])
    assert report["model"]["name"] == "wfa-vit-micro" and report["model"]["aggregator"].endswith("aggregator.safetensors")
    assert "agg_mR_i2t" in report["test"]
    assert "t2i_r1" in capsys.readouterr().out


def test_calibration_fits_steps_to_the_budget(demo_dir):
    import argparse

    from wfa.commands.demo import add_arguments, calibrate_steps

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--batch-size", "8", "--image-size", "32", "--model", "wfa-vit-micro"])
    index_before = (demo_dir / "shards" / "index.json").read_text()
    steps, per_step = calibrate_steps(demo_dir / "calibration", demo_dir / "shards", args, seconds=60.0)
    assert per_step > 0 and steps == max(1, int(60.0 / per_step))
    assert not (demo_dir / "calibration").exists()
    assert (demo_dir / "shards" / "index.json").read_text() == index_before  # data untouched
