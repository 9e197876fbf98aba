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


# -- round two (issue 20) ------------------------------------------------------------------------------------------

def test_hostile_aggregator_whose_size_product_is_huge_is_refused_unallocated(run_copy, tmp_path, capsys):
    """Issue 20 #3: each size was capped at 65,536 but not their product: a tiny aggregator.safetensors asking for
    attention at dim 65,536 x hidden 16,384 allocated ~5 GB for 17 s before it was refused (and `wfa eval` picks
    the file up from beside the checkpoint). The parameter count is now found on the meta device first."""
    import resource
    import time

    from safetensors.torch import save_file

    shards, out = run_copy
    spec = {"name": "attention", "dim": 65536, "kwargs": {"hidden_dim": 16384}}
    save_file({"proj.weight": torch.zeros(2, 2), "proj.bias": torch.zeros(2), "query": torch.zeros(2)},
              str(out / "aggregator.safetensors"), metadata={"wfa_aggregator": json.dumps(spec)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    code, err = evaluate(capsys, shards, "--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json")
    line = error_line(err, "eval")
    assert code == 1 and "aggregator.safetensors" in line and "parameters" in line
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1_000_000  # kB: far below the 4 GB asked
    assert not (tmp_path / "r.json").exists()


@pytest.fixture(scope="module")
def ms_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-eval-ms") / "shards"
    write_shards(SyntheticReader(num_images=20, seed=0, image_size=32, multispectral=True), out, shard_size=8,
                 progress=False)
    return out


def test_hostile_rgb_checkpoint_on_multispectral_shards_needs_adapt_bands(run_dir, ms_shards, tmp_path, capsys):
    """Issue 20 #4: `wfa eval` scored an RGB checkpoint on 12-band shards (it rebuilt the first layer silently and
    exited 0 with a full report). A band-count mismatch is an error now unless --adapt-bands asks for it."""
    _, out = run_dir
    report = tmp_path / "r.json"
    code, err = evaluate(capsys, ms_shards, "--checkpoint", out / "model_final.pt", "--out", report,
                         "--no-aggregator")
    line = error_line(err, "eval")
    assert code == 2 and "3 input channels" in line and "12" in line and "--adapt-bands" in line
    assert not report.exists()
    code, err = evaluate(capsys, ms_shards, "--checkpoint", out / "model_final.pt", "--out", report,
                         "--no-aggregator", "--adapt-bands")
    assert code == 0, err
    assert json.loads(report.read_text())["model"]["adapted_bands"] is True


def test_hostile_eval_split_that_does_not_decode_is_found_first(run_dir, tmp_path, capsys):
    """Issue 20 #1 for `wfa eval`: a split whose images all fail to decode ended in a ValueError traceback after
    the model was loaded; one sample per shard is decoded before anything else."""
    from hostile import rewrite_members

    shards, out = run_dir
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    for shard in sorted(copy.glob("test-*.tar")):
        rewrite_members(shard, lambda name, data: data if name.endswith(".json") else b"garbage")
    code, err = evaluate(capsys, copy, "--checkpoint", out / "model_final.pt", "--out", tmp_path / "r.json")
    line = error_line(err, "eval")
    assert code == 1 and "test-000000.tar" in line and "does not decode" in line
