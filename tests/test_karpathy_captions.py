"""The one Karpathy caption parser (wfa.data.karpathy.read_karpathy_captions) and the readers built on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wfa.data.karpathy import KarpathyReader, read_caption_groups, read_karpathy_captions


def test_ucm_entries_are_the_readers_samples(ucm_dir: Path) -> None:
    document = json.loads((ucm_dir / "dataset.json").read_text())
    entries = read_karpathy_captions(ucm_dir / "dataset.json")
    assert len(entries) == len(document["images"]) == 2100
    for entry, raw in zip(entries, document["images"]):
        assert entry.filename == raw["filename"] and entry.split == raw["split"]
        assert list(entry.captions) == [sentence["raw"] for sentence in raw["sentences"]]
        assert entry.ids == {"imgid": raw["imgid"], "sentids": raw["sentids"]}
        assert entry.id == Path(raw["filename"]).stem
    test = read_karpathy_captions(ucm_dir / "dataset.json", splits=["test"])
    assert len(test) == 210 and {e.split for e in test} == {"test"}
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", splits=["test"])
    assert reader.entries == test
    assert read_caption_groups(ucm_dir / "dataset.json") == [list(e.captions) for e in entries]


def _write(path: Path, images: list[dict]) -> Path:
    path.write_text(json.dumps({"dataset": "tiny", "images": images}))
    return path


def test_default_split_and_filter(tmp_path: Path) -> None:
    captions = _write(tmp_path / "c.json", [
        {"filename": "a.jpg", "split": "val", "sentences": [{"raw": "a road"}]},
        {"filename": "sub/b.tif", "sentences": [{"raw": "a lake"}, {"raw": "water"}]},
        {"filename": "c.jpg", "split": "train", "sentences": []}])
    entries = read_karpathy_captions(captions)
    assert [(e.filename, e.split, e.captions, e.ids) for e in entries] == [
        ("a.jpg", "val", ("a road",), {}), ("sub/b.tif", None, ("a lake", "water"), {}), ("c.jpg", "train", (), {})]
    assert entries[1].id == "sub/b"
    assert [e.split for e in read_karpathy_captions(captions, default_split="train")] == ["val", "train", "train"]
    assert [e.filename for e in read_karpathy_captions(captions, splits=["train"])] == ["c.jpg"]
    assert [e.filename for e in read_karpathy_captions(captions, ["train"], default_split="train")] == [
        "sub/b.tif", "c.jpg"]


def test_malformed_entries_are_named(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.json", [{"filename": "a.jpg", "split": "val", "sentences": []},
                                         {"filename": "b.jpg", "split": 3, "sentences": []}])
    with pytest.raises(ValueError, match=r"images\[1\] \('b.jpg'\) has a 'split' that is not a string"):
        read_karpathy_captions(bad)
    noraw = _write(tmp_path / "noraw.json", [{"filename": "x.tif", "sentences": [{"tokens": []}]}])
    with pytest.raises(ValueError, match=r"images\[0\] \('x.tif'\): sentences\[0\] has no 'raw'"):
        read_karpathy_captions(noraw)
