"""The image-token levers and the fast path: patch dropout with an unmasked phase, the resolution schedule,
FLOPs per phase, MFU, bf16 and torch.compile, each resume-exact.

Tiny model (``wfa-vit-micro``, 32 px, patch 8: 16 patch tokens) on synthetic shards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wfa.config import ConfigError, load_config
from wfa.model import create_model, set_patch_dropout
from wfa.phases import Phase, Phases
from wfa.trainer import train

REPO = Path(__file__).resolve().parents[1]
MODEL = "wfa-vit-micro"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 synthetic images (32 train / 4 val / 4 test), 5 captions each."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    out = tmp_path_factory.mktemp("shards") / "synthetic"
    write_shards(SyntheticReader(num_images=40, seed=0, image_size=32), out, shard_size=8, progress=False)
    return out


@pytest.fixture(autouse=True)
def _peak_cache(tmp_path, monkeypatch):
    """The measured-peak cache of these runs lives in the test's folder, not in the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.shards={shards}", f"out={out}", f"model.name={MODEL}", "data.image_size=32",
            "train.batch_size=8", "train.log_every=1", "train.tensorboard=false", "train.warmup_steps=0",
            "data.shuffle=16", "method=multipos", *extra]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_difference(a: Path, b: Path) -> float:
    first, second = torch.load(a), torch.load(b)
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


def test_peak_probe_is_cached_and_leaves_the_global_rng_alone(tmp_path):
    """The matmul probe runs once per machine and draws from its own generator: a run that measures the peak and
    one that reads it from the cache start from the same random state (same initial weights)."""
    from wfa.peak import cache_file, peak_flops

    state = torch.get_rng_state()
    first = peak_flops(torch.device("cpu"), "bf16")
    assert torch.equal(torch.get_rng_state(), state)
    assert first > 0 and cache_file().is_file() and str(tmp_path) in str(cache_file())
    assert peak_flops(torch.device("cpu"), "bf16") == first  # from the cache


def test_phases_follow_progress():
    phases = Phases(64, low_res_size=32, low_res_fraction=0.5, patch_dropout=0.5, unmasked_fraction=0.25)
    assert [phases.at(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == [
        Phase(32, 0.5), Phase(32, 0.5), Phase(64, 0.5), Phase(64, 0.5), Phase(64, 0.0), Phase(64, 0.0)]
    assert Phase(32, 0.5).name == "32px+pd0.5" and Phase(64, 0.0).name == "64px"
    assert not Phases(64).scheduled and Phases(64).at(0.3) == Phase(64, 0.0)


@pytest.mark.parametrize("bad", ["model.patch_dropout=1.0", "train.unmasked_fraction=1.5", "data.low_res_size=32",
                                 "data.low_res_fraction=0.5", "data.low_res_size=0"])
def test_lever_settings_are_checked(bad, tmp_path):
    with pytest.raises(ConfigError):
        load_config(None, [f"out={tmp_path}", "data.image_size=32", bad]).validate()


def test_evaluation_never_drops_patches():
    """A model built with patch dropout gives, in eval mode, exactly the features of the same weights without it;
    in training mode it drops (different features) until its dropout is set to 0."""
    dropping, _ = create_model(MODEL, image_size=32, patch_dropout=0.5)
    plain, _ = create_model(MODEL, image_size=32)
    plain.load_state_dict(dropping.state_dict())
    images = torch.randn(4, 3, 32, 32)
    dropping.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(dropping.encode_image(images), plain.encode_image(images))
        dropping.train()
        assert not torch.allclose(dropping.encode_image(images), plain.encode_image(images))
        set_patch_dropout(dropping, 0.0)
        plain.train()
        assert torch.equal(dropping.encode_image(images), plain.encode_image(images))
    with pytest.raises(ValueError, match="PatchDropout"):
        set_patch_dropout(plain, 0.5)


def test_dropped_patch_tokens_are_not_computed():
    """Image tower forward + backward with half the 16 patch tokens dropped costs ~9/17 of the full one (CLS kept)."""
    from torch.utils.flop_counter import FlopCounterMode

    def image_flops(model: torch.nn.Module) -> int:
        with FlopCounterMode(display=False) as counter:
            model.encode_image(torch.randn(8, 3, 32, 32)).sum().backward()
        return counter.get_total_flops()

    dropping, _ = create_model(MODEL, image_size=32, patch_dropout=0.5)
    plain, _ = create_model(MODEL, image_size=32)
    full = image_flops(plain.train())
    assert image_flops(dropping.train()) < 0.6 * full
    assert image_flops(dropping.eval()) == full


def test_patch_dropout_computes_fewer_tokens_and_unmasks_at_the_end(shards, tmp_path):
    """Dropped patch tokens are not computed: the masked phase's FLOPs per step are below the unmasked phase's
    and below a run without dropout; the last unmasked_fraction trains at full cost; both are accounted."""
    common = ("train.steps=4", "train.count_flops_every=1")
    plain = train(load_config(None, overrides(shards, tmp_path / "plain", *common)))
    lever = train(load_config(None, overrides(shards, tmp_path / "pd", *common, "model.patch_dropout=0.5",
                                              "train.unmasked_fraction=0.5")))
    phases = lever["flops_phases"]
    assert {name: p["steps"] for name, p in phases.items()} == {"32px+pd0.5": 2, "32px": 2}
    assert phases["32px+pd0.5"]["counted"] < phases["32px"]["counted"]  # text FLOPs dominate the micro model
    assert lever["train_flops"] == pytest.approx(phases["32px+pd0.5"]["counted"] + phases["32px"]["counted"])
    assert plain["train_flops"] == pytest.approx(4 * plain["flops_per_step"])
    # achieved FLOP/s against the measured peak, in the log records and the summary
    logged = [r for r in records(tmp_path / "pd") if "event" not in r]
    assert all(r["gflops_per_s"] > 0 and 0 < r["mfu"] for r in logged)
    assert lever["peak_flops"] > 0 and lever["mfu"] > 0
    assert (tmp_path / "cache" / "wfa" / "peak_flops.json").is_file()


def test_patch_dropout_resume_is_exact(shards, tmp_path):
    """Patch dropout draws from the checkpointed torch RNG: 3 + 3 steps give the 6-step weights."""
    common = ("train.steps=6", "model.patch_dropout=0.5", "train.unmasked_fraction=0.34", "train.checkpoint_every=3",
              "train.keep_checkpoints=0")
    straight = train(load_config(None, overrides(shards, tmp_path / "a", *common)))
    out = tmp_path / "b"
    train(load_config(None, overrides(shards, out, *common)))
    (out / "checkpoints" / "step_000006.pt").unlink()
    resumed = train(load_config(None, overrides(shards, out, *common, "resume=latest")))
    assert resumed["steps_run"] == 3
    assert max_difference(Path(straight["model_final"]), Path(resumed["model_final"])) <= 1e-6


def test_resolution_schedule_switches_and_resumes_exactly(shards, tmp_path):
    """16 px for the first half, then 32 px with open_clip's resized positional embeddings; a run resumed before
    the switch and one resumed after it end with the weights of the uninterrupted run."""
    common = ("train.steps=6", "data.low_res_size=16", "data.low_res_fraction=0.5", "train.checkpoint_every=2",
              "train.keep_checkpoints=0", "train.count_flops_every=2", "data.val_split=val", "train.eval_every=2")
    straight = train(load_config(None, overrides(shards, tmp_path / "a", *common)))
    events = records(tmp_path / "a")
    assert [(r["step"], r["from"], r["to"]) for r in events if r.get("event") == "resolution"] == [(3, 16, 32)]
    assert [r["image_size"] for r in events if r.get("event") == "val"] == [16, 32, 32]
    final = torch.load(straight["model_final"])
    assert final["visual.positional_embedding"].shape[0] == (32 // 8) ** 2 + 1
    phases = straight["flops_phases"]
    assert {name: p["steps"] for name, p in phases.items()} == {"16px": 3, "32px": 3}
    assert phases["16px"]["counted"] / phases["16px"]["counted_steps"] < \
        phases["32px"]["counted"] / phases["32px"]["counted_steps"]
    for keep in (2, 4):  # resumed before the switch (step 2) and after it (step 4)
        out = tmp_path / f"r{keep}"
        train(load_config(None, overrides(shards, out, *common)))
        for path in (out / "checkpoints").glob("step_*.pt"):
            if int(path.stem.split("_")[1]) > keep:
                path.unlink()
        resumed = train(load_config(None, overrides(shards, out, *common, "resume=latest")))
        assert resumed["steps_run"] == 6 - keep and resumed["image_size"] == 32
        assert max_difference(Path(straight["model_final"]), Path(resumed["model_final"])) <= 1e-6
        assert resumed["train_flops"] == pytest.approx(straight["train_flops"], rel=1e-6)


FAST_PATH = """
import json, sys, torch
from pathlib import Path
from wfa.config import load_config
from wfa.trainer import train
torch.set_num_threads(1)
shards, out, extra = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
common = [f"data.shards={shards}", f"model.name={MODEL}", "data.image_size=32", "train.batch_size=8",
          "train.tensorboard=false", "data.shuffle=16", "method=multipos", "train.steps=4", "train.checkpoint_every=2",
          "train.precision=bf16", "train.count_flops_every=2", *extra]
straight = train(load_config(None, [*common, f"out={out / 'a'}"]))
train(load_config(None, [*common, f"out={out / 'b'}"]))
(out / "b" / "checkpoints" / "step_000004.pt").unlink()
resumed = train(load_config(None, [*common, f"out={out / 'b'}", "resume=latest"]))
a, b = torch.load(straight["model_final"]), torch.load(resumed["model_final"])
print(json.dumps({"worst": max((a[k] - b[k]).abs().max().item() for k in a), "keys": sorted(a),
                  "loss": straight["final_loss"], "precision": straight["precision"], "compile": straight["compile"],
                  "events": [json.loads(line) for line in (out / "a" / "metrics.jsonl").read_text().splitlines()]}))
""".replace("{MODEL}", MODEL)


@pytest.mark.parametrize("compiled", [False, True], ids=["bf16", "bf16+compile"])
def test_bf16_and_compile_resume_exactly(compiled, shards, tmp_path):
    """bf16 autocast (and torch.compile of the towers; the aot_eager backend keeps the test fast, the inductor
    backend is measured in BENCHMARKS.md) in their own process: 2 + 2 steps give the 4-step weights, the
    checkpoint keeps open_clip's keys, the compile time is recorded."""
    extra = ["train.compile=true", "train.compile_backend=aot_eager"] if compiled else []
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", FAST_PATH, str(shards), str(tmp_path), *extra], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["worst"] <= 1e-6 and result["precision"] == "bf16" and result["compile"] is compiled
    assert torch.isfinite(torch.tensor(result["loss"]))
    plain_keys = sorted(create_model(MODEL, image_size=32)[0].state_dict())
    assert result["keys"] == plain_keys  # compiled towers save under open_clip's own names
    compile_events = [r for r in result["events"] if r.get("event") == "compile"]
    assert len(compile_events) == (1 if compiled else 0)
    assert all(r["first_step_s"] > 0 for r in compile_events)
