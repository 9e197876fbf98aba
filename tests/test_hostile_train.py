"""Hostile input to ``wfa train``: crafted and broken checkpoints, occupied run folders, nonsense optimiser
settings, non-finite losses, damaged shards and mistyped splits. Every case checks the exit code, the
one-line message and what the run folder holds afterwards."""
from __future__ import annotations

import json
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hostile import Payload, assert_payload_is_live, error_line, folder_digest, tar_bytes, wfa_cli
from wfa.data.synthetic import SyntheticReader
from wfa.data.writer import write_shards

MODEL = ("model.name=wfa-vit-micro", "data.image_size=32", "train.batch_size=8", "train.tensorboard=false",
         "train.warmup_steps=0", "train.log_every=1", "data.shuffle=0")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 synthetic images, 32 for training in 8 shards of 4."""
    out = tmp_path_factory.mktemp("hostile-train") / "shards"
    write_shards(SyntheticReader(num_images=40, seed=0, image_size=32), out, shard_size=4, progress=False)
    return out


@pytest.fixture(scope="module")
def finished_run(shards, tmp_path_factory) -> Path:
    """A 4-step mean run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("hostile-train") / "run"
    code = _train_quiet(shards, out, "method=mean", "train.steps=4", "train.checkpoint_every=2")
    assert code == 0
    return out


def _train_quiet(shards: Path, out: Path, *extra: str) -> int:
    from wfa.cli import main

    return main(["train", f"data.shards={shards}", f"out={out}", *MODEL, *extra])


def train(capsys, shards: Path, out: Path, *extra: str) -> tuple[int, str]:
    return wfa_cli(capsys, "train", f"data.shards={shards}", f"out={out}", *MODEL, *extra)


def step_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if "event" not in json.loads(line)]


# -- checkpoints given to --resume are data, not code ----------------------------------------------------------

@pytest.mark.parametrize("where", ["resume path", "latest"])
def test_hostile_crafted_checkpoint_never_runs(shards, finished_run, tmp_path, capsys, where):
    """Issue 11 #1: a pickled payload in a step_*.pt given to --resume ran."""
    assert_payload_is_live(tmp_path)
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    crafted = out / "checkpoints" / "step_000009.pt"
    state = torch.load(out / "checkpoints" / "step_000004.pt", weights_only=True)
    torch.save({**state, "extra": Payload(marker)}, crafted)
    resume = str(crafted) if where == "resume path" else "latest"
    code, err = train(capsys, shards, out, "method=mean", "train.steps=6", f"resume={resume}")
    line = error_line(err, "train")
    assert code == 1 and "step_000009.pt" in line and "Python objects" in line
    assert not marker.exists()


@pytest.mark.parametrize("case", ["zero bytes", "truncated", "text", "random bytes", "model file",
                                  "old format", "wrong method", "directory"])
def test_hostile_unusable_checkpoints_get_a_message(shards, finished_run, tmp_path, capsys, case):
    """Issue 11 #11: truncated, zero-byte or text checkpoints ended in a traceback."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    good = out / "checkpoints" / "step_000004.pt"
    bad = out / "checkpoints" / "step_000009.pt"
    if case == "zero bytes":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "text":
        bad.write_text("hello, I am a checkpoint\n")
    elif case == "random bytes":
        bad.write_bytes(random.Random(0).randbytes(5000))
    elif case == "model file":
        shutil.copy(out / "model_final.pt", bad)
    elif case == "old format":  # what wfa wrote before: numpy's RNG state pickled as an ndarray
        state = torch.load(good, weights_only=True)
        state["rng"] = [{"numpy": np.random.get_state(), "python": random.getstate(), "torch": torch.get_rng_state()}]
        state.pop("format")
        torch.save(state, bad)
    elif case == "wrong method":
        shutil.copy(good, bad)
    else:
        bad.mkdir()
    method = "bleu" if case == "wrong method" else "mean"
    before = (out / "metrics.jsonl").read_bytes()
    code, err = train(capsys, shards, out, f"method={method}", "train.steps=6", f"resume={bad}")
    line = error_line(err, "train")
    assert code == 1 and "step_000009.pt" in line
    expected = {"old format": "start the run again", "model file": "model file", "wrong method": "method=mean",
                "directory": "not a file", "zero bytes": "empty"}.get(case, "")
    assert expected in line
    assert (out / "metrics.jsonl").read_bytes() == before


def test_old_checkpoints_fail_under_weights_only(tmp_path):
    """The reason the old format is refused: its pickled numpy state does not load with weights_only=True."""
    path = tmp_path / "old.pt"
    torch.save({"rng": [{"numpy": np.random.get_state()}]}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


# -- one run per folder ----------------------------------------------------------------------------------------

def test_hostile_rerun_into_a_run_folder_is_refused(shards, finished_run, tmp_path, capsys):
    """Issue 11 #3: re-running without --resume mixed two runs in one folder."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = folder_digest(out)
    code, err = train(capsys, shards, out, "method=mean", "train.steps=2")
    line = error_line(err, "train")
    assert code == 1 and "--resume latest" in line and "another out=" in line and "remove the folder" in line
    assert folder_digest(out) == before


def test_hostile_concurrent_runs_into_one_folder(shards, tmp_path, capsys):
    from wfa.data import publish

    out = tmp_path / "run"
    with publish.folder_lock(out):
        code, err = train(capsys, shards, out, "method=mean", "train.steps=1")
    assert code == 1 and "in use by another wfa run" in error_line(err, "train")
    assert not out.exists()


def test_hostile_resume_has_no_duplicate_steps_and_cleans_orphans(shards, tmp_path, capsys):
    """Issue 11: metrics.jsonl kept duplicate step records after a resume; orphan .tmp files stayed."""
    out = tmp_path / "run"
    assert _train_quiet(shards, out, "method=mean", "train.steps=4", "train.checkpoint_every=2") == 0
    capsys.readouterr()
    (out / "checkpoints" / "step_000004.pt").unlink()  # as if killed after step 4's log, before its checkpoint
    (out / "model_final.pt").unlink()
    orphan = out / "checkpoints" / ".step_000004.pt.tmp12345"
    orphan.write_bytes(b"half a checkpoint")
    code, err = train(capsys, shards, out, "method=mean", "train.steps=4", "train.checkpoint_every=2",
                      "resume=latest")
    assert code == 0, err
    steps = [r["step"] for r in step_records(out)]
    assert steps == [1, 2, 3, 4]
    assert not orphan.exists()
    ends = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"end"' in line]
    assert len(ends) == 1


# -- optimiser settings and non-finite losses ----------------------------------------------------------------------

@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=-0.001", "train.lr=nan", "train.lr=0",
                                      "train.grad_clip=-1", "train.grad_clip=0", "train.beta2=1.5",
                                      "train.eps=0", "train.weight_decay=-1", "train.epochs=inf",
                                      "train.precision=fp16"])
def test_hostile_nonsense_optimiser_settings(shards, tmp_path, capsys, override):
    """Issue 11 #5: lr=inf saved an all-NaN model with exit 0; grad_clip=-1 trained by gradient ascent."""
    if override == "train.precision=fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is valid with CUDA")
    code, err = train(capsys, shards, tmp_path / "run", "method=mean", "train.steps=1", override)
    assert code == 2 and override.split("=")[0] in error_line(err, "train")
    assert not (tmp_path / "run").exists()


def test_hostile_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path, capsys):
    """A finite but absurd lr makes the loss NaN at step 2: stop there, exit 1, the step logged."""
    out = tmp_path / "run"
    code, err = train(capsys, shards, out, "method=mean", "train.steps=6", "train.lr=1e30", "train.grad_clip=null",
                      "train.checkpoint_every=1")
    line = error_line(err, "train")
    assert code == 1 and "non-finite" in line and "step 2" in line and "step_000001.pt" in line
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "non_finite" and records[-1]["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001.pt"]
    assert not (out / "model_final.pt").exists()
    state = torch.load(out / "checkpoints" / "step_000001.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_hostile_non_finite_gradient_stops(shards, tmp_path, capsys, monkeypatch):
    """A NaN gradient with a finite loss (e.g. from a custom loss) stops before the update too."""
    import wfa.methods

    class NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    real = wfa.methods.FusedTextLoss.forward

    def poisoned(self, out, captions):
        return NanGradient.apply(real(self, out, captions))

    monkeypatch.setattr(wfa.methods.FusedTextLoss, "forward", poisoned)
    code, err = train(capsys, shards, tmp_path / "run", "method=mean", "train.steps=3", "train.grad_clip=null")
    line = error_line(err, "train")
    assert code == 1 and "non-finite gradient at step 1" in line


# -- data ----------------------------------------------------------------------------------------------------------

@pytest.fixture()
def damaged(shards, tmp_path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy


@pytest.mark.parametrize("case", ["truncated", "random bytes", "empty", "missing member", "directory"])
def test_hostile_damaged_training_shard_is_named(damaged, tmp_path, capsys, case):
    """Issue 11 #7: a truncated shard silently dropped 80 % of the data; random bytes gave 'smaller batch_size'."""
    shard = damaged / "train-000003.tar"
    data = shard.read_bytes()
    if case == "truncated":
        shard.write_bytes(data[: len(data) // 3])
    elif case == "random bytes":
        shard.write_bytes(random.Random(1).randbytes(len(data)))
    elif case == "empty":
        shard.write_bytes(b"")
    elif case == "missing member":
        shard.write_bytes(tar_bytes({"a.json": b"{}", "b.json": b"{}"}))
    else:
        shard.unlink()
        shard.mkdir()
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=1")
    line = error_line(err, "train")
    assert code == 1 and "train-000003.tar" in line
    assert {"truncated": "truncated", "random bytes": "not a tar file", "empty": "empty file",
            "missing member": "lack", "directory": "missing"}[case] in line
    assert not (tmp_path / "run").exists()


def test_data_accounting_is_recorded_and_printed(shards, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = train(capsys, shards, out, "method=mean", "train.steps=2")
    assert code == 0, err
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    (data,) = [r for r in records if r.get("event") == "data"]
    assert data["expected"] == data["readable"] == 32 and len(data["shards"]) == 8
    end = records[-1]
    assert end["event"] == "end" and end["data"]["loader"]["samples"] >= 16
    assert sum(c.get("samples", 0) for c in end["data"]["per_shard"].values()) == end["data"]["loader"]["samples"]
    assert "samples read" in err and "32 of 32 samples of split 'train' readable" in err


def test_hostile_corrupt_samples_past_the_threshold_stop_training(damaged, tmp_path, capsys):
    """Undecodable images inside intact tars: counted per shard, and over 1 % of an epoch the run stops."""
    import tarfile

    shard = damaged / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    shard.write_bytes(tar_bytes({name: (b"garbage" if name.endswith(".jpg") else data)
                                 for name, data in members.items()}))
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=8")
    line = error_line(err, "train")
    assert code == 1 and "unreadable" in line and "train-000000.tar" in line


@pytest.mark.parametrize("key", ["data.val_split", "data.split"])
def test_hostile_mistyped_split_fails_before_the_first_step(shards, tmp_path, capsys, key):
    """Issue 11 #8: a mistyped data.val_split failed only after all training."""
    code, err = train(capsys, shards, tmp_path / "run", "method=mean", "train.steps=1", f"{key}=vall")
    line = error_line(err, "train")
    assert code == 1 and "'vall'" in line and "available" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["missing", "not json", "a file"])
def test_hostile_bad_shards_folder(tmp_path, capsys, case):
    folder = tmp_path / "shards"
    if case == "not json":
        folder.mkdir()
        (folder / "index.json").write_text("{")
    elif case == "a file":
        folder.write_text("x")
    code, err = train(capsys, folder, tmp_path / "run", "method=mean", "train.steps=1")
    assert code == 1 and "index.json" in error_line(err, "train")


def test_hostile_out_is_a_file(shards, tmp_path, capsys):
    target = tmp_path / "run"
    target.write_text("mine")
    code, err = train(capsys, shards, target, "method=mean", "train.steps=1")
    assert code == 1 and "is a file" in error_line(err, "train") and target.read_text() == "mine"


@pytest.mark.parametrize("name", ["../secret.tar", "/etc/passwd", "sub/train-000000.tar"])
def test_hostile_index_naming_files_outside_the_shard_folder(damaged, tmp_path, capsys, name):
    """A downloaded index.json must not make wfa read files outside the shard folder."""
    index = json.loads((damaged / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["name"] = name
    (damaged / "index.json").write_text(json.dumps(index))
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=1")
    line = error_line(err, "train")
    assert code == 1 and name in line and "not a file name in the shard folder" in line
    code, err = wfa_cli(capsys, "eval", "--model", "wfa-vit-micro", "--shards", damaged, "--split", "train",
                        "--out", tmp_path / "r.json")
    assert code == 2 and name in error_line(err, "eval")


@pytest.mark.parametrize("override", ["model.name=wfa-vit-tiny", "aggregator.hidden_dim=8"])
def test_hostile_resume_with_another_architecture(shards, tmp_path, capsys, override):
    """A checkpoint that does not fit the run's model or aggregator: a message, not a load_state_dict traceback."""
    out = tmp_path / "run"
    assert _train_quiet(shards, out, "method=attention", "train.steps=1") == 0
    capsys.readouterr()
    code, err = train(capsys, shards, out, "method=attention", "train.steps=2", "resume=latest", override)
    line = error_line(err, "train")
    assert code == 1 and "step_000001.pt" in line and "does not fit this run" in line
    assert ("its model" if "model.name" in override else "its aggregator") in line


# -- round two (issue 20): liveness, pre-flight checks of the whole config, full disk -----------------------------

def _garbage_images(name: str, data: bytes) -> bytes:
    return b"garbage" if not name.endswith(".json") else data


@pytest.fixture(scope="module")
def ms_shards(tmp_path_factory) -> Path:
    """40 synthetic 12-band 32 px images, 32 for training in 8 shards of 4."""
    out = tmp_path_factory.mktemp("hostile-train-ms") / "shards"
    write_shards(SyntheticReader(num_images=40, seed=0, image_size=32, multispectral=True), out, shard_size=4,
                 progress=False)
    return out


def _encode(arrays: dict) -> bytes:
    from wfa.data.shard_format import encode_bands

    return encode_bands(arrays)[0]


def _members_as(change_arrays):
    """A member rewrite that decodes each band member, changes its arrays and encodes them again."""
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith(".safetensors.zst"):
            return data
        import pyarrow as pa
        from safetensors.numpy import load

        arrays = load(pa.CompressedInputStream(pa.BufferReader(data), "zstd").read())
        return _encode(change_arrays(arrays))
    return change


MS_TAMPERING = {  # (where, change): nine ways a multispectral data set can contradict itself
    "bands_bytes too small": ("index", lambda i: i.update(bands_bytes=16)),
    "bands_bytes huge": ("index", lambda i: i.update(bands_bytes=10**12)),
    "band list disagrees with the layout": ("index", lambda i: i.update(bands=i["bands"][::-1])),
    "layout dtype not numeric": ("index", lambda i: i["band_layout"][0].update(dtype="object")),
    "grid of 10^10 values": ("index", lambda i: i.update(image_size=[100_000, 100_000])),
    "layout shape the members lack": ("index", lambda i: i["band_layout"][3].update(shape=[30, 30],
                                                                                    shapes=[[30, 30]])),
    "member of random bytes": ("members", lambda name, data: random.Random(name).randbytes(len(data))
                               if name.endswith(".zst") else data),
    "member without a band": ("members", _members_as(lambda a: {k: v for k, v in a.items() if k != "B05"})),
    "member bigger than bands_bytes": ("members", _members_as(lambda a: {k: np.tile(v, (2, 2)) for k, v in a.items()})),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(MS_TAMPERING))
def test_hostile_tampered_multispectral_shards_stop_before_training(ms_shards, tmp_path, capsys, case):
    """Issue 20 #1: training never ended when no sample of the split decoded (the index check read headers only,
    the loader skipped every sample forever); now the index is checked against itself and one sample per shard
    is decoded before anything is written: a one-line error, no run folder."""
    from hostile import edit_index, rewrite_members

    shards = tmp_path / "shards"
    shutil.copytree(ms_shards, shards)
    where, change = MS_TAMPERING[case]
    if where == "index":
        edit_index(shards, change)
    else:
        for shard in sorted(shards.glob("*.tar")):
            rewrite_members(shard, change)
    code, err = train(capsys, shards, tmp_path / "run", "method=mean", "train.steps=2")
    line = error_line(err, "train")
    assert code == 1 and ("index.json" in line or "does not decode" in line), line
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_hostile_rgb_split_whose_images_all_fail_stops_before_training(damaged, tmp_path, capsys):
    """Issue 20 #1: RGB shards whose images are all broken (every tar intact) made training loop forever."""
    from hostile import rewrite_members

    for shard in sorted(damaged.glob("train-*.tar")):
        rewrite_members(shard, _garbage_images)
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=2")
    line = error_line(err, "train")
    assert code == 1 and "does not decode" in line and "train-000000.tar" in line
    assert not (tmp_path / "run").exists()
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=1", "data.split=val",
                      "train.batch_size=4")
    assert code == 0, err  # the refused run left nothing in the way of the next one


@pytest.mark.timeout(60)
@pytest.mark.parametrize("view", ["images", "pairs"])
def test_hostile_loader_stops_when_nothing_decodes(damaged, view):
    """Issue 20 #1, the liveness rule itself (without the up-front probe): a training loader over shards where no
    image decodes raises DataError once the epoch's 1 % budget of skips is spent, instead of skipping forever."""
    from open_clip import get_tokenizer

    from hostile import rewrite_members
    from wfa.data.loader import LoaderConfig, build_loader
    from wfa.errors import DataError

    for shard in sorted(damaged.glob("train-*.tar")):
        rewrite_members(shard, _garbage_images)
    loader, _ = build_loader(LoaderConfig(shards=str(damaged), split="train", batch_size=4, image_size=16, view=view,
                                          shuffle=0), get_tokenizer("ViT-B-32"))
    with pytest.raises(DataError, match="unreadable") as error:
        next(iter(loader))
    assert "train-0000" in str(error.value) and loader.stats.sample_skips() <= loader.stats.budget + 2


@pytest.mark.timeout(120)
def test_hostile_corrupt_samples_after_the_probe_stop_mid_run_and_leave_no_folder(damaged, tmp_path, capsys):
    """Issue 20 #1: a liveness stop during training (the probe's first samples decode, later ones do not) ends
    with one line, and the run folder it had started is removed (no checkpoint was written), so the re-run is
    not blocked."""
    from hostile import rewrite_members

    for shard in sorted(damaged.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            first = min(tar.getnames())  # the first sample's image: the probe decodes it
        rewrite_members(shard, lambda name, data: data if name.endswith(".json") or name == first else b"garbage")
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=8")
    line = error_line(err, "train")
    assert code == 1 and "unreadable" in line
    assert not (tmp_path / "run").exists()


PREFLIGHT = {  # override -> (what the line names, the corrected override)
    "train.batch_size=64": ("train.batch_size=64", "train.batch_size=8"),
    "aggregator.temperature=0": ("aggregator.temperature=0.0", "aggregator.temperature=1"),
    "aggregator.hidden_dim=0": ("aggregator.hidden_dim=0", "aggregator.hidden_dim=16"),
    "aggregator.hidden_dim=100000000": ("parameters", "aggregator.hidden_dim=16"),
    "data.image_size=4": ("data.image_size=4", "data.image_size=32"),
    "model.name=no-such-model": ("model.name='no-such-model'", "model.name=wfa-vit-micro"),
}


@pytest.mark.parametrize("override", list(PREFLIGHT))
def test_hostile_settings_are_checked_before_anything_is_written(shards, tmp_path, capsys, override):
    """Issue 20 #6: these settings crashed the first step with a traceback and left a run folder that blocked the
    corrected re-run; now one line naming the key (exit 2), no folder, and the corrected run goes through."""
    out = tmp_path / "run"
    named, fixed = PREFLIGHT[override]
    code, err = train(capsys, shards, out, "method=attention", "train.steps=1", override)
    line = error_line(err, "train")
    assert code == 2 and named in line, line
    assert not out.exists()
    code, err = train(capsys, shards, out, "method=attention", "train.steps=1", fixed)
    assert code == 0, err


@pytest.mark.parametrize("case", ["random bytes", "images broken"])
def test_hostile_garbage_validation_shard_is_found_before_training(damaged, tmp_path, capsys, case):
    """Issue 20 #6: a garbage val/test shard gave a traceback only after all of training, and no model_final.pt."""
    from hostile import rewrite_members

    shard = damaged / "test-000000.tar"
    if case == "random bytes":
        shard.write_bytes(random.Random(3).randbytes(shard.stat().st_size))
    else:
        rewrite_members(shard, _garbage_images)
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=2", "data.val_split=test")
    line = error_line(err, "train")
    assert code == 1 and "test-000000.tar" in line and "'test'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["missing", "'four'", "-3", "true"])
def test_hostile_index_entry_without_a_sample_count(damaged, tmp_path, capsys, value):
    """Issue 20 #7: an index entry without (or with a non-numeric) num_samples gave a KeyError/ValueError
    traceback."""
    from hostile import edit_index

    def change(index):
        entry = index["splits"]["train"]["shards"][2]
        entry.pop("num_samples")
        if value != "missing":
            entry["num_samples"] = json.loads(value.replace("'", '"'))

    edit_index(damaged, change)
    code, err = train(capsys, damaged, tmp_path / "run", "method=mean", "train.steps=1")
    line = error_line(err, "train")
    assert code == 1 and "train-000002.tar" in line and "num_samples" in line


def test_hostile_full_disk_during_training_is_one_line(shards, tmp_path, capsys, monkeypatch):
    """Issue 20 #7: a full disk during training ended in an OSError traceback; now one line saying what to do, and
    the checkpoint written before it is kept."""
    import errno

    import wfa.trainer

    real, calls = wfa.trainer.save_atomic, []

    def full(state, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(state, path)

    monkeypatch.setattr(wfa.trainer, "save_atomic", full)
    out = tmp_path / "run"
    code, err = train(capsys, shards, out, "method=mean", "train.steps=4", "train.checkpoint_every=2")
    line = error_line(err, "train")
    assert code == 1 and "disk full" in line and "--resume latest" in line and "step_000004.pt" in line
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == ["step_000002.pt"]
