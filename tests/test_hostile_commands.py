"""Hostile input to ``wfa redundancy`` and ``wfa demo``: output paths that cannot be written, nonsense numbers,
a caption file built to exhaust memory. Every case checks the exit code, the one-line message with the command's
prefix, and that nothing was written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hostile import error_line, wfa_cli


def caption_file(path: Path, groups: list[list[str]]) -> Path:
    images = [{"filename": f"{i}.tif", "split": "train", "sentences": [{"raw": c} for c in group]}
              for i, group in enumerate(groups)]
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


# -- wfa redundancy ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["--out is a folder", "--plot under a file", "--workers 0", "--tau -1"])
def test_hostile_redundancy_unusable_arguments(tmp_path, capsys, case):
    """Issue 20 #7: `wfa redundancy` with --out a folder or --plot under a file ended in a traceback after the
    whole report was computed, and its errors lacked the `wfa redundancy:` prefix."""
    captions = caption_file(tmp_path / "c.json", [["a road .", "a road ."], ["a field ."]])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    extra = {"--out is a folder": ["--out", tmp_path], "--plot under a file": ["--plot", blocker / "p.png"],
             "--workers 0": ["--workers", "0"], "--tau -1": ["--tau", "-1"]}[case]
    code, err = wfa_cli(capsys, "redundancy", "--captions", captions, *extra)
    line = error_line(err, "redundancy")
    assert code == 2 and case.split()[0] in line
    assert blocker.read_text() == "x"


def test_hostile_redundancy_errors_have_the_prefix(tmp_path, capsys):
    """Issue 20 #7: "error: caption file not found" was printed without `wfa redundancy:`."""
    code, err = wfa_cli(capsys, "redundancy", "--captions", tmp_path / "missing.json")
    assert code == 2 and "not found" in error_line(err, "redundancy")


def test_hostile_redundancy_caps_captions_per_image(tmp_path, capsys):
    """Issue 20 #7: 1,500 captions for one image took 2.2 GB (BLEU over K^2 pairs); an image over the 1,000 that
    `wfa shards` accepts is skipped and counted like one without captions."""
    groups = [["a road .", "a road near houses ."], [f"caption number {i} ." for i in range(1500)], []]
    out = tmp_path / "r.json"
    code, err = wfa_cli(capsys, "redundancy", "--captions", caption_file(tmp_path / "c.json", groups), "--out", out)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["num_images"] == 1 and report["skipped_images"] == 2
    assert report["skipped_reasons"] == {"no captions": 1, "too many captions": 1}


# -- wfa demo ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["--num-images 0", "--minutes -1", "--minutes nan", "--steps 0", "--batch-size 0",
                                  "--num-images 20", "--data without index"])
def test_hostile_demo_nonsense_numbers(tmp_path, capsys, monkeypatch, case):
    """Issue 20 #7: `wfa demo --num-images 0` crashed, --minutes -1 was accepted; every number is checked before
    anything is written."""
    import wfa.trainer

    monkeypatch.setattr(wfa.trainer, "train", lambda cfg: pytest.fail("training started"))
    out = tmp_path / "demo"
    extra = case.split() if case != "--data without index" else ["--data", str(tmp_path)]
    code, err = wfa_cli(capsys, "demo", "--out", out, *extra)
    line = error_line(err, "demo")
    assert code == 2 and extra[0] in line
    assert not out.exists()


@pytest.mark.parametrize("case", ["read-only folder", "under a file"])
def test_hostile_demo_out_that_cannot_be_written(tmp_path, capsys, monkeypatch, case):
    """Issue 20 #7: a read-only --out gave a PermissionError traceback after the shards were drawn."""
    import wfa.commands.paths

    out = tmp_path / "demo"
    if case == "read-only folder":
        out.mkdir()
        out.chmod(0o555)
        real = os.access  # root may write anyway: stand for a user who may not
        monkeypatch.setattr(wfa.commands.paths.os, "access",
                            lambda path, mode: False if Path(path) == out else real(path, mode))
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "demo"
    code, err = wfa_cli(capsys, "demo", "--out", out, "--num-images", "40")
    line = error_line(err, "demo")
    assert code == 2 and "cannot create files" in line
    if case == "read-only folder":
        out.chmod(0o755)
        assert list(out.iterdir()) == []
