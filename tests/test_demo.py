"""`wfa demo` end to end with a reduced budget: files, report schema, open_clip-loadable checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

METRIC_KEYS = {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "mR_t2i"}


def run_demo(*args: str) -> None:
    """``wfa demo ARGS`` in its own process, as users run it: it trains at ``train.precision: auto`` (bf16 on a CPU
    with bf16 instructions), and accelerate keeps one precision per process, so in this (fp32) test process it
    would refuse every later fp32 run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", "import sys; from wfa.cli import main; sys.exit(main(sys.argv[1:]))",
                           "demo", *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo("--out", str(out), "--num-images", "60", "--steps", "2", "--batch-size", "8", "--image-size", "32",
             "--model", "wfa-vit-micro")
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


def test_demo_trains_configs_demo_yaml_with_its_options(demo_dir):
    """The demo is the run configs/demo.yaml describes (a link to the packaged file), its options applied on top,
    at the precision this machine resolves ``auto`` to."""
    from wfa.commands.demo import DEMO_CONFIG
    from wfa.config import config_to_dict, load_config
    from wfa.peak import resolve_precision
    from wfa.run import Run

    repo_copy = REPO / "configs" / "demo.yaml"
    assert repo_copy.resolve() == DEMO_CONFIG.resolve()
    shipped, ran = config_to_dict(load_config(DEMO_CONFIG)), config_to_dict(Run.open(demo_dir).config)
    changed = {(section, key) for section, values in shipped.items() if isinstance(values, dict)
               for key, value in values.items() if ran[section][key] != value}
    assert changed == {("data", "shards"), ("data", "image_size"), ("model", "name"), ("model", "in_chans"),
                       ("train", "batch_size"), ("train", "steps"), ("train", "warmup_steps"),
                       ("train", "log_every"), ("train", "precision")}
    assert shipped["train"]["precision"] == "auto" and ran["train"]["precision"] == resolve_precision("auto")
    assert ran["method"] == shipped["method"] and ran["data"]["val_split"] == "val" == shipped["data"]["val_split"]


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


def test_demo_keeps_a_time_budget(tmp_path):
    """Without --steps, training is a time budget: what the shards and the evaluation leave of --minutes."""
    from wfa.commands.demo import training_minutes

    assert training_minutes(5, elapsed_s=12) == pytest.approx((300 - 12 - 30) / 60)
    assert training_minutes(0.5, elapsed_s=100) == 0.25  # never less than 15 s of training
    out = tmp_path / "demo"
    run_demo("--out", str(out), "--num-images", "60", "--minutes", "0.5", "--batch-size", "8", "--image-size", "32",
             "--model", "wfa-vit-micro")
    report = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    end = records[-1]
    assert end["event"] == "end" and end["steps"] == report["train"]["steps"] >= 1
    assert 15.0 <= end["train_wall_s"] < 15.0 + 10.0  # stopped at its 0.25 min budget (plus at most one step)
    steps = [r for r in records if "lr" in r]
    assert steps[-1]["lr"] < 0.2 * 1e-3  # the schedule decayed over the budget


def test_demo_refuses_an_out_folder_that_holds_a_run(demo_dir, capsys):
    from wfa.cli import main

    before = sorted(p.name for p in demo_dir.iterdir())
    assert main(["demo", "--out", str(demo_dir), "--num-images", "60", "--steps", "1"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "already holds a demo run" in line and "another --out" in line
    assert sorted(p.name for p in demo_dir.iterdir()) == before  # nothing written or removed
