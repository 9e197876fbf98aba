"""Hostile input to ``wfa shards``: every case checks the exit code, that the message names the item or file,
and that nothing was lost (the previous data set in ``--out`` stays complete) or read from outside the input.
"""
from __future__ import annotations

import errno
import json
import os
import random
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

import wfa.cli
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
    parked_digest = {name: digest for name, digest in folder_digest(parked[0]).items() if name != publish.MARKER}
    assert len(parked) == 1 and parked_digest == before  # the old data set is complete (and marked as wfa's)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out"]


# -- round two (issue 20) ------------------------------------------------------------------------------------------

def run_txt(capsys, parquet: Path, out: Path, *extra: str) -> tuple[int, str]:
    return wfa_cli(capsys, "shards", "bigearthnet-txt", "--parquet", parquet, "--procedural-images",
                   "--procedural-scale", "10", "--out", out, "--no-progress", "--work-dir", out.parent / "work",
                   *extra)


BENCH_ORDER = [  # a bench patch of BigEarthNet.txt: the caption row comes after the binary / MCQ / box rows
    {"ID": 1, "patch_id": "P1", "type": "binary", "input": "Is there a forest in the image?", "output": "yes"},
    {"ID": 2, "patch_id": "P1", "type": "binary", "input": "Are there any pastures?", "output": "no"},
    {"ID": 3, "patch_id": "P1", "type": "mcq", "input": "Which season is it? A) winter B) summer", "output": "B"},
    {"ID": 4, "patch_id": "P1", "type": "bounding box", "input": "Locate <ref>the lake</ref>.",
     "output": "<ref>the lake</ref><box>[0.7 0.7, 0.9 0.9]</box>"},
    {"ID": 5, "patch_id": "P1", "type": "captioning", "output": "A forest beside a small lake in summer."},
    {"ID": 6, "patch_id": "P2", "type": "binary", "input": "Is there a road?", "output": "yes"},
    {"ID": 7, "patch_id": "P2", "type": "captioning", "output": "Fields crossed by a road."},
]


def test_hostile_max_captions_keeps_the_bigearthnet_txt_caption(tmp_path, capsys):
    """Issue 20 #2: texts were stored in ID order, so the caption (after the binary / MCQ / box rows) was the
    one that data.max_captions cut off; now captions come first and every caption is counted as kept or
    dropped (by reason), at conversion and at load."""
    from open_clip import get_tokenizer

    from hostile import txt_parquet
    from wfa.data.loader import LoaderConfig, build_eval_loader

    parquet = txt_parquet(tmp_path / "bench.parquet", BENCH_ORDER)
    out = tmp_path / "out"
    code, err = run_txt(capsys, parquet, out, "--text-types", "captioning,binary,mcq,bounding box")
    assert code == 0, err
    rows = json.loads((out / "index.json").read_text())["source"]["rows"]
    assert rows["captions"] == {"rows": 2, "kept": 2, "dropped": {}} and rows["captions_per_patch"] == {"1": 2}
    loader, _ = build_eval_loader(LoaderConfig(shards=str(out), split="train", batch_size=4, max_captions=2,
                                               image_size=16), get_tokenizer("ViT-B-32"))
    captions = {i: c for batch in loader for i, c in zip(batch["image_ids"], batch["captions"])}
    assert captions["P1"] == ["A forest beside a small lake in summer.", "There is a forest in the image."]
    assert captions["P2"][0] == "Fields crossed by a road."
    assert loader.stats.as_dict()["captions_capped"] == 3  # P1's other three texts, counted


def test_hostile_captions_dropped_are_counted_by_reason(tmp_path, capsys):
    """Issue 20 #2: a caption lost on the way (a duplicated row, an unknown split, a rejected patch) is counted
    with its reason: rows == kept + dropped."""
    from hostile import txt_parquet

    rows = [*BENCH_ORDER, dict(BENCH_ORDER[-1]),  # a duplicated row
            {"ID": 8, "patch_id": "P3", "type": "captioning", "output": "Elsewhere.", "split": "Train"},
            {"ID": 9, "patch_id": "P4", "type": "captioning", "output": "\u200b\u200b"}]
    out = tmp_path / "out"
    code, err = run_txt(capsys, txt_parquet(tmp_path / "t.parquet", rows), out, "--skip-bad")
    assert code == 0, err
    captions = json.loads((out / "index.json").read_text())["source"]["rows"]["captions"]
    assert captions == {"rows": 5, "kept": 2, "dropped": {"duplicate ID": 1, "unknown split": 1,
                                                          "patch rejected: empty caption": 1}}


@pytest.fixture()
def foreign_folders(tmp_path: Path) -> dict[Path, dict[str, str]]:
    """Folders beside ``tmp_path/out`` named like wfa's staging and parked folders, made by someone else."""
    found = {}
    for name in (".out.old-1234", ".out.staging-thesis", ".out.old-backup"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "chapter1.tex").write_text("mine")
        found[folder] = folder_digest(folder)
    return found


def test_hostile_shards_never_removes_folders_it_did_not_make(tmp_path, capsys, old_dataset, foreign_folders):
    """Issue 20 #5: any .OUT.old-* / .OUT.staging-* folder beside --out was removed silently; only folders with
    wfa's ownership marker are removed now."""
    out, _ = old_dataset
    code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "8", "--image-size", "16", "--out", out,
                        "--no-progress")
    assert code == 0, err
    for folder, digest in foreign_folders.items():
        assert folder_digest(folder) == digest


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_hostile_published_folder_follows_the_umask(tmp_path, capsys, umask):
    """Issue 20 #5: a published shard folder got mode 0700 (mkdtemp's) whatever the umask: a shared data set
    was unreadable to other users."""
    old = os.umask(umask)
    try:
        code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "8", "--image-size", "16",
                            "--out", tmp_path / "out", "--no-progress")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


def test_hostile_failed_run_leaves_nothing_it_made(tmp_path, capsys):
    """Issue 20 #5: a failed run left an empty --out that did not exist before, and .X.lock files piled up."""
    captions, images = karpathy(tmp_path / "src", [entry("missing.jpg")])
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out")
    assert code == 1 and "'missing'" in error_line(err, "shards")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out, no staging folder, no lock file
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--skip-bad")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # the lock file went with the run


def test_hostile_killed_conversion_work_folder_is_removed_by_the_next(tmp_path, capsys):
    """Issue 20 #5: a killed BigEarthNet.txt conversion left its row buckets (~2.9 GB at full size) in the work
    folder, and no later run removed them. The next conversion removes the folders of dead conversions -- not
    those of a running one, and not folders it did not make."""
    import fcntl

    from hostile import txt_parquet

    work = tmp_path / "work"
    stale, running, foreign = (work / f"wfa-bigearthnet-txt-{name}" for name in ("killed", "running", "mine"))
    for folder in (stale, running, foreign):
        folder.mkdir(parents=True)
        (folder / "bucket-00000.arrow").write_bytes(b"x" * 10_000)
    for folder in (stale, running):
        (folder / ".wfa-owner.lock").write_text("99999\n")
    holder = os.open(running / ".wfa-owner.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a conversion that is still running
    try:
        code, err = run_txt(capsys, txt_parquet(tmp_path / "t.parquet", BENCH_ORDER), tmp_path / "out")
    finally:
        os.close(holder)
    assert code == 0, err
    assert not stale.exists() and running.is_dir() and foreign.is_dir()
    assert sorted(p.name for p in work.iterdir()) == sorted([running.name, foreign.name])  # its own one is gone


@pytest.mark.parametrize("case", ["ID as text", "latitude as text", "output as numbers", "not parquet"])
def test_hostile_bigearthnet_txt_with_wrong_column_types(tmp_path, capsys, case):
    """Issue 20 #7/#9: only column names were checked: wrong types gave tracebacks or were accepted (string
    latitudes), and a parquet error did not name the file."""
    import pyarrow as pa

    from hostile import txt_parquet

    path = tmp_path / "t.parquet"
    if case == "not parquet":
        path.write_bytes(b"PAR1" + random.Random(0).randbytes(3000) + b"PAR1")
    else:
        column, kind = {"ID as text": ("ID", pa.string()), "latitude as text": ("latitude", pa.string()),
                        "output as numbers": ("output", pa.int64())}[case]
        rows = [{**r, "ID": str(r["ID"])} if column == "ID" else
                {**r, "latitude": "47.5"} if column == "latitude" else {**r, "output": 7}
                for r in BENCH_ORDER if r["type"] == "captioning"]
        txt_parquet(path, rows, {column: kind})
    code, err = run_txt(capsys, path, tmp_path / "out")
    line = error_line(err, "shards")
    assert code == 2 and str(path) in line
    assert ("not a readable parquet" if case == "not parquet" else "column types") in line
    assert not (tmp_path / "out").exists()


def test_hostile_bigearthnet_txt_nulls_are_counted_not_tracebacks(tmp_path, capsys):
    """Issue 20 #7: nulls in the BigEarthNet.txt columns gave tracebacks; a row without what it needs is skipped
    and counted."""
    from hostile import txt_parquet

    rows = [*BENCH_ORDER,
            {"ID": 10, "patch_id": None, "type": "captioning", "output": "No patch."},
            {"ID": None, "patch_id": "P5", "type": "captioning", "output": "No ID."},
            {"ID": 11, "patch_id": "P6", "type": None, "output": "No type."},
            {"ID": 12, "patch_id": "P7", "type": "captioning", "output": "No split.", "split": None},
            {"ID": 13, "patch_id": "P8", "type": "captioning", "output": None},
            {"ID": 14, "patch_id": "P9", "type": "captioning", "output": "Nulls elsewhere.", "s1_name": None,
             "input": None, "category": None, "latitude": None, "country": None}]
    out = tmp_path / "out"
    code, err = run_txt(capsys, txt_parquet(tmp_path / "t.parquet", rows), out, "--skip-bad")
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    assert index["source"]["rows"]["skipped"] == {"no ID": 1, "no patch_id": 1, "type not selected": 5,
                                                 "unknown split": 1, "unknown type": 1}
    assert index["rejected_reasons"] == {"empty caption": 1} and index["written"] == 3


def test_hostile_all_unknown_splits_are_named(tmp_path, capsys, old_dataset):
    """Issue 20 #7: a source whose every row has an unknown split name was reported as "the source is empty"."""
    from hostile import txt_parquet

    out, before = old_dataset
    rows = [{**r, "split": "Train"} for r in BENCH_ORDER]
    code, err = run_txt(capsys, txt_parquet(tmp_path / "t.parquet", rows), out)
    line = error_line(err, "shards")
    assert code == 1 and "unknown split: 2" in line and "source is empty" not in line
    assert folder_digest(out) == before


def test_hostile_dangling_out_symlink(tmp_path, capsys):
    """Issue 20 #7: a --out symlink whose target does not exist gave a traceback."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    code, err = wfa_cli(capsys, "shards", "synthetic", "--num-images", "8", "--out", link, "--no-progress")
    line = error_line(err, "shards")
    assert code == 2 and "nowhere" in line and "does not exist" in line
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_hostile_overlong_file_name_is_one_reject(tmp_path, capsys):
    """Issue 20 #7: one 300-character file name aborted a whole --skip-bad run ("File name too long")."""
    captions, images = karpathy(tmp_path / "src", [entry("x" * 300 + ".jpg")])
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--skip-bad")
    assert code == 0, err
    index = assert_complete_dataset(tmp_path / "out")
    assert index["written"] == 3 and index["rejected_reasons"] == {"missing image": 1}


def test_hostile_first_patch_does_not_decide_the_band_layout(tmp_path, capsys):
    """Issue 20 #8 (a regression): when the first BigEarthNet patch had B01 at 120 px (which the reader allows),
    every standard patch after it was rejected as "wrong band shape". Each band may now be stored at the shapes
    the data set holds; all patches are written and all of them load."""
    from open_clip import get_tokenizer

    from hostile import write_patch
    from wfa.data.loader import LoaderConfig, build_eval_loader
    from wfa.data.shard_format import NATIVE_SIZE, S2_BANDS

    root = tmp_path / "S2"
    for i in range(3):
        sizes = {band: NATIVE_SIZE[band] for band in S2_BANDS}
        if i == 0:
            sizes["B01"] = 120
        patch = write_patch(root, f"S2A_MSIL2A_20170613T101031_0_{i}", sizes, seed=i)
        (patch / f"{patch.name}_labels_metadata.json").write_text(json.dumps({"labels": ["Mixed forest"]}))
    code, err = wfa_cli(capsys, "shards", "bigearthnet", "--s2", root, "--out", tmp_path / "out", "--no-progress")
    assert code == 0, err
    index = assert_complete_dataset(tmp_path / "out")
    assert index["written"] == 3 and index["band_layout"][0]["shapes"] == [[20, 20], [120, 120]]
    loader, _ = build_eval_loader(LoaderConfig(shards=str(tmp_path / "out"), split="train", batch_size=4,
                                               image_size=32), get_tokenizer("ViT-B-32"))
    (batch,) = list(loader)
    assert batch["images"].shape == (3, 12, 32, 32) and loader.stats.skipped == 0


def test_hostile_invisible_captions_are_rejected(tmp_path, capsys):
    """Issue 20 #9: captions made only of zero-width characters were accepted as text."""
    captions, images = karpathy(tmp_path / "src", [entry("good0.jpg", "\u200b\u200d\ufeff"),
                                                   entry("good1.jpg", "a field .", "\u2060 \u200c")])
    data = json.loads(captions.read_text())
    data["images"] = data["images"][3:]
    for i, item in enumerate(data["images"]):
        item["filename"] = f"good{i}.jpg"
    captions.write_text(json.dumps(data))
    code, err = run_karpathy(capsys, captions, images, tmp_path / "out", "--skip-bad")
    assert code == 1 and "empty caption: 2" in error_line(err, "shards")


def test_hostile_duplicated_rows_count_once(tmp_path, capsys):
    """Issue 20 #9: a duplicated BigEarthNet.txt row became a second copy of the same text."""
    from hostile import txt_parquet

    out = tmp_path / "out"
    rows = BENCH_ORDER + [dict(r) for r in BENCH_ORDER]
    code, err = run_txt(capsys, txt_parquet(tmp_path / "t.parquet", rows), out,
                        "--text-types", "captioning,binary,mcq,bounding box")
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    assert index["captions"]["num_captions"] == 7 and index["source"]["rows"]["skipped"] == {"duplicate ID": 7}


def test_hostile_megabyte_patch_id_is_rejected(tmp_path, capsys):
    """Issue 20 #9: a 1 MB patch_id was accepted as a sample id (and tar member name)."""
    from hostile import txt_parquet

    rows = BENCH_ORDER + [{"ID": 99, "patch_id": "P" * 1_000_000, "type": "captioning", "output": "Huge id."}]
    out = tmp_path / "out"
    code, err = run_txt(capsys, txt_parquet(tmp_path / "t.parquet", rows), out, "--skip-bad")
    assert code == 0, err
    index = assert_complete_dataset(out)
    assert index["written"] == 2 and index["rejected_reasons"] == {"invalid id": 1}
    assert (out / "rejects.jsonl").stat().st_size < 1000


def _reben(root: Path, patches: int = 4) -> list[str]:
    """A reBEN (v2) tree of S2 + S1 patches with small native-size bands; returns the S2 patch ids."""
    from hostile import write_patch
    from wfa.data.shard_format import NATIVE_SIZE, S1_BANDS, S2_BANDS

    ids = []
    for i in range(patches):
        s2 = f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i}_1"
        write_patch(root / "BigEarthNet-S2" / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP", s2,
                    {b: NATIVE_SIZE[b] for b in S2_BANDS}, seed=i)
        write_patch(root / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043", f"S1_{i}",
                    {b: NATIVE_SIZE[b] for b in S1_BANDS}, dtype="float32", seed=i)
        ids.append(s2)
    return ids


def _metadata(path: Path, ids: list[str], labels: object = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [labels if labels is not None else ["Mixed forest"] for _ in ids]
    pq.write_table(pa.table({"patch_id": ids, "labels": labels, "split": ["train"] * len(ids),
                             "s1_name": [f"S1_{p.rsplit('_', 2)[-2]}" for p in ids]}), path)
    return path


def test_hostile_reben_patches_listed_only_in_the_snow_cloud_metadata(tmp_path, capsys):
    """Issue 20 #9: patches listed only in metadata_for_patches_with_snow_cloud_or_shadow.parquet got "missing s1
    pair ... give the v2 metadata.parquet" although it was given; the real cause is named now, and both files
    are accepted (--metadata twice)."""
    ids = _reben(tmp_path / "ben")
    main = _metadata(tmp_path / "metadata.parquet", ids[:3])
    snow = _metadata(tmp_path / "metadata_for_patches_with_snow_cloud_or_shadow.parquet", ids[3:])
    args = ("shards", "bigearthnet", "--s2", tmp_path / "ben" / "BigEarthNet-S2", "--s1",
            tmp_path / "ben" / "BigEarthNet-S1", "--no-progress")
    code, err = wfa_cli(capsys, *args, "--metadata", main, "--out", tmp_path / "one")
    line = error_line(err, "shards")
    assert code == 1 and "not in metadata" in line and "metadata_for_patches_with_snow_cloud_or_shadow" in line
    assert "missing s1 pair" not in line
    code, err = wfa_cli(capsys, *args, "--metadata", main, "--metadata", snow, "--out", tmp_path / "both")
    assert code == 0, err
    assert assert_complete_dataset(tmp_path / "both")["written"] == 4


def test_hostile_labels_given_as_a_string(tmp_path, capsys):
    """Issue 20 #9: a labels value given as a string was read letter by letter."""
    ids = _reben(tmp_path / "ben", patches=1)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"patch_id": ids, "labels": ["Mixed forest"], "split": ["train"],
                             "s1_name": ["S1_0"]}), tmp_path / "metadata.parquet")
    code, err = wfa_cli(capsys, "shards", "bigearthnet", "--s2", tmp_path / "ben" / "BigEarthNet-S2", "--s1",
                        tmp_path / "ben" / "BigEarthNet-S1", "--metadata", tmp_path / "metadata.parquet",
                        "--out", tmp_path / "out", "--no-progress")
    line = error_line(err, "shards")
    assert code == 2 and "metadata.parquet" in line and "not a list of label names" in line


def test_hostile_progress_is_logged_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """Issue 20 #10: a 20-minute conversion printed nothing when stderr was not a terminal (nohup, CI, a log
    file): tqdm's bar is off there. Now progress lines are printed (at the end at least, every 30 s before)."""
    from hostile import txt_parquet

    code = wfa.cli.main(["shards", "bigearthnet-txt", "--parquet", str(txt_parquet(tmp_path / "t.parquet",
                                                                                    BENCH_ORDER)),
                         "--procedural-images", "--procedural-scale", "10", "--out", str(tmp_path / "out"),
                         "--work-dir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith("sorting rows by patch: 100%") for line in lines), err
    assert any(line.startswith("writing shards: 100%") and "2/2" in line for line in lines), err
    assert "\r" not in err
