"""Files wfa reads are data, not code; the file-level guarantees behind the command suites.

The repository never unpickles: a grep over ``wfa/`` and ``scripts/`` finds no ``weights_only=False``,
``pickle.load`` or ``yaml.load(``; the loaders of checkpoints and aggregators refuse crafted pickles
without running them; checkpoint contents (RNG states included) load under ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hostile import Payload, assert_payload_is_live, tar_bytes
from wfa.aggregation import create_aggregator, load_aggregator, save_aggregator
from wfa.checkpoint import (clean_orphans, find_checkpoint, list_checkpoints, read_checkpoint, rng_state,
                            safe_load, set_rng_state, truncate_metrics)
from wfa.data.audit import audit_shard, check_loss
from wfa.errors import BusyError, CheckpointError

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|yaml\.load\(|yaml\.unsafe_load|allow_pickle\s*=\s*True")


def test_hostile_no_unpickling_anywhere_in_the_code():
    offenders = []
    for folder in ("wfa", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if FORBIDDEN.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_hostile_every_torch_load_is_weights_only():
    calls = []
    for folder in ("wfa", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            calls += [(path.name, m.group(0)) for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert all("weights_only=True" in call for _, call in calls), calls


def test_hostile_safe_load_refuses_a_payload(tmp_path):
    assert_payload_is_live(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "step_000001.pt"
    torch.save({"format": "wfa-checkpoint", "step": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="Python objects"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", ["pickle", "torch zip", "text", "empty", "json"])
def test_hostile_load_aggregator_refuses_foreign_files(tmp_path, content):
    marker = tmp_path / "pwned"
    path = tmp_path / "aggregator.safetensors"
    if content == "pickle":
        import pickle

        path.write_bytes(pickle.dumps(Payload(marker)))
    elif content == "torch zip":
        torch.save({"name": "mean", "dim": 8, "x": Payload(marker)}, path)
    elif content == "text":
        path.write_text("name: mean\n")
    elif content == "empty":
        path.write_bytes(b"")
    else:
        path.write_text(json.dumps({"name": "mean", "dim": 8}))
    with pytest.raises(CheckpointError, match="aggregator.safetensors"):
        load_aggregator(path)
    assert not marker.exists()


def test_hostile_aggregator_with_a_huge_dim_is_refused_before_allocating(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "agg.safetensors"
    save_file({}, str(path), metadata={"wfa_aggregator": json.dumps({"name": "attention", "dim": 10**9,
                                                                      "kwargs": {}})})
    with pytest.raises(CheckpointError, match="outside"):
        load_aggregator(path)


@pytest.mark.parametrize("name,kwargs", [("mean", {}), ("bleu", {}), ("attention", {"hidden_dim": 8,
                                                                                    "temperature": 0.5})])
def test_aggregator_file_round_trip(tmp_path, name, kwargs):
    agg = create_aggregator(name, 16, **kwargs)
    if name == "attention":
        torch.nn.init.normal_(agg.query)
    save_aggregator(agg, tmp_path / "a.safetensors")
    back = load_aggregator(tmp_path / "a.safetensors")
    assert back.spec == agg.spec
    for key, value in agg.state_dict().items():
        assert torch.equal(value, back.state_dict()[key])
    features, mask = torch.randn(3, 4, 16), torch.ones(3, 4, dtype=torch.bool)
    weights = torch.full((3, 4), 0.25)
    assert torch.equal(agg(features, mask, weights)[0], back(features, mask, weights)[0])


def test_rng_state_round_trips_under_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save({"rng": [rng_state()]}, path)
    expected = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(path, weights_only=True)["rng"][0])
    assert (random.random(), np.random.standard_normal(), np.random.random()) == expected[:3]
    assert torch.equal(torch.rand(3), expected[3])


def test_latest_checkpoint_is_by_step_number_and_ignores_other_files(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("step_000009.pt", "step_000010.pt", "step_1000000.pt", ".step_2000000.pt.tmp1", "step_x.pt",
                 "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "step_3000000.pt").mkdir()  # a folder is not a checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000009.pt", "step_000010.pt", "step_1000000.pt"]
    assert find_checkpoint(tmp_path, "latest").name == "step_1000000.pt"
    assert [p.name for p in clean_orphans(tmp_path)] == [".step_2000000.pt.tmp1"]


def test_truncate_metrics_drops_later_records_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"event": "start", "step": 0}, {"step": 1}, {"step": 2}, {"event": "val", "step": 2}, {"step": 3},
               {"event": "end", "steps": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    assert truncate_metrics(path, 2) == 3  # step 3, the end record and the torn line
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:4]


@pytest.mark.parametrize("case", ["ok", "truncated", "random", "empty", "missing", "no image", "member too long"])
def test_audit_shard_names_what_is_wrong(tmp_path, case):
    path = tmp_path / "train-000000.tar"
    members = {f"s{i}.{ext}": b"x" * 700 for i in range(4) for ext in ("json", "jpg")}
    data = tar_bytes(members)
    if case == "truncated":
        data = data[: len(data) // 2]
    elif case == "random":
        data = random.Random(0).randbytes(len(data))
    elif case == "empty":
        data = b""
    elif case == "no image":
        data = tar_bytes({k: v for k, v in members.items() if not k.startswith("s3.jpg")})
    elif case == "member too long":  # the file ends inside the last member's data
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            last = tar.getmembers()[-1]
        data = data[: last.offset_data + 100]
    if case != "missing":
        path.write_bytes(data)
    record = audit_shard(path, 4)
    expected = {"ok": None, "truncated": "truncated", "random": "not a tar file", "empty": "empty file",
                "missing": "missing file", "no image": "lack", "member too long": "truncated"}[case]
    if expected is None:
        assert record["problem"] is None and record["complete"] == 4
    else:
        assert expected in record["problem"] and record["complete"] < 4


def test_data_loss_threshold_is_one_percent():
    audit = {"expected": 1000, "missing": 10, "shards": [{"shard": "a", "complete": 90, "expected": 100,
                                                          "problem": "truncated"}]}
    assert check_loss(audit, "train") is None
    audit["missing"] = 11
    assert "a (90/100: truncated)" in check_loss(audit, "train")


def test_hostile_probe_threshold_is_one_percent_of_the_shards():
    """Issue 20 #1: the up-front decoding probe stops a run when the first sample of more than 1 % of a split's
    shards does not decode, naming them; below that, the loader's own 1 % rule applies."""
    from wfa.data.audit import check_probes

    probes = [{"shard": f"train-{i:06d}.tar", "ok": True, "problem": None} for i in range(200)]
    probes[7].update(ok=False, problem="decode_error: broken")
    probes[9].update(ok=False, problem="decode_error: broken")
    assert check_probes(probes, "train") is None
    probes[11].update(ok=False, problem="decode_error: broken")
    assert "3 of 200 shards" in check_probes(probes, "train") and "train-000007.tar" in check_probes(probes, "train")


def test_lock_names_the_holder(tmp_path):
    import os

    from wfa.data.publish import folder_lock, lock_path

    with folder_lock(tmp_path / "out"):
        with pytest.raises(BusyError, match=f"pid {os.getpid()}"):
            with folder_lock(tmp_path / "out"):
                pass
    with folder_lock(tmp_path / "out"):  # released: it can be taken again
        assert lock_path(tmp_path / "out").read_text().strip() == str(os.getpid())


def test_safe_load_of_a_checkpoint_written_by_this_version_works(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(2), "b": [1, 2.0, None, "s"], "c": {"d": (1, 2)}}, path)
    assert safe_load(path, "checkpoint")["b"] == [1, 2.0, None, "s"]


# -- round two (issue 20) ------------------------------------------------------------------------------------------

def test_hostile_aggregator_parameter_count_is_capped_before_allocating():
    """Issue 20 #3: sizes were capped one by one, not their product; create_aggregator now counts the parameters
    on the meta device and refuses more than MAX_PARAMETERS without allocating them."""
    import time

    from wfa.aggregation import MAX_PARAMETERS

    start = time.perf_counter()
    with pytest.raises(ValueError, match="parameters, more than"):
        create_aggregator("attention", 65536, hidden_dim=16384)
    assert time.perf_counter() - start < 1.0
    assert sum(p.numel() for p in create_aggregator("attention", 4096).parameters()) < MAX_PARAMETERS


def test_hostile_aggregator_file_whose_tensors_do_not_match_its_metadata(tmp_path):
    """Issue 20 #3: a file's metadata may ask for sizes its (tiny) tensors do not have: refused before the
    aggregator is allocated."""
    from safetensors.torch import save_file

    path = tmp_path / "agg.safetensors"
    spec = {"name": "attention", "dim": 4096, "kwargs": {"hidden_dim": 4096}}
    save_file({"proj.weight": torch.zeros(2, 2), "proj.bias": torch.zeros(2), "query": torch.zeros(2)}, str(path),
              metadata={"wfa_aggregator": json.dumps(spec)})
    with pytest.raises(CheckpointError, match="not the .* that its metadata describes"):
        load_aggregator(path)


def test_hostile_lock_file_is_removed_and_a_late_locker_takes_the_new_one(tmp_path, monkeypatch):
    """Issue 20 #5: .X.lock files piled up beside every output folder. The lock file now goes with its run; a
    process that locked the file just as its holder removed it sees that the path names another file (or none)
    and locks again, so two runs never both believe they hold the lock."""
    import fcntl

    from wfa.data import publish

    out = tmp_path / "out"
    with publish.folder_lock(out) as path:
        assert path.read_text().strip() == str(os.getpid())
    assert not publish.lock_path(out).exists()

    real, calls = fcntl.flock, []

    def holder_removes_it_meanwhile(fd, operation):
        real(fd, operation)
        calls.append(fd)
        if len(calls) == 1:  # the previous holder's `finally` runs between our flock and our check
            publish.lock_path(out).unlink()

    monkeypatch.setattr(publish.fcntl, "flock", holder_removes_it_meanwhile)
    with publish.folder_lock(out) as path:
        assert len(calls) == 2 and path.exists()  # it locked the new file, not the removed one
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_hostile_progress_lines_without_a_terminal(capsys):
    """Issue 20 #10: off a terminal, progress is ordinary lines (no carriage returns) at most every ``every_s``."""
    from wfa.data.progress import LineProgress, progress

    bar = progress(total=10, desc="writing shards", unit="img")
    assert isinstance(bar, LineProgress)  # stderr is captured, not a terminal
    bar.every_s = 0
    bar.update()
    bar.update()
    bar.set_postfix(written=2)
    bar.update()
    bar.close()  # the last line already shows 3/10: no repeat
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("writing shards:  30% 3/10") and "written=2" in lines[-1]
    slow = progress(total=10, desc="sorting", unit="row")
    slow.update(10)  # within every_s of the start: no line yet ...
    assert capsys.readouterr().err == ""
    slow.close()  # ... and the final count when it ends
    assert capsys.readouterr().err.startswith("sorting: 100% 10/10")
    quiet = progress(total=10, desc="x", enabled=False)
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("change,named", [
    (lambda i: i.update(bands_bytes=16), "bands_bytes"),
    (lambda i: i.update(bands_bytes=True), "bands_bytes"),
    (lambda i: i.update(bands=["B02", "B01"]), "disagree"),
    (lambda i: i["band_layout"][0].update(dtype="<U5"), "numeric"),
    (lambda i: i["band_layout"][0].update(shape=[0, 4], shapes=None), "2-D band"),
    (lambda i: i.update(image_size=[1 << 20, 1 << 20]), "image_size"),
    (lambda i: i.update(band_layout="B01"), "band_layout"),
])
def test_hostile_band_index_contradicting_itself(change, named):
    """Issue 20 #1/#6: an index whose bands_bytes, band list, layout or grid contradict each other made every sample
    fail to decode (or asked for gigabytes); check_band_index refuses it before anything is decoded."""
    from wfa.data.shard_format import check_band_index

    index = {"bands": ["B01", "B02"], "image_size": [4, 4], "bands_bytes": 400,
             "band_layout": [{"band": "B01", "dtype": "uint16", "shape": [4, 4]},
                             {"band": "B02", "dtype": "uint16", "shape": [4, 4]}]}
    check_band_index(index, "index.json")
    change(index)
    with pytest.raises(ValueError, match=named):
        check_band_index(index, "index.json")
