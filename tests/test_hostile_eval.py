"""Hostile input to ``wfa eval``: crafted model and aggregator files, broken or foreign checkpoints, bad
shards, splits and output paths. Every case checks the exit code, the one-line message, that no payload
ran and that no report was written."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from hostile import Payload, assert_payload_is_live, error_line, wfa_cli
from wfa.data.synthetic import SyntheticReader
from wfa.data.writer import write_shards


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, Path]:
    """(shards, run folder) of a 2-step attention run on 32 px synthetic images."""
    from wfa.config import load_config
    from wfa.trainer import train

    root = tmp_path_factory.mktemp("hostile-eval")
    shards = root / "shards"
    write_shards(SyntheticReader(num_images=40, seed=0, image_size=32), shards, shard_size=8, progress=False)
    out = root / "run"
    train(load_config(None, [f"data.shards={shards}", f"out={out}", "model.name=wfa-vit-micro", "data.image_size=32",
                             "train.batch_size=8", "train.steps=2", "train.tensorboard=false", "method=attention",
                             "train.checkpoint_every=1"]))
    return shards, out


@pytest.fixture()
def run_copy(run_dir, tmp_path) -> tuple[Path, Path]:
    shards, out = run_dir
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return shards, copy


def evaluate(capsys, shards: Path, *argv: object) -> tuple[int, str]:
    return wfa_cli(capsys, "eval", "--shards", shards, "--batch-size", "16", *argv)


def test_eval_of_a_good_run_works_without_the_random_init_notice(run_dir, tmp_path, capsys, caplog):
    """Issue 11: `wfa eval` logged "Model initialized randomly" after loading a checkpoint exactly."""
    shards, out = run_dir
    with caplog.at_level(logging.WARNING):
        code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json")
    assert code == 0, err
    assert "initialized randomly" not in caplog.text and "initialized randomly" not in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["aggregator"].endswith("aggregator.safetensors")
    assert any(key.startswith("agg_") for key in report["test"])  # the aggregator was used


@pytest.mark.parametrize("where", ["checkpoint", "aggregator beside", "aggregator option"])
def test_hostile_crafted_pickles_never_run(run_copy, tmp_path, capsys, where):
    """Issue 11 #1: a pickled payload in aggregator.pt (loaded automatically) ran, and eval exited 0."""
    assert_payload_is_live(tmp_path)
    shards, out = run_copy
    marker = tmp_path / "pwned"
    crafted = {"checkpoint": out / "model_final.pt", "aggregator beside": out / "aggregator.safetensors",
               "aggregator option": tmp_path / "aggregator.pt"}[where]
    if where == "checkpoint":
        state = torch.load(crafted, weights_only=True)
        torch.save({**state, "evil": Payload(marker)}, crafted)
    else:
        torch.save({"name": "mean", "dim": 64, "kwargs": {}, "state_dict": {}, "evil": Payload(marker)}, crafted)
    extra = ["--aggregator", crafted] if where == "aggregator option" else []
    code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json", *extra)
    assert code == 1 and crafted.name in error_line(err, "eval")
    assert not marker.exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("case", ["zero bytes", "truncated", "text", "training checkpoint", "wrong architecture",
                                  "directory", "missing", "a list"])
def test_hostile_unusable_model_files(run_copy, tmp_path, capsys, case):
    """Issue 11 #11: wrong-architecture, truncated, zero-byte, text and step_*.pt checkpoints gave tracebacks."""
    shards, out = run_copy
    model = out / "model_final.pt"
    extra: list[object] = []
    if case == "zero bytes":
        model.write_bytes(b"")
    elif case == "truncated":
        model.write_bytes(model.read_bytes()[:3000])
    elif case == "text":
        model.write_text("not a model\n")
    elif case == "training checkpoint":
        model = out / "checkpoints" / "step_000002.pt"
    elif case == "wrong architecture":
        extra = ["--model", "wfa-vit-tiny"]
    elif case == "directory":
        model.unlink()
        model.mkdir()
    elif case == "missing":
        model.unlink()
    else:
        torch.save([1, 2, 3], model)
    code, err = evaluate(capsys, shards, "--checkpoint", model, "--out", tmp_path / "r.json", *extra)
    line = error_line(err, "eval")
    assert code == 1 and model.name in line
    expected = {"training checkpoint": "training checkpoint", "wrong architecture": "does not fit",
                "zero bytes": "empty", "a list": "not a model state dict"}.get(case, "")
    assert expected in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("case", ["wrong dim", "not safetensors", "unknown name", "no metadata"])
def test_hostile_unusable_aggregator_files(run_copy, tmp_path, capsys, case):
    from safetensors.torch import save_file

    from wfa.aggregation import create_aggregator, save_aggregator

    shards, out = run_copy
    agg = out / "aggregator.safetensors"
    if case == "wrong dim":
        save_aggregator(create_aggregator("attention", 32), agg)
    elif case == "not safetensors":
        agg.write_bytes(b"\x00" * 64)
    elif case == "unknown name":
        save_file({}, str(agg), metadata={"wfa_aggregator": json.dumps({"name": "evil", "dim": 8, "kwargs": {}})})
    else:
        save_file({"w": torch.zeros(2)}, str(agg))
    code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json")
    assert code == 1 and "aggregator.safetensors" in error_line(err, "eval")
    assert not (tmp_path / "r.json").exists()


def test_hostile_out_is_a_directory_is_found_before_evaluating(run_dir, tmp_path, capsys, monkeypatch):
    """Issue 11 #11: an --out directory was found only after the whole evaluation."""
    import wfa.eval

    shards, out = run_dir
    monkeypatch.setattr(wfa.eval, "evaluate", lambda *a, **k: pytest.fail("evaluation started"))
    code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", tmp_path)
    assert code == 2 and "is a folder" in error_line(err, "eval")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", blocker / "r.json")
    assert code == 2 and "cannot create files" in error_line(err, "eval")


@pytest.mark.parametrize("case", ["split", "no shards", "not shards", "batch size"])
def test_hostile_bad_data_arguments(run_dir, tmp_path, capsys, case):
    shards, out = run_dir
    args: list[object] = ["--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json"]
    if case == "split":
        args += ["--split", "tset"]
    elif case == "no shards":
        shards = tmp_path / "nowhere"
    elif case == "not shards":
        shards = tmp_path / "fake"
        shards.mkdir()
        (shards / "index.json").write_bytes(b"\xff\xfe not json")
    else:
        args += ["--batch-size", "0"]
    code, err = evaluate(capsys, shards, *args)
    line = error_line(err, "eval")
    assert code == 2 and {"split": "'tset'", "no shards": "nowhere", "not shards": "index.json",
                          "batch size": "--batch-size"}[case] in line
    assert not (tmp_path / "r.json").exists()


def test_hostile_no_model_given(run_dir, tmp_path, capsys):
    shards, _ = run_dir
    code, err = evaluate(capsys, shards, "--out", tmp_path / "r.json")
    assert code == 2 and "--checkpoint" in error_line(err, "eval")


def test_hostile_broken_run_config_beside_the_checkpoint(run_copy, tmp_path, capsys):
    shards, out = run_copy
    (out / "config.yaml").write_text("model: [unclosed\n")
    code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json")
    assert code == 1 and "config.yaml" in error_line(err, "eval")
