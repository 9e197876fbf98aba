"""Hostile input to ``wfa shards``: every case checks the exit code, that the message names the item or file,
and that nothing was lost (the previous data set in ``--out`` stays complete) or read from outside the input.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import shared_data
from hostile import assert_complete_dataset, error_line, folder_digest, wfa_cli
from wfa.data.synthetic import SyntheticReader
from wfa.data.writer import write_shards

REPO = Path(__file__).resolve().parents[1]


def karpathy(root: Path, entries: list[dict], images: dict[str, object] | None = None) -> tuple[Path, Path]:
    """A caption json and an image folder: three good 32 px images plus ``images`` (name -> bytes or array)."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 40 * i)).save(folder / f"good{i}.jpg")
    for name, content in (images or {}).items():
        if isinstance(content, np.ndarray):
            tifffile.imwrite(folder / name, content, photometric="rgb")
        else:
            (folder / name).write_bytes(content)
    good = [{"filename": f"good{i}.jpg", "split": "train", "sentences": [{"raw": f"image {i} ."}, {"raw": "a field ."}]}
            for i in range(3)]
    captions = root / "dataset.json"
    captions.write_text(json.dumps({"images": good + entries}), encoding="utf-8")
    return captions, folder


def entry(filename: str, *captions: str) -> dict:
    return {"filename": filename, "split": "train", "sentences": [{"raw": c} for c in captions or ("a caption .",)]}


@pytest.fixture()
def old_dataset(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``tmp_path/out`` holding a complete previous data set, and its digest."""
    out = tmp_path / "out"
    write_shards(SyntheticReader(num_images=12, seed=3, image_size=16), out, shard_size=4, progress=False)
    return out, folder_digest(out)


def run_karpathy(capsys, captions: Path, images: Path, out: Path, *extra: str) -> tuple[int, str]:
    return wfa_cli(capsys, "shards", "karpathy", "--captions", captions, "--images", images, "--out", out,
                   "--no-progress", *extra)


# -- a failed run keeps the previous data set ------------------------------------------------------------------

def test_hostile_no_sample_written_keeps_the_old_dataset(tmp_path, capsys, old_dataset):
    """Issue 11 #2: --skip-bad with a wrong --images folder used to delete the previous shards."""
    out, before = old_dataset
    captions, _ = karpathy(tmp_path / "src", [])
    wrong = tmp_path / "wrong-images"
    wrong.mkdir()
    code, err = run_karpathy(capsys, captions, wrong, out, "--skip-bad")
    assert code == 1
    line = error_line(err, "shards")
    assert "no sample was written" in line and "missing image: 3" in line and str(out) in line
    assert folder_digest(out) == before


def test_hostile_missing_images_folder_is_an_argument_error(tmp_path, capsys, old_dataset):
    out, before = old_dataset
    captions, _ = karpathy(tmp_path / "src", [])
    code, err = run_karpathy(capsys, captions, tmp_path / "nowhere", out)
    assert code == 2 and "nowhere" in error_line(err, "shards")
    assert folder_digest(out) == before


def test_hostile_bad_item_keeps_the_old_dataset(tmp_path, capsys, old_dataset):
    out, before = old_dataset
    captions, images = karpathy(tmp_path / "src", [entry("broken.jpg")], {"broken.jpg": b"not a jpeg"})
    code, err = run_karpathy(capsys, captions, images, out)
    assert code == 1 and "'broken'" in error_line(err, "shards")
    assert folder_digest(out) == before


def test_hostile_empty_caption_file(tmp_path, capsys, old_dataset):
    out, before = old_dataset
    captions = tmp_path / "empty.json"
    captions.write_text('{"images": []}')
    (tmp_path / "images").mkdir()
    code, err = run_karpathy(capsys, captions, tmp_path / "images", out)
    assert code == 1 and "no sample was written" in error_line(err, "shards")
    assert folder_digest(out) == before


# -- concurrency and interruption --------------------------------------------------------------------------------

def test_hostile_second_concurrent_run_fails_at_once(tmp_path, capsys, old_dataset):
    from wfa.data import publish

    out, before = old_dataset
    with publish.folder_lock(out) as lock:
        start = time.perf_counter()
        code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "8", "--out", out, "--no-progress")
        assert time.perf_counter() - start < 10
    line = error_line(err, "shards")
    assert code == 1 and f"pid {os.getpid()}" in line and str(lock) in line
    assert folder_digest(out) == before


def test_hostile_failed_exchange_keeps_the_old_dataset(tmp_path, monkeypatch, old_dataset):
    from wfa.data import publish

    out, before = old_dataset

    def broken(a, b):
        raise OSError(errno.EIO, "input/output error")

    monkeypatch.setattr(publish, "_exchange", broken)
    with pytest.raises(OSError):
        write_shards(SyntheticReader(num_images=8, seed=9, image_size=16), out, progress=False)
    assert folder_digest(out) == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_hostile_kill_between_the_two_renames_leaves_a_complete_dataset(tmp_path, monkeypatch, old_dataset):
    """Without an atomic exchange, a kill between 'park old' and 'move new in' keeps the old data set, and
    the next run puts it back before anything else."""
    from wfa.data import publish

    out, before = old_dataset
    monkeypatch.setattr(publish, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    real_rename, calls = os.rename, []

    def killed_after_first(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs
        real_rename(src, dst)

    monkeypatch.setattr(publish.os, "rename", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        write_shards(SyntheticReader(num_images=8, seed=9, image_size=16), out, progress=False)
    monkeypatch.setattr(publish.os, "rename", real_rename)
    parked = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(parked) == 1 and folder_digest(parked[0]) == before  # the old data set is complete
    # the next run (here one that fails: nothing to write) first restores it
    with pytest.raises(Exception, match="no sample was written"):
        write_shards(iter(()), out, progress=False)
    assert folder_digest(out) == before


def test_hostile_kill_9_at_any_time_leaves_old_or_new(tmp_path, old_dataset):
    from wfa.data import publish

    out, before = old_dataset
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "wfa.cli", "shards", "synthetic", "--num-images", "300", "--image-size", "16",
           "--shard-size", "50", "--seed", "7", "--out", str(out), "--no-progress"]
    for delay in (1.0, 4.0):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        publish.recover(out)  # what the next run does first
        index = assert_complete_dataset(out)
        assert index["written"] in (12, 300)
        if index["written"] == 12:
            assert folder_digest(out) == before


def test_hostile_killed_writer_leaves_no_worker_processes(tmp_path):
    """Issue 11: four processes outlived a killed `wfa shards --workers 2`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "wfa.cli", "shards", "synthetic", "--num-images", "40000", "--image-size", "16",
           "--workers", "2", "--out", str(tmp_path / "out"), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def session() -> list[str]:
        found = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        return [pid for pid in found if pid != str(proc.pid)]

    deadline = time.time() + 60
    while len(session()) < 4 and time.time() < deadline:  # forkserver, resource tracker and the 2 workers
        time.sleep(0.5)
    assert len(session()) >= 4, "the worker pool did not start"
    time.sleep(2)  # the workers are encoding
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while session() and time.time() < deadline:
        time.sleep(0.5)
    left = session()
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    assert not left, f"processes outlived the writer: {left}"


def test_hostile_out_is_a_file_or_holds_other_files(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "4", "--out", target, "--no-progress")
    assert code == 2 and "is a file" in error_line(err, "shards") and target.read_text() == "mine"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("x")
    code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "4", "--out", folder, "--no-progress")
    assert code == 2 and "thesis.tex" in error_line(err, "shards") and (folder / "thesis.tex").read_text() == "x"


@pytest.mark.parametrize("option", [("--shard-size", "0"), ("--max-shard-mb", "-1"), ("--workers", "-2")])
def test_hostile_nonsense_numbers(tmp_path, capsys, option):
    code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "4", "--out", tmp_path / "o", *option)
    assert code == 2 and option[0] in error_line(err, "shards")
    assert not (tmp_path / "o").exists()


# -- names that leave the image folder ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "ABSOLUTE", "link.jpg"])
def test_hostile_caption_file_names_cannot_leave_the_image_folder(tmp_path, capsys, name):
    """Issue 11 #4: '../outside.jpg' was read and embedded; an absolute path aborted the run naming no item."""
    secret = tmp_path / "outside.jpg"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(secret)
    if name == "ABSOLUTE":
        name = str(secret)
    captions, images = karpathy(tmp_path / "src", [entry(name, "secret .")])
    if name == "link.jpg":
        (images / "link.jpg").symlink_to(secret)
    out = tmp_path / "out"
    code, err = run_karpathy(capsys, captions, images, out, "--skip-bad")
    assert code == 0, err
    index = assert_complete_dataset(out)
    assert index["written"] == 3 and index["rejected_reasons"] == {"unsafe path": 1}
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert reject["reason"] == "unsafe path" and "outside" in reject["detail"]
    code, err = run_karpathy(capsys, captions, images, tmp_path / "strict")
    assert code == 1 and "unsafe path" in error_line(err, "shards")


# -- captions --------------------------------------------------------------------------------------------------

def test_hostile_lone_surrogate_caption_is_one_reject(tmp_path, capsys):
    """Issue 11 #9: one caption "\\ud800" aborted the whole run even with --skip-bad, naming nothing."""
    Image.new("RGB", (32, 32)).save(tmp_path / "x.jpg")
    captions, images = karpathy(tmp_path / "src", [entry("odd.jpg", "fine .", "\ud800")],
                                {"odd.jpg": (tmp_path / "x.jpg").read_bytes()})
    captions.write_text(captions.read_text(encoding="utf-8").replace("\\\\ud800", "\\ud800"), encoding="utf-8")
    assert "\\ud800" in captions.read_text(encoding="utf-8")  # the json escape of a lone surrogate
    out = tmp_path / "out"
    code, err = run_karpathy(capsys, captions, images, out, "--skip-bad")
    assert code == 0, err
    index = assert_complete_dataset(out)
    assert index["written"] == 3 and index["rejected_reasons"] == {"invalid caption": 1}
    code, err = run_karpathy(capsys, captions, images, tmp_path / "strict")
    line = error_line(err, "shards")
    assert code == 1 and "'odd'" in line and "caption 1" in line


def test_hostile_huge_k_and_huge_captions(tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.jpg")
    jpg = (tmp_path / "x.jpg").read_bytes()
    many = entry("many.jpg", *[f"caption number {i} ." for i in range(1001)])
    long = entry("long.jpg", "a" * 20_000)
    captions, images = karpathy(tmp_path / "src", [many, long], {"many.jpg": jpg, "long.jpg": jpg})
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--skip-bad")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["rejected_reasons"] == {"invalid caption": 1, "too many captions": 1}


# -- images ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["one nan", "one inf", "all nan", "all negative"])
def test_hostile_float_tiffs_are_rejected_not_black(tmp_path, capsys, case):
    """Issue 11 #6: a float TIFF with one NaN/inf pixel became an all-black image."""
    array = np.random.default_rng(0).uniform(0.1, 0.9, size=(32, 32, 3)).astype(np.float32)
    if case == "one nan":
        array[3, 4, 1] = np.nan
    elif case == "one inf":
        array[0, 0, 0] = np.inf
    elif case == "all nan":
        array[:] = np.nan
    else:
        array = -array
    captions, images = karpathy(tmp_path / "src", [entry("float.tif")], {"float.tif": array})
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out")
    line = error_line(err, "shards")
    assert code == 1 and "'float'" in line and ("NaN or inf" in line or "negative" in line)


def test_hostile_float_tiff_is_scaled_by_its_peak(tmp_path, capsys):
    array = np.full((32, 32, 3), 0.5, dtype=np.float32)
    array[0, 0] = 1.0
    captions, images = karpathy(tmp_path / "src", [entry("float.tif")], {"float.tif": array})
    assert run_karpathy(capsys, captions, images, tmp_path / "out")[0] == 0
    from wfa.data.karpathy import read_rgb

    assert np.asarray(read_rgb(images / "float.tif"))[5, 5, 0] == 127


@pytest.mark.parametrize("content", [b"", b"GIF89a not really", b"\xff\xd8\xff" + b"\0" * 100])
def test_hostile_empty_and_fake_image_files(tmp_path, capsys, content):
    captions, images = karpathy(tmp_path / "src", [entry("bad.jpg")], {"bad.jpg": content})
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--skip-bad")
    assert code == 0
    assert json.loads((tmp_path / "out" / "rejects.jsonl").read_text())["reason"] == "unreadable image"


def test_hostile_directory_named_like_an_image(tmp_path, capsys):
    captions, images = karpathy(tmp_path / "src", [entry("dir.jpg")])
    (images / "dir.jpg").mkdir()
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--skip-bad")
    assert code == 0 and json.loads((tmp_path / "out" / "rejects.jsonl").read_text())["id"] == "dir"


# -- malformed input files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["directory", "latin-1", "not json", "empty", "deep nesting", "missing"])
def test_hostile_bad_caption_files_are_named(tmp_path, capsys, case):
    """Issue 11 #11: non-UTF-8 JSON or a directory as --captions ended in a traceback naming no file."""
    captions, images = karpathy(tmp_path / "src", [])
    bad = tmp_path / "captions.json"
    if case == "directory":
        bad.mkdir()
    elif case == "latin-1":
        bad.write_bytes(json.dumps({"images": [entry("good0.jpg", "caf\u00e9")]}, ensure_ascii=False).encode("latin-1"))
    elif case == "not json":
        bad.write_text("images: [")
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "deep nesting":
        bad.write_text("[" * 100_000 + "]" * 100_000)
    code, err = run_karpathy(capsys, bad, images, tmp_path / "out")
    assert code == 2 and "captions.json" in error_line(err, "shards")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["no class", "unknown file", "directory", "latin-1", "wrong columns", "twice"])
def test_hostile_bad_labels_files_are_named(tmp_path, capsys, case):
    """Issue 11: label rows without a class or matching no file were accepted silently."""
    captions, images = karpathy(tmp_path / "src", [])
    labels = tmp_path / "labels.csv"
    rows = {"no class": "filename,class\ngood0.tif,field\ngood1.tif,\n",
            "unknown file": "filename,class\nnot-there.tif,field\nnor-this.tif,forest\n",
            "wrong columns": "name,label\ngood0.tif,field\n",
            "twice": "filename,class\ngood0.tif,field\ngood0.jpg,forest\n"}
    if case == "directory":
        labels.mkdir()
    elif case == "latin-1":
        labels.write_bytes("filename,class\ngood0.tif,for\u00eat\n".encode("latin-1"))
    else:
        labels.write_text(rows[case])
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--labels", labels)
    line = error_line(err, "shards")
    assert code == 2 and "labels.csv" in line
    assert {"no class": "line 3", "unknown file": "none of its 2 rows", "twice": "line 3"}.get(case, "") in line


def test_hostile_unlabelled_images_and_unmatched_rows_are_counted(tmp_path, capsys):
    captions, images = karpathy(tmp_path / "src", [])
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,class\ngood0.tif,field\nelsewhere.tif,forest\n")
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--labels", labels)
    assert code == 0
    from wfa.commands.shards import summary

    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["source"]["unlabelled"] == 2 and index["source"]["label_rows_unmatched"] == 1
    assert "unlabelled: 2, label_rows_unmatched: 1" in "\n".join(summary(index, str(tmp_path / "out")))


# -- BigEarthNet ---------------------------------------------------------------------------------------------

def test_hostile_stray_folders_in_a_bigearthnet_root(tmp_path, capsys):
    """Issue 11 #10: one stray folder broke layout detection: 0 samples, an empty index was published."""
    root = tmp_path / "S2"
    shutil.copytree(shared_data("bigearthnet-v1-tiny") / "S2", root)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "0_backup").mkdir()
    (root / "0_backup" / "notes.txt").write_text("old")
    code, err = wfa_cli(capsys, "shards", "bigearthnet", "--s2", root, "--out", tmp_path / "out", "--skip-bad",
                        "--no-progress")
    assert code == 0, err
    index = assert_complete_dataset(tmp_path / "out")
    assert index["source"]["layout"] == "v1" and index["written"] >= 3
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert "0_backup" in {r["id"] for r in rejects}  # counted and named, not silently dropped


def test_hostile_folder_without_patches(tmp_path, capsys):
    (tmp_path / "S2" / "random").mkdir(parents=True)
    (tmp_path / "S2" / "random" / "a.txt").write_text("x")
    code, err = wfa_cli(capsys, "shards", "bigearthnet", "--s2", tmp_path / "S2", "--out", tmp_path / "out",
                        "--no-progress")
    assert code == 2 and "no BigEarthNet patch folders" in error_line(err, "shards")
    assert not (tmp_path / "out").exists()


def test_hostile_unpaired_s1_patches_are_counted(tmp_path, capsys):
    ben = shared_data("bigearthnet-v1-tiny")
    shutil.copytree(ben, tmp_path / "ben")
    s1 = tmp_path / "ben" / "S1"
    first = sorted(s1.iterdir())[0]
    orphan = s1 / "S1A_IW_GRDH_1SDV_20990101T000000_00AAA_1_1"
    orphan.mkdir()
    for band in ("VV", "VH"):
        shutil.copy(first / f"{first.name}_{band}.tif", orphan / f"{orphan.name}_{band}.tif")
    code, err = wfa_cli(capsys, "shards", "bigearthnet", "--s2", tmp_path / "ben" / "S2", "--s1", s1,
                        "--out", tmp_path / "out", "--skip-bad", "--no-progress")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["source"]["s1_unpaired"] >= 1


def test_hostile_out_is_a_symlink_to_the_dataset(tmp_path, capsys, old_dataset):
    """A symlinked --out stays a symlink; its target gets the new data set, and nothing is left behind."""
    out, _ = old_dataset
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "8", "--image-size", "16", "--out", link,
                        "--no-progress")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == out.resolve()
    assert assert_complete_dataset(out)["written"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "link", "out"]
