"""The training loop: every method learns, exact resume, a real 2-process run, multispectral input.

Tiny model (``wfa-vit-micro``, 32 px) on small synthetic shards written by ``wfa.data.writer``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import shared_data
from wfa.aggregation import load_aggregator
from wfa.config import load_config
from wfa.methods import create_method, list_methods
from wfa.optim import param_groups
from wfa.run import Run
from wfa.trainer import train

REPO = Path(__file__).resolve().parents[1]
MODEL = "wfa-vit-micro"


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 synthetic images (32 train / 4 val / 4 test), 4 per shard, 5 captions each."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    out = tmp_path_factory.mktemp("shards") / "synthetic"
    index = write_shards(SyntheticReader(num_images=40, seed=0, image_size=32), out, shard_size=4, progress=False)
    assert index["splits"]["train"]["num_samples"] == 32 and len(index["splits"]["train"]["shards"]) == 8
    return out


@pytest.fixture(scope="module")
def one_batch_shards(tmp_path_factory) -> Path:
    """8 synthetic training images in one shard: with batch 8 every step sees the same images."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    out = tmp_path_factory.mktemp("shards") / "one_batch"
    write_shards(SyntheticReader(num_images=8, seed=1, image_size=32, splits=(1.0, 0.0, 0.0)), out, shard_size=8,
                 progress=False)
    return out


def overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.shards={shards}", f"out={out}", f"model.name={MODEL}", "data.image_size=32",
            "train.batch_size=8", "train.log_every=1", "train.tensorboard=false", "train.warmup_steps=0",
            "data.shuffle=16", *extra]


def all_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_records(out: Path) -> list[dict]:
    return [r for r in all_records(out) if "event" not in r]


# captions encoded per image and step on the one-batch shards (5 distinct captions per image); None: random
CAPTIONS_PER_IMAGE = {"pairs": 1, "pairs-dedup": 1, "random": 1, "random-bleu": 1, "mean": 5, "bleu": 5,
                      "attention": 5, "multipos": 5, "wmultipos": 5, "hybrid": 5, "mean-subset": None,
                      "bleu-subset": None, "attention-subset": None}


def test_every_registered_method_is_tested():
    assert sorted(CAPTIONS_PER_IMAGE) == list_methods()


@pytest.mark.parametrize("method", sorted(CAPTIONS_PER_IMAGE))
def test_each_method_trains_and_loss_goes_down(method, one_batch_shards, tmp_path):
    out = tmp_path / method
    result = train(load_config(None, overrides(one_batch_shards, out, f"method={method}", "train.steps=12",
                                               "train.lr=2e-3", "data.val_split=train")))
    losses = [r["loss"] for r in step_records(out)]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"{method}: loss {first:.3f} -> {last:.3f}"

    # counters: 12 steps x 8 images; the aggregating methods and multipos encode all 5 captions, the
    # subset methods each caption with probability 0.5 (at least one per image)
    assert result["steps"] == 12 and result["images_seen"] == 96
    per_image = CAPTIONS_PER_IMAGE[method]
    expected = 96 * per_image if per_image else result["captions_seen"]
    if per_image is None:
        assert 96 < result["captions_seen"] < 96 * 4, result["captions_seen"]  # mean 2.5+ per image
    assert result["captions_seen"] == expected
    aggregated = create_method(method).aggregator is not None
    assert set(result["val"]) >= {"t2i_r1", "i2t_r1", "mR", "mR_t2i"}
    assert ("agg_mR_i2t" in result["val"]) == aggregated
    (val,) = [r for r in all_records(out) if r.get("event") == "val"]
    assert (val["images_seen"], val["captions_seen"]) == (96, expected)
    assert 0 < val["train_wall_s"] == result["train_wall_s"] <= result["wall_s"]
    assert val["val/mR"] == result["val"]["mR"]
    assert Path(result["model_final"]).is_file() and (out / "config.yaml").is_file()
    assert load_config(out / "config.yaml").method == method  # the resolved config is saved
    assert Path(result["aggregator"]).is_file() if aggregated else result["aggregator"] is None
    if method == "attention":
        records = step_records(out)
        assert records[0]["agg_dist_uniform"] == pytest.approx(0.0, abs=1e-7)  # starts exactly uniform
        assert records[-1]["agg_dist_uniform"] > 1e-6  # and moves away from uniform as it learns
    if method == "bleu":
        assert all(0 < r["agg_entropy"] <= 1 for r in step_records(out))


def test_final_model_loads_with_open_clip(shards, tmp_path):
    import open_clip

    import wfa.model  # registers the wfa model configs with open_clip

    result = train(load_config(None, overrides(shards, tmp_path / "run", "method=mean", "train.steps=2")))
    model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=result["model_final"])
    trained = torch.load(Path(result["checkpoint"]), weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    agg = load_aggregator(result["aggregator"])
    assert agg.spec["name"] == "mean" and agg.dim == wfa.model.create_model(MODEL)[0].text_projection.shape[1]


@pytest.mark.parametrize("method", ["attention", "random", "bleu-subset", "pairs-dedup", "wmultipos", "hybrid"])
def test_resume_gives_the_same_weights(method, shards, tmp_path):
    """8 steps straight vs 4 steps, a fresh process-state from the step-4 checkpoint, 4 more (exact)."""
    # batch 6 of 32 images: 5 steps per epoch, so the resume is mid-epoch and crosses an epoch boundary
    # log_every=3 does not divide checkpoint_every=4: the counters must still be exact after resume
    common = (f"method={method}", "train.steps=8", "train.batch_size=6", "train.warmup_steps=2", "train.log_every=3")
    straight = train(load_config(None, overrides(shards, tmp_path / "a", *common)))
    out = tmp_path / "b"
    train(load_config(None, overrides(shards, out, *common, "train.checkpoint_every=4")))
    # keep only the step-4 checkpoint: as if the run had been stopped after step 4
    (out / "checkpoints" / "step_000008.pt").unlink()
    assert Run(out).find_checkpoint("latest").name == "step_000004.pt"
    resumed = train(load_config(None, overrides(shards, out, *common, "train.checkpoint_every=4", "resume=latest")))

    starts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"event": "start"' in line]
    assert starts[-1]["step"] == 4 and starts[-1]["resumed_from"].endswith("step_000004.pt")
    # 48 images cross the epoch boundary; the pair views' epochs are longer (one sample per caption)
    assert resumed["steps_run"] == 4 and resumed["epoch"] == straight["epoch"]
    assert straight["epoch"] == (1 if create_method(method).view == "images" else 0)
    assert resumed["images_seen"] == straight["images_seen"] == 48
    a = torch.load(straight["model_final"])
    b = torch.load(resumed["model_final"])
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], abs=1e-6)


def test_time_budget_stops_the_loop_and_shapes_the_schedule(shards, tmp_path):
    """train.max_minutes: the loop ends once its training clock passes the budget; the cosine follows the clock."""
    result = train(load_config(None, overrides(shards, tmp_path / "t", "method=mean", "train.max_minutes=0.1",
                                               "train.warmup_steps=1", "train.log_every=1")))
    records = step_records(tmp_path / "t")
    assert result["steps"] == len(records) >= 2 and 6.0 <= result["train_wall_s"] < 6.0 + 5.0
    lrs = [r["lr"] for r in records]
    assert lrs[1] > lrs[-1] and lrs == sorted(lrs, reverse=True)  # decays monotonically after warm-up
    capped = train(load_config(None, overrides(shards, tmp_path / "c", "train.max_minutes=5", "train.steps=3")))
    assert capped["steps"] == 3  # an explicit step count still caps a budgeted run


def test_flops_are_counted_on_the_chosen_steps(shards, tmp_path):
    common = ("train.steps=4", "train.count_flops_every=2", "data.val_split=val", "train.eval_every=2")
    pairs = train(load_config(None, overrides(shards, tmp_path / "p", "method=pairs", *common)))
    bleu = train(load_config(None, overrides(shards, tmp_path / "b", "method=bleu", *common)))
    assert pairs["flops_per_step"] > 0 and bleu["flops_per_step"] > pairs["flops_per_step"]  # 5 captions vs 1
    vals = [r for r in all_records(tmp_path / "b") if r.get("event") == "val"]
    assert [v["flops_per_step"] is not None for v in vals] == [True, True]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_augmentation_is_exact(workers, shards, tmp_path):
    """Random crops and flips, with and without worker processes, resumed mid-way through the second epoch
    (5 steps per epoch): the same weights as the uninterrupted run."""
    common = ("method=random", "train.steps=9", "train.batch_size=6", "train.warmup_steps=2", "data.augment=true",
              f"data.num_workers={workers}", "train.checkpoint_every=7")
    straight = train(load_config(None, overrides(shards, tmp_path / "a", *common)))
    out = tmp_path / "b"
    train(load_config(None, overrides(shards, out, *common)))
    (out / "checkpoints" / "step_000009.pt").unlink()
    resumed = train(load_config(None, overrides(shards, out, *common, "resume=latest")))
    assert resumed["steps_run"] == 2 and resumed["epoch"] == straight["epoch"] == 1
    a, b = torch.load(straight["model_final"]), torch.load(resumed["model_final"])
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"


def test_resume_latest_without_checkpoint_starts_fresh(shards, tmp_path):
    result = train(load_config(None, overrides(shards, tmp_path / "r", "train.steps=1", "resume=latest")))
    assert result["steps"] == 1 and result["steps_run"] == 1


def test_grad_accum_and_bf16_run(shards, tmp_path):
    """bf16 in its own process: accelerate keeps one mixed precision per process (this one runs fp32)."""
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "wfa.trainer", *overrides(shards, out, "method=bleu", "train.steps=2",
                                                          "train.batch_size=4", "train.grad_accum=2",
                                                          "train.precision=bf16")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = all_records(out)[-1]
    assert end["event"] == "end" and end["images_seen"] == 16 and torch.isfinite(torch.tensor(end["final_loss"]))
    # in this process (fp32 runs before), another precision is a clear error, not accelerate's ValueError
    from wfa.errors import TrainError

    train(load_config(None, overrides(shards, tmp_path / "fp32", "train.steps=1")))
    with pytest.raises(TrainError, match="one precision per process"):
        train(load_config(None, overrides(shards, tmp_path / "bf16", "train.steps=1", "train.precision=bf16")))


def test_auto_precision_is_decided_once_per_run(shards, tmp_path, monkeypatch):
    """train.precision=auto trains at the machine's fastest precision, saves what it chose, and a resumed run keeps
    it even where the machine would now choose otherwise (fp32 both times here: one precision per process)."""
    import wfa.peak

    out = tmp_path / "r"
    monkeypatch.setattr(wfa.peak, "fastest_precision", lambda device: "no")
    first = train(load_config(None, overrides(shards, out, "train.steps=1", "train.checkpoint_every=1",
                                              "train.precision=auto")))
    assert first["precision"] == "no" and Run.open(out).config.train.precision == "no"
    monkeypatch.setattr(wfa.peak, "fastest_precision", lambda device: "bf16")
    resumed = train(load_config(None, overrides(shards, out, "train.steps=2", "train.checkpoint_every=1",
                                                "train.precision=auto", "resume=latest")))
    assert resumed["precision"] == "no" and resumed["steps_run"] == 1
    (out / "config.yaml").write_text("train: [unreadable")  # then the machine decides afresh
    monkeypatch.setattr(wfa.peak, "fastest_precision", lambda device: "no")
    again = train(load_config(None, overrides(shards, out, "train.steps=3", "train.precision=auto", "resume=latest")))
    assert again["precision"] == "no" and again["steps_run"] == 1


def test_fastest_precision_follows_the_hardware(monkeypatch):
    import wfa.peak

    cpu = torch.device("cpu")
    for flags, expected in (({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"), ({"avx2", "fma"}, "no"),
                            (set(), "no")):
        monkeypatch.setattr(wfa.peak, "cpu_flags", lambda flags=flags: flags)
        assert wfa.peak.fastest_precision(cpu) == expected
        assert wfa.peak.resolve_precision("auto", cpu) == expected
    assert wfa.peak.resolve_precision("bf16", cpu) == "bf16" and wfa.peak.resolve_precision("no", cpu) == "no"
    gpu = torch.device("cuda")  # native bf16 from compute capability 8.0 (Ampere) on; emulated bf16 is slower
    monkeypatch.setattr(torch.version, "hip", None)
    for capability, expected in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "no")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, capability=capability: capability)
        assert wfa.peak.fastest_precision(gpu) == expected


def test_two_processes_match_one(shards, tmp_path):
    """torchrun with 2 CPU ranks (gloo) and batch 4 each == 1 process with batch 8: same first-step loss."""
    # no shuffling: 1 process reads shards 0+1 in its first batch; 2 ranks read shard 0 and shard 1
    common = ("method=bleu", "train.steps=2", "data.shuffle=0")
    single = tmp_path / "single"
    train(load_config(None, overrides(shards, single, *common)))
    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with socket.socket() as free:  # a free port: several test runs may share the machine
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "wfa.trainer", *overrides(shards, double, *common, "train.batch_size=4")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    start = json.loads((double / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["world_size"] == 2
    assert sorted(r["rank"] for r in start["ranks"]) == [0, 1]
    assert len({r["pid"] for r in start["ranks"]}) == 2  # two real processes
    one, two = step_records(single), step_records(double)
    assert len(one) == len(two) == 2
    assert two[0]["images_seen"] == one[0]["images_seen"] == 8  # the same global batch
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], abs=1e-5)
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], abs=1e-4)  # and the same update


def test_multispectral_bigearthnet_trains(tmp_path):
    """The 3 co-registered S1+S2 BigEarthNet v1 patches (14 bands) train a 14-channel model."""
    from wfa.data.bigearthnet import BigEarthNetReader
    from wfa.data.writer import write_shards
    from wfa.model import create_model

    ben = shared_data("bigearthnet-v1-tiny")
    reader = BigEarthNetReader(root_s2=ben / "S2", root_s1=ben / "S1", mode="s1s2")
    index = write_shards(reader, tmp_path / "ben", shard_size=4, skip_bad=True, progress=False)
    assert index["modality"] == "multispectral" and len(index["bands"]) == 14 and index["written"] == 3
    out = tmp_path / "run"
    result = train(load_config(None, overrides(tmp_path / "ben", out, "method=bleu", "train.steps=10",
                                               "train.batch_size=3", "train.lr=2e-3")))
    assert result["in_chans"] == 14 and result["bands"] == index["bands"]
    saved = load_config(out / "config.yaml")  # the resolved config records what the model was built with
    assert saved.model.in_chans == 14 and saved.model.bands == index["bands"]
    losses = [r["loss"] for r in step_records(out)]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    model, _ = create_model(MODEL, pretrained=result["model_final"], image_size=32)
    assert model.visual.conv1.in_channels == 14


def test_cli_config_error_exit_code(tmp_path, capsys):
    from wfa.trainer import main

    assert main(["train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err


def test_wfa_train_subcommand_reports_config_errors(capsys):
    from wfa.cli import main

    assert main(["train", "method=clip"]) == 2
    assert "method='clip' is not one of" in capsys.readouterr().err



def test_aggregator_parameters_get_their_own_learning_rate():
    from wfa.aggregation import create_aggregator
    from wfa.model import ContrastiveModel, create_model

    clip, _ = create_model(MODEL)
    model = ContrastiveModel(clip, create_aggregator("attention", 128))
    groups = param_groups(model, weight_decay=0.2, lr=1e-3, aggregator_lr_scale=10.0)
    agg = {id(p) for p in model.aggregator.parameters()}
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.0), (1e-3, 0.2), (1e-2, 0.0), (1e-2, 0.2)]
    assert [len(g["params"]) for g in groups[2:]] == [2, 1]  # query and bias undecayed; the projection decayed
    assert all(id(p) in agg for g in groups[2:] for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # aggregators without parameters add no group
    assert len(param_groups(ContrastiveModel(clip, create_aggregator("mean", 128)), 0.2, 1e-3, 10.0)) == 2
