"""BigEarthNet.txt at scale: the stand-in generator, procedural imagery, the streaming reader and the
conversion through ``wfa shards bigearthnet-txt`` on a small count (the full-size figures are in
BENCHMARKS.md)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import wfa.cli
from wfa.data.bigearthnet_txt import COLUMNS, SPLITS, TEXT_TYPES, BigEarthNetTxtReader
from wfa.data.sample import Rejected, Sample
from wfa.data.shard_format import NATIVE_SIZE, S1_BANDS, S2_BANDS
from wfa.data.txt_standin import BENCH_PATCHES, BENCH_ROWS, FULL_PATCHES, FULL_ROWS, ProceduralImages, write_standin

PATCHES = 600


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("standin") / "standin.parquet"
    return path, write_standin(path, num_patches=PATCHES, seed=3, progress=False)


def test_standin_schema_counts_and_proportions(standin: tuple[Path, dict]) -> None:
    path, counts = standin
    table = pq.read_table(path)
    assert tuple(table.column_names) == COLUMNS and table.num_rows == counts["rows"]
    assert counts["patches"] == PATCHES == len(set(table.column("patch_id").to_pylist()))
    by_type = counts["rows_by_type"]
    assert set(by_type) == set(TEXT_TYPES) and set(counts["rows_by_split"]) == set(SPLITS)
    assert by_type["captioning"] == PATCHES  # one caption row per patch
    scale = PATCHES / FULL_PATCHES
    for kind, full in FULL_ROWS.items():
        assert abs(by_type[kind] - full * scale) <= 2, kind
    bench_patches = round(BENCH_PATCHES * scale)
    assert counts["rows_by_split"]["bench"] == round(BENCH_ROWS * bench_patches / BENCH_PATCHES)
    # every patch keeps one split and one S1 partner across its rows
    pairs = table.group_by("patch_id").aggregate([("split", "count_distinct"), ("s1_name", "count_distinct")])
    assert set(pairs.column("split_count_distinct").to_pylist()) == {1}
    assert set(pairs.column("s1_name_count_distinct").to_pylist()) == {1}
    patch = table.column("patch_id")[0].as_py()
    assert patch.startswith("S2") and "_MSIL2A_" in patch and table.column("s1_name")[0].as_py().startswith("S1")
    assert table.column("type").to_pylist()[:3] == ["binary"] * 3  # written type by type, not by patch


def test_standin_is_deterministic_by_seed(standin: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = standin
    again = tmp_path / "again.parquet"
    write_standin(again, num_patches=PATCHES, seed=3, progress=False)
    assert pq.read_table(again).equals(pq.read_table(path))
    other = tmp_path / "other.parquet"
    write_standin(other, num_patches=PATCHES, seed=4, progress=False)
    assert not pq.read_table(other).equals(pq.read_table(path))


def test_procedural_images_native_layout_and_determinism() -> None:
    images = ProceduralImages(mode="s1s2", seed=1)
    first, again = images.image("S2_x", "S1_x"), images.image("S2_x", "S1_x")
    assert first.bands == S2_BANDS + S1_BANDS and first.size == 120
    for band, array in first.arrays.items():
        assert array.shape == (NATIVE_SIZE[band],) * 2 and np.array_equal(array, again.arrays[band])
        assert array.dtype == (np.uint16 if band in S2_BANDS else np.float32)
    assert not np.array_equal(images.image("S2_y", "S1_y").arrays["B02"], first.arrays["B02"])
    small = ProceduralImages(scale=10).image("S2_x", "S1_x")
    assert small.size == 12 and small.arrays["B01"].shape == (2, 2)
    with pytest.raises(ValueError, match="scale"):
        ProceduralImages(scale=7)


class _Recorder:
    """An image source that records which S1 partner each patch was asked with."""

    native = True
    bands = ["VV"]
    mode = "s1s2"

    def __init__(self) -> None:
        self.calls: dict[str, str | None] = {}

    def image(self, patch_id: str, s1_name: str | None = None) -> np.ndarray:
        self.calls[patch_id] = s1_name
        return np.zeros((1, 4, 4), np.float32)


def test_streaming_buckets_give_the_same_patches_in_patch_order(standin: tuple[Path, dict], tmp_path: Path) -> None:
    path, counts = standin
    types = TEXT_TYPES
    one = BigEarthNetTxtReader(path, images=_Recorder(), text_types=types)
    many = BigEarthNetTxtReader(path, images=_Recorder(), text_types=types, bucket_rows=500, work_dir=tmp_path)
    first, second = list(one), list(many)
    assert [s.id for s in first] == [s.id for s in second] == sorted(s.id for s in first)
    assert all(a.captions == b.captions and a.meta == b.meta for a, b in zip(first, second))
    assert len(first) == PATCHES and not list(tmp_path.iterdir())  # buckets removed after the pass
    assert one.stats["texts_by_type"] == many.stats["texts_by_type"] == counts["rows_by_type"]


def test_semantics_bench_s1_partner_and_no_labels(standin: tuple[Path, dict]) -> None:
    path, _ = standin
    table = pq.read_table(path, columns=["patch_id", "s1_name", "split"]).to_pylist()
    partner = {row["patch_id"]: row["s1_name"] for row in table}
    split = {row["patch_id"]: row["split"] for row in table}
    images = _Recorder()
    bench = list(BigEarthNetTxtReader(path, images=images, splits=["bench"]))
    assert bench and all(isinstance(s, Sample) and s.split == "bench" for s in bench)
    assert {s.id for s in bench} == {p for p, sp in split.items() if sp == "bench"}
    assert images.calls == {s.id: partner[s.id] for s in bench}  # the partner is the row's s1_name
    assert all(s.labels is None and s.meta["s1_name"] == partner[s.id] for s in bench)  # label-free


def _mini_parquet(path: Path) -> Path:
    import pyarrow as pa

    rows = [
        (1, "P1", "captioning", "Describe.", "A field."),
        (2, "P1", "binary", "Is there a lake?", "maybe"),  # not yes/no: unparsed
        (3, "P1", "mcq", "Pick one.", ""),  # no options, no answer: unparsed
        (4, "P1", "bounding box", "Find <ref>the lake</ref>.", "[1.5 0.2, 0.3 0.4]"),  # outside [0, 1]: unparsed
        (5, "P2", "binary", "Is there a road?", "yes"),
        (6, "P3", "quiz", "?", "?"),  # unknown type
    ]
    columns = {name: [] for name in COLUMNS}
    for row_id, patch, kind, question, answer in rows:
        values = {"ID": row_id, "s1_name": f"S1_{patch}", "patch_id": patch, "input": question, "output": answer,
                  "type": kind, "category": "c", "split": "train", "latitude": 1.0, "longitude": 2.0,
                  "country": "Austria", "season": "Summer", "climate_zone": "Cfb"}
        for name in COLUMNS:
            columns[name].append(values[name])
    pq.write_table(pa.table(columns), path)
    return path


def test_rows_that_cannot_be_converted_are_counted_in_the_index(tmp_path: Path) -> None:
    parquet = _mini_parquet(tmp_path / "mini.parquet")
    out = tmp_path / "out"
    argv = ["shards", "bigearthnet-txt", "--parquet", str(parquet), "--procedural-images", "--procedural-scale", "10",
            "--text-types", "captioning,binary,mcq,bounding box", "--out", str(out), "--no-progress"]
    assert wfa.cli.main(argv) == 0
    index = json.loads((out / "index.json").read_text())
    rows = index["source"]["rows"]
    assert rows["rows_read"] == 6 and rows["rows_selected"] == 5
    assert rows["skipped"] == {"unknown type": 1, "unparsed binary": 1, "unparsed mcq": 1, "unparsed bounding box": 1}
    assert rows["texts_by_type"] == {"captioning": 1, "binary": 1, "mcq": 0, "bounding box": 0}
    assert index["written"] == 2 and index["rejected"] == 0


def test_cli_converts_the_standin_with_procedural_images(standin: tuple[Path, dict], tmp_path: Path) -> None:
    path, counts = standin
    out = tmp_path / "out"
    argv = ["shards", "bigearthnet-txt", "--parquet", str(path), "--procedural-images", "--procedural-scale", "10",
            "--text-types", ",".join(TEXT_TYPES), "--out", str(out), "--no-progress", "--work-dir", str(tmp_path)]
    assert wfa.cli.main(argv) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["read"] == index["written"] == PATCHES and index["rejected"] == 0
    assert index["captions"]["num_captions"] == counts["rows"]
    assert index["source"]["rows"]["texts_by_type"] == counts["rows_by_type"]
    assert {split: info["num_samples"] for split, info in index["splits"].items()} == {
        split: n for split, n in _patches_per_split(path).items()}
    assert index["image_format"] == "safetensors.zst" and index["image_size"] == [12, 12]
    shapes = [entry["shape"] for entry in index["band_layout"]]
    assert shapes == [[NATIVE_SIZE[b] // 10] * 2 for b in S2_BANDS + S1_BANDS]


def _patches_per_split(path: Path) -> dict[str, int]:
    table = pq.read_table(path, columns=["patch_id", "split"]).group_by(["patch_id", "split"]).aggregate([])
    splits = table.column("split").to_pylist()
    return {split: splits.count(split) for split in set(splits)}


def test_rejected_patch_keeps_counts_whole(tmp_path: Path) -> None:
    """A patch whose image fails is a Rejected item, not a silent gap."""
    parquet = _mini_parquet(tmp_path / "mini.parquet")

    def failing(patch_id: str) -> np.ndarray:
        raise FileNotFoundError(f"no imagery for {patch_id}")

    items = list(BigEarthNetTxtReader(parquet, images=failing, bands=["x"], text_types=TEXT_TYPES))
    assert [type(i) for i in items] == [Rejected, Rejected]
    assert {i.reason for i in items} == {"missing image"}
