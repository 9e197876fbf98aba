"""wfa.Run: the one owner of a run folder (layout, the one model loader, safe loading, metrics and the val curve)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import wfa
from hostile import Payload, assert_payload_is_live
from wfa.errors import CheckpointError, RunFolderError
from wfa.run import Run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(shards, run folder, summary) of a 4-step attention run, validated and checkpointed every 2 steps."""
    from wfa.config import load_config
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    root = tmp_path_factory.mktemp("run")
    shards = root / "shards"
    write_shards(SyntheticReader(num_images=40, seed=0, image_size=32), shards, shard_size=8, progress=False)
    out = root / "run"
    summary = wfa.train(load_config(None, [
        f"data.shards={shards}", f"out={out}", "model.name=wfa-vit-micro", "data.image_size=32", "data.val_split=val",
        "train.batch_size=8", "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.keep_checkpoints=0", "train.count_flops_every=2", "train.tensorboard=false", "method=attention"]))
    return shards, out, summary


def test_the_layout_is_named_once():
    run = Run("somewhere")
    assert run.config_path == Path("somewhere/config.yaml") and run.metrics_path == Path("somewhere/metrics.jsonl")
    assert run.model_path.name == "model_final.pt" and run.aggregator_path.name == "aggregator.safetensors"
    assert run.checkpoint_path(12) == Path("somewhere/checkpoints/step_000012.pt")
    assert set(Run.FILES) == {"config.yaml", "metrics.jsonl", "checkpoints", "model_final.pt",
                              "aggregator.safetensors", "tensorboard"}
    for bad in (-1, "3", 2.0, True, "../../etc/passwd"):
        with pytest.raises(ValueError):
            run.checkpoint_path(bad)


def test_the_trainer_writes_through_run(trained):
    _, out, summary = trained
    run = Run.open(out)
    assert summary["model_final"] == str(run.model_path) and summary["aggregator"] == str(run.aggregator_path)
    assert summary["config_file"] == str(run.config_path) and summary["metrics_file"] == str(run.metrics_path)
    assert list(run.checkpoints) == [2, 4] and run.held_files() == ["config.yaml", "metrics.jsonl", "checkpoints",
                                                                    "model_final.pt", "aggregator.safetensors"]
    assert run.config.method == "attention" and run.config.model.name == "wfa-vit-micro"
    assert run.summary()["steps"] == 4
    with pytest.raises(Exception, match="already holds a run"):
        run.check_new(None)


def test_val_curve_from_the_metrics(trained):
    _, out, summary = trained
    curve = Run(out).val_curve()
    assert [p["step"] for p in curve] == [2, 4]
    assert curve[-1]["flops"] == pytest.approx(summary["train_flops"]) and curve[0]["flops"] > 0
    assert curve[-1]["images_encoded"] == 32 and curve[-1]["captions_encoded"] == 160
    assert 0 < curve[0]["train_wall_s"] <= curve[1]["train_wall_s"] == pytest.approx(summary["train_wall_s"])
    assert curve[-1]["mR_t2i"] == pytest.approx(summary["val"]["mR_t2i"])


def test_one_loader_for_steps_and_the_final_model(trained):
    _, out, _ = trained
    run = Run(out)
    final, _ = run.load_model("final")
    last, _ = run.load_model(4)
    early, _ = run.load_model(2)
    assert not final.training and not last.training
    for key, value in final.state_dict().items():
        assert torch.equal(value, last.state_dict()[key]), key  # the last checkpoint is the final model
    assert not torch.equal(early.state_dict()["visual.conv1.weight"], final.state_dict()["visual.conv1.weight"])
    agg_final, agg_last = run.aggregator("final"), run.aggregator(4)
    for key, value in agg_final.state_dict().items():
        assert torch.equal(value, agg_last.state_dict()[key])
    with pytest.raises(RunFolderError, match=r"steps \[2, 4\]"):
        run.load_model(3)
    with pytest.raises(ValueError):
        run.load_model("latest")


def test_aggregator_of_a_step_without_the_final_file_comes_from_the_config(trained, tmp_path):
    _, out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "aggregator.safetensors").unlink()
    rebuilt, original = Run(copy).aggregator(2), Run(out).aggregator(2)
    assert type(rebuilt) is type(original)
    for key, value in original.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key])


def test_evaluate_goes_through_the_one_door(trained):
    from wfa.eval import evaluate

    shards, out, _ = trained
    run = Run(out)
    report = run.evaluate("test", 2, shards=shards)
    model, tokenizer = run.load_model(2)
    direct = evaluate(model, tokenizer, shards, "test", run.aggregator(2))
    assert report.metrics == pytest.approx(direct.metrics)
    assert report.aggregator == "attention" and "agg_mR_i2t" in report.metrics
    assert Run(out).evaluate("val").metrics["mR_t2i"] == pytest.approx(run.val_curve()[-1]["mR_t2i"])


def test_hostile_files_in_a_run_folder_never_run_and_name_the_file(trained, tmp_path):
    _, out, _ = trained
    assert_payload_is_live(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    marker = tmp_path / "pwned"
    state = torch.load(copy / "model_final.pt", weights_only=True)
    torch.save({**state, "evil": Payload(marker)}, copy / "model_final.pt")
    torch.save({"format": "wfa-checkpoint", "step": Payload(marker)}, copy / "checkpoints" / "step_000002.pt")
    with pytest.raises(CheckpointError, match="model_final.pt"):
        Run(copy).load_model("final")
    with pytest.raises(CheckpointError, match="step_000002.pt"):
        Run(copy).load_model(2)
    assert not marker.exists()
    (copy / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(RunFolderError, match="config.yaml"):
        Run(copy).config
    with pytest.raises(RunFolderError, match="no config.yaml"):
        Run.open(tmp_path)
    assert Run.holding(tmp_path / "pwned") is None and Run.holding(out / "model_final.pt").folder == out.resolve()


def test_metrics_reader_skips_torn_and_foreign_lines(tmp_path):
    run = Run(tmp_path)
    assert run.metrics() == [] and run.val_curve() == [] and run.summary() is None
    run.metrics_path.write_text('{"event": "val", "step": 2, "train_wall_s": 1.0, "val/mR_t2i": 5.0}\n[1, 2]\n'
                                '{"event": "end", "steps": 2, "flops_per_step": 10.0}\n{"step": 3, "lo')
    assert [r.get("event") for r in run.metrics()] == ["val", "end"]
    (point,) = run.val_curve()
    assert point["mR_t2i"] == 5.0 and point["flops"] == 20.0  # a record without FLOPs: step x the mean per step
    assert json.dumps(point)


def test_run_is_a_door_of_wfa():
    assert wfa.Run is Run and "Run" in wfa.__all__
