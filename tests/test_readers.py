"""Readers: Karpathy (real UCM), BigEarthNet GeoTIFF v1/v2, LMDB, BigEarthNet.txt parquet, label captions."""
from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from wfa.data.bigearthnet import S1_BANDS, S2_BANDS, BigEarthNetReader, stack_bands
from wfa.data.bigearthnet_txt import (
    COLUMNS,
    BigEarthNetTxtReader,
    bbox_to_text,
    binary_to_text,
    mcq_to_text,
)
from wfa.data.karpathy import KarpathyReader, load_karpathy, read_caption_groups
from wfa.data.label_captions import V1_TO_V2, V2_LABELS, label_captions, stable_seed, to_v2_labels
from wfa.data.lmdb_reader import LMDBReader
from wfa.data.sample import BadItemError, Rejected, Sample

V1_PAIRS = {
    "S2A_MSIL2A_20170617T113321_36_85": "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85",
    "S2A_MSIL2A_20170617T113321_4_55": "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55",
    "S2A_MSIL2A_20171221T112501_56_35": "S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35",
}
V2_S2 = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
V2_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"


def _by_id(items):
    return {item.id: item for item in items}


# ---------------------------------------------------------------- Karpathy / UCM


@pytest.fixture(scope="module")
def ucm_samples(ucm_dir: Path) -> list:
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", labels=ucm_dir / "labels.csv")
    assert len(reader) == 2100
    return list(reader)


def test_ucm_reads_every_image_with_its_exact_captions(ucm_dir: Path, ucm_samples: list) -> None:
    document = json.loads((ucm_dir / "dataset.json").read_text())
    assert all(isinstance(s, Sample) for s in ucm_samples)
    assert len(ucm_samples) == 2100
    for entry, sample in zip(document["images"], ucm_samples):
        assert sample.id == Path(entry["filename"]).stem
        assert sample.captions == [sentence["raw"] for sentence in entry["sentences"]]
        assert sample.split == entry["split"]
    assert Counter(s.split for s in ucm_samples) == {"train": 1680, "val": 210, "test": 210}
    assert read_caption_groups(ucm_dir / "dataset.json") == [s.captions for s in ucm_samples]


def test_ucm_resolves_tif_names_to_jpg_and_reads_rgb(ucm_dir: Path, ucm_samples: list) -> None:
    first = ucm_samples[0]
    assert first.meta["filename"] == "1.tif" and first.meta["path"] == "1.jpg"
    assert first.image.mode == "RGB" and first.image.size == (256, 256)
    with Image.open(ucm_dir / "images" / "1.jpg") as reference:
        assert np.array_equal(np.asarray(first.image), np.asarray(reference.convert("RGB")))
    assert first.labels == ["agricultural"]
    assert len({s.labels[0] for s in ucm_samples}) == 21


def test_ucm_split_filter(ucm_dir: Path) -> None:
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", splits=["val", "test"])
    assert len(reader) == 420


def _karpathy_fixture(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "good.jpg")
    Image.fromarray(rgb).save(images / "stem.png")
    tifffile.imwrite(images / "deep.tif", (rgb.astype(np.uint16) * 257))  # 16-bit RGB: PIL cannot, tifffile can
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    Image.fromarray(rgb).save(images / "nocaps.jpg")
    Image.fromarray(rgb).save(images / "blank.jpg")

    def entry(name: str, captions: list[str], split: str = "train") -> dict:
        return {"filename": name, "split": split, "sentences": [{"raw": c} for c in captions]}

    document = {
        "dataset": "fixture",
        "images": [
            entry("good.jpg", ["a road", "a road"]),
            entry("stem.tif", ["a park"], "val"),
            entry("deep.tif", ["a field"]),
            entry("missing.tif", ["nothing here"]),
            entry("corrupt.jpg", ["broken"]),
            entry("nocaps.jpg", []),
            entry("blank.jpg", ["fine", "   "]),
            entry("good.png", ["same id as good.jpg"]),
        ],
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(document))
    return path, images


def test_karpathy_bad_items_are_rejected_by_name(tmp_path: Path) -> None:
    captions, images = _karpathy_fixture(tmp_path)
    reader = KarpathyReader(captions, images)
    listed = list(reader)
    assert len(listed) == len(reader) == 8
    duplicate = listed.pop()
    assert (duplicate.id, duplicate.reason) == ("good", "duplicate id") and "good.png" in duplicate.detail
    items = _by_id(listed)
    assert isinstance(items["good"], Sample) and items["good"].captions == ["a road", "a road"]
    assert items["stem"].meta["path"] == "stem.png" and items["stem"].split == "val"
    deep = items["deep"]
    assert isinstance(deep, Sample) and deep.image.mode == "RGB" and deep.image.size == (20, 16)
    expected = {
        "missing": ("missing image", "missing.tif"),
        "corrupt": ("unreadable image", "corrupt.jpg"),
        "nocaps": ("no captions", "nocaps.jpg"),
        "blank": ("empty caption", "caption 1"),
    }
    for item_id, (reason, detail) in expected.items():
        rejected = items[item_id]
        assert isinstance(rejected, Rejected), item_id
        assert rejected.reason == reason and detail in rejected.detail
        assert item_id in str(rejected)


def test_karpathy_structure_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for document, message in (
        ({"annotations": []}, "'images' list"),
        ({"images": [{"split": "train", "sentences": []}]}, "images[0] has no 'filename'"),
        ({"images": [{"filename": "a.jpg", "sentences": [{"tokens": []}]}]}, "sentences[0] has no 'raw'"),
    ):
        bad.write_text(json.dumps(document))
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_karpathy(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_caption_groups(bad)


def test_bad_item_error_names_item() -> None:
    error = BadItemError("17", "missing image")
    assert "17" in str(error) and "missing image" in str(error) and "--skip-bad" in str(error)


# ---------------------------------------------------------------- BigEarthNet GeoTIFF


def _upsampled(array: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    tensor = torch.from_numpy(array.astype(np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(tensor, size=(120, 120), mode=mode, **kwargs)[0, 0].numpy()


def _check_against_tiffs(image: np.ndarray, s2_folder: Path | None, s1_folder: Path | None) -> None:
    channel = 0
    for folder, bands in ((s2_folder, S2_BANDS), (s1_folder, S1_BANDS)):
        if folder is None:
            continue
        for band in bands:
            raw = tifffile.imread(folder / f"{folder.name}_{band}.tif")
            if raw.shape == (120, 120):
                assert np.array_equal(image[channel], raw.astype(np.float32)), band
            else:
                assert np.array_equal(image[channel], _upsampled(raw)), band
            channel += 1
    assert channel == image.shape[0]


def test_v1_s1s2_pairs_equal_geotiffs(ben_v1_dir: Path) -> None:
    reader = BigEarthNetReader(root=ben_v1_dir, mode="s1s2")
    assert reader.layout == "v1" and reader.bands == S2_BANDS + S1_BANDS and len(reader) == 11
    items = _by_id(reader)
    samples = {i: s for i, s in items.items() if isinstance(s, Sample)}
    assert set(samples) == set(V1_PAIRS)
    assert {s.reason for s in items.values() if isinstance(s, Rejected)} == {"missing s1 pair"}
    for s2_id, sample in samples.items():
        assert sample.image.shape == (14, 120, 120) and sample.image.dtype == np.float32
        assert sample.meta["s1_patch"] == V1_PAIRS[s2_id]
        _check_against_tiffs(sample.image, ben_v1_dir / "S2" / s2_id, ben_v1_dir / "S1" / V1_PAIRS[s2_id])
        assert len(sample.captions) == 5 and sample.split == "train" and sample.bands == reader.bands
    arable = samples["S2A_MSIL2A_20170617T113321_36_85"]
    assert arable.labels == ["Arable land", "Pastures"]
    assert arable.meta["labels_v1"] == ["Non-irrigated arable land", "Pastures"]
    assert samples["S2A_MSIL2A_20170617T113321_4_55"].meta["labels_v1"] == ["Pastures"]
    again = _by_id(BigEarthNetReader(root=ben_v1_dir, mode="s1s2", k=3))
    assert again[arable.id].captions == arable.captions[:3]  # same seed: the same first captions


def test_split_and_mapping_files(ben_v1_dir: Path, tmp_path: Path) -> None:
    s2_id = "S2A_MSIL2A_20170617T113321_4_55"
    splits = tmp_path / "splits.csv"
    splits.write_text(f"patch_id,split\n{s2_id},validation\n")
    mapping = tmp_path / "pairs.csv"
    mapping.write_text(f"patch_id,s1_name\n{s2_id},{V1_PAIRS['S2A_MSIL2A_20171221T112501_56_35']}\n")
    items = _by_id(BigEarthNetReader(root=ben_v1_dir, mode="s1s2", splits=splits, mapping=mapping))
    assert items[s2_id].split == "validation" and items["S2A_MSIL2A_20170617T113321_36_85"].split == "train"
    # an explicit mapping wins over corresponding_s2_patch in the S1 json files
    assert items[s2_id].meta["s1_patch"] == V1_PAIRS["S2A_MSIL2A_20171221T112501_56_35"]
    splits.write_text("name,fold\nx,train\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['patch_id', 'split'\]"):
        BigEarthNetReader(root=ben_v1_dir, mode="s2", splits=splits)


def test_v1_single_sensor_modes_and_nearest(ben_v1_dir: Path) -> None:
    s2 = list(BigEarthNetReader(root=ben_v1_dir, mode="s2", resample="nearest"))
    assert len(s2) == 11 and all(isinstance(s, Sample) and s.image.shape == (12, 120, 120) for s in s2)
    folder = ben_v1_dir / "S2" / s2[0].id
    b01 = tifffile.imread(folder / f"{s2[0].id}_B01.tif")
    b05 = tifffile.imread(folder / f"{s2[0].id}_B05.tif")
    assert np.array_equal(s2[0].image[0], np.kron(b01, np.ones((6, 6))).astype(np.float32))
    assert np.array_equal(s2[0].image[4], np.kron(b05, np.ones((2, 2))).astype(np.float32))
    s1 = list(BigEarthNetReader(root_s1=ben_v1_dir / "S1", mode="s1"))
    assert len(s1) == 6 and all(isinstance(s, Sample) and s.image.shape == (2, 120, 120) for s in s1)
    _check_against_tiffs(s1[0].image, None, ben_v1_dir / "S1" / s1[0].id)


def _v2_metadata(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "metadata.parquet"
    table = pa.table(
        {
            "patch_id": [V2_S2],
            "labels": [["Coniferous forest", "Inland waters"]],
            "split": ["test"],
            "s1_name": [V2_S1],
        }
    )
    pq.write_table(table, path)
    return path


def test_v2_sample_equals_geotiffs(ben_v2_dir: Path, tmp_path: Path) -> None:
    bare = BigEarthNetReader(root=ben_v2_dir, mode="s1s2")
    assert bare.layout == "v2" and bare.single_pair == (V2_S2, V2_S1)
    [rejected] = list(bare)
    assert isinstance(rejected, Rejected) and rejected.reason == "no labels"
    s2_folder = next((ben_v2_dir / "BigEarthNet-S2").glob(f"*/{V2_S2}"))
    s1_folder = next((ben_v2_dir / "BigEarthNet-S1").glob(f"*/{V2_S1}"))
    _check_against_tiffs(bare.load(V2_S2), s2_folder, s1_folder)

    reader = BigEarthNetReader(root=ben_v2_dir, mode="s1s2", metadata=_v2_metadata(tmp_path))
    assert reader.single_pair is None
    [sample] = list(reader)
    assert isinstance(sample, Sample) and sample.split == "test"
    assert sample.labels == ["Coniferous forest", "Inland waters"] and len(sample.captions) == 5
    assert sample.meta["s1_patch"] == V2_S1 and "s1_pairing" not in sample.meta and "labels_v1" not in sample.meta
    _check_against_tiffs(sample.image, s2_folder, s1_folder)
    given = list(BigEarthNetReader(root=ben_v2_dir, mode="s2", captions={V2_S2: ["a caption"]}))[0]
    assert given.captions == ["a caption"] and given.image.shape == (12, 120, 120)


@pytest.mark.parametrize("mode", ["s2", "s1", "s1s2"])
def test_lmdb_equals_geotiffs(ben_v2_dir: Path, tmp_path: Path, mode: str) -> None:
    metadata = _v2_metadata(tmp_path)
    tiffs = list(BigEarthNetReader(root=ben_v2_dir, mode=mode, metadata=metadata))
    lmdb = LMDBReader(ben_v2_dir / "lmdb", mode=mode, metadata=metadata)
    rows = list(lmdb)
    assert len(rows) == len(tiffs) == 1
    assert isinstance(rows[0], Sample) and isinstance(tiffs[0], Sample)
    assert rows[0].id == tiffs[0].id == (V2_S1 if mode == "s1" else V2_S2)
    assert rows[0].image.dtype == np.float32 and np.array_equal(rows[0].image, tiffs[0].image)
    assert rows[0].captions == tiffs[0].captions and rows[0].labels == tiffs[0].labels
    assert lmdb.bands == tiffs[0].bands


def _copy_v1_patch(ben_v1_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    s2_id = "S2A_MSIL2A_20170617T113321_4_55"
    root = tmp_path / "ben"
    shutil.copytree(ben_v1_dir / "S2" / s2_id, root / "S2" / s2_id)
    shutil.copytree(ben_v1_dir / "S1" / V1_PAIRS[s2_id], root / "S1" / V1_PAIRS[s2_id])
    return root, s2_id


@pytest.mark.parametrize(
    ("damage", "reason", "detail"),
    [
        ("delete_B05", "missing band", "B05"),
        ("shape_B02", "wrong band shape", "B02"),
        ("nan_VV", "nan values", "VV"),
        ("corrupt_B11", "unreadable band", "B11"),
        ("delete_s1", "missing s1 pair", "S1A_IW_GRDH"),
    ],
)
def test_broken_patches_are_rejected(ben_v1_dir: Path, tmp_path: Path, damage: str, reason: str, detail: str) -> None:
    root, s2_id = _copy_v1_patch(ben_v1_dir, tmp_path)
    s2, s1 = root / "S2" / s2_id, root / "S1" / V1_PAIRS[s2_id]
    if damage == "delete_B05":
        (s2 / f"{s2_id}_B05.tif").unlink()
    elif damage == "shape_B02":
        tifffile.imwrite(s2 / f"{s2_id}_B02.tif", np.ones((50, 50), dtype=np.uint16))
    elif damage == "nan_VV":
        vv = tifffile.imread(s1 / f"{s1.name}_VV.tif")
        vv[3, 4] = np.nan
        tifffile.imwrite(s1 / f"{s1.name}_VV.tif", vv)
    elif damage == "corrupt_B11":
        (s2 / f"{s2_id}_B11.tif").write_bytes(b"II*\x00garbage")
    else:
        shutil.rmtree(s1)
        s1.parent.mkdir(exist_ok=True)
    mapping = {s2_id: V1_PAIRS[s2_id]}
    [item] = list(BigEarthNetReader(root=root, mode="s1s2", mapping=mapping))
    assert isinstance(item, Rejected) and item.id == s2_id
    assert item.reason == reason and detail in item.detail


def test_lmdb_broken_blob_is_rejected(tmp_path: Path) -> None:
    import lmdb
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    good = {band: rng.integers(0, 3000, (NATIVE, NATIVE), dtype=np.uint16) for band, NATIVE in
            [("B01", 20), ("B02", 120), ("B03", 120), ("B04", 120), ("B05", 60), ("B06", 60), ("B07", 60),
             ("B08", 120), ("B8A", 60), ("B09", 20), ("B11", 60), ("B12", 60)]}
    partial = {band: array for band, array in good.items() if band != "B8A"}
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"S2_good", save(good))
        txn.put(b"S2_partial", save(partial))
        txn.put(b"S2_corrupt", b"not safetensors")
    env.close()
    labels = {key: ["Pastures"] for key in ("S2_good", "S2_partial", "S2_corrupt")}
    items = _by_id(LMDBReader(tmp_path / "db", mode="s2", labels=labels))
    assert np.array_equal(items["S2_good"].image, stack_bands(good, S2_BANDS))
    assert (items["S2_partial"].reason, items["S2_partial"].detail) == ("missing band", "B8A")
    assert items["S2_corrupt"].reason == "unreadable image"


def test_readers_pickle_and_index(ben_v1_dir: Path, ben_v2_dir: Path, tmp_path: Path) -> None:
    """The shard writer ships readers to worker processes and calls ``sample_at(i)`` there."""
    readers = [
        KarpathyReader(*_karpathy_fixture(tmp_path)),
        BigEarthNetReader(root=ben_v1_dir, mode="s1s2"),
        LMDBReader(ben_v2_dir / "lmdb", mode="s2", captions={V2_S2: ["c"]}),
    ]
    for reader in readers:
        copy = pickle.loads(pickle.dumps(reader))
        for index in range(len(reader)):
            original, shipped = reader.sample_at(index), copy.sample_at(index)
            assert type(original) is type(shipped) and original.id == shipped.id
            if isinstance(original, Sample):
                assert np.array_equal(np.asarray(original.image), np.asarray(shipped.image))
                assert original.captions == shipped.captions
        assert [item.id for item in reader] == [reader.sample_at(i).id for i in range(len(reader))]


def test_reader_argument_errors(ben_v1_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        BigEarthNetReader(root=ben_v1_dir, mode="rgb")
    with pytest.raises(ValueError, match="needs root_s1"):
        BigEarthNetReader(root_s2=ben_v1_dir / "S2", mode="s1s2")
    with pytest.raises(ValueError, match="data.mdb"):
        LMDBReader(tmp_path)


# ---------------------------------------------------------------- BigEarthNet.txt


def _txt_rows() -> list[dict]:
    def row(i, patch, kind, question, answer, split="train", s1=None):
        return {
            "ID": i, "s1_name": s1 or f"S1_{patch}", "patch_id": patch, "input": question, "output": answer,
            "type": kind, "category": {"captioning": "caption"}.get(kind, "presence"), "split": split,
            "latitude": 47.5, "longitude": 13.0, "country": "Austria", "season": "Summer", "climate_zone": "Dfb",
        }

    return [
        row(7, "P_b", "captioning", "Describe the image.", "Forest next to a lake."),
        row(1, "P_a", "captioning", "Describe the image.", "Fields in the north."),
        row(3, "P_a", "binary", "Is there a forest in the image?", "no"),
        row(2, "P_a", "captioning", "Describe the image.", "Fields in the north."),
        row(4, "P_a", "mcq", "Which season is it? A) winter B) summer", "B"),
        row(5, "P_a", "bounding box", "Locate <ref>the lake</ref>.",
            "<ref>the lake</ref><box>[0.7 0.7, 0.9 0.9]</box>"),
        row(6, "P_a", "binary", "Is there a lake?", "perhaps"),
        row(8, "P_b", "binary", "Are there any pastures?", "yes"),
        row(9, "P_c", "captioning", "Describe the image.", "Mostly arable land.", split="test"),
        row(10, "P_d", "captioning", "Describe the image.", "  "),
        row(11, "P_e", "captioning", "Describe the image.", "Split one.", split="train"),
        row(12, "P_e", "captioning", "Describe the image.", "Split two.", split="validation"),
        row(13, "P_f", "binary", "Is there a road?", "yes"),
        row(14, "P_g", "captioning", "Describe.", "Unknown split.", split="holdout"),
    ]


def _write_txt(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"ID": pa.int64(), "latitude": pa.float64(), "longitude": pa.float64()}
    table = pa.table({c: pa.array([r.get(c) for r in rows], type=types.get(c, pa.string())) for c in columns})
    pq.write_table(table, path, row_group_size=4)
    return path


def _fake_images(patch_id: str) -> np.ndarray:
    return np.full((2, 4, 4), float(ord(patch_id[-1])), dtype=np.float32)


def test_txt_groups_captions_by_patch(tmp_path: Path) -> None:
    parquet = _write_txt(tmp_path / "ben.parquet", _txt_rows())
    reader = BigEarthNetTxtReader(parquet, images=_fake_images, bands=["x", "y"])
    items = list(reader)
    assert [i.id for i in items] == ["P_a", "P_b", "P_c", "P_d", "P_e"]  # sorted; P_f has no caption rows
    by_id = _by_id(items)
    assert by_id["P_a"].captions == ["Fields in the north.", "Fields in the north."]  # ID order, repeats kept
    assert by_id["P_b"].captions == ["Forest next to a lake."] and by_id["P_b"].split == "train"
    assert by_id["P_c"].split == "test" and by_id["P_c"].bands == ["x", "y"]
    assert np.array_equal(by_id["P_b"].image, _fake_images("P_b"))
    assert by_id["P_a"].meta["s1_name"] == "S1_P_a" and by_id["P_a"].meta["country"] == "Austria"
    assert (by_id["P_d"].reason, by_id["P_d"].detail) == ("empty caption", "captioning row ID 10 has an empty output")
    assert by_id["P_e"].reason == "conflicting splits"
    stats = reader.stats
    assert stats["rows_read"] == 14
    assert stats["rows_by_type"] == {"binary": 4, "bounding box": 1, "captioning": 8, "mcq": 1}
    assert stats["texts_by_type"] == {"captioning": 4}
    assert stats["skipped"] == {"type not selected": 6, "unknown split": 1}


def test_txt_text_type_conversions_and_split_filter(tmp_path: Path) -> None:
    parquet = _write_txt(tmp_path / "ben.parquet", _txt_rows())
    reader = BigEarthNetTxtReader(
        parquet, images=_fake_images, bands=["x", "y"], text_types=("captioning", "binary", "mcq", "bounding box"),
        splits=["train"],
    )
    by_id = _by_id(reader)
    assert set(by_id) == {"P_a", "P_b", "P_d", "P_e", "P_f"}
    assert by_id["P_e"].reason == "conflicting splits"  # even though only its train row is selected
    assert by_id["P_a"].captions == [
        "Fields in the north.",
        "Fields in the north.",
        "There is no forest in the image.",
        "Which season is it: summer.",
        "The lake in the lower right.",
    ]
    assert by_id["P_b"].captions == ["Forest next to a lake.", "There are pastures."]
    assert by_id["P_f"].captions == ["There is a road."]
    assert reader.stats["skipped"]["unparsed binary"] == 1
    assert reader.stats["skipped"]["split not selected"] == 2
    assert reader.stats["texts_by_type"] == {"captioning": 3, "binary": 3, "mcq": 1, "bounding box": 1}


def test_txt_with_geotiff_imagery(ben_v2_dir: Path, tmp_path: Path) -> None:
    rows = [r for r in _txt_rows() if r["patch_id"] == "P_b"]
    for r in rows:
        r["patch_id"], r["s1_name"] = V2_S2, V2_S1
    images = BigEarthNetReader(root=ben_v2_dir, mode="s1s2")
    [sample] = list(BigEarthNetTxtReader(_write_txt(tmp_path / "t.parquet", rows), images=images))
    assert sample.bands == S2_BANDS + S1_BANDS
    assert np.array_equal(sample.image, images.load(V2_S2, s1_name=V2_S1))
    missing = [dict(rows[0], patch_id="S2_not_there")]
    [rejected] = list(BigEarthNetTxtReader(_write_txt(tmp_path / "m.parquet", missing), images=images))
    assert rejected.reason == "missing image" and "S2_not_there" in rejected.detail


def test_txt_schema_and_argument_errors(tmp_path: Path) -> None:
    columns = [c for c in COLUMNS if c != "season"] + ["extra"]
    rows = [dict(r, extra="x") for r in _txt_rows()]
    bad = _write_txt(tmp_path / "bad.parquet", rows, columns=columns)
    with pytest.raises(ValueError, match=r"missing columns \['season'\], unexpected columns \['extra'\]"):
        BigEarthNetTxtReader(bad, images=_fake_images, bands=["x", "y"])
    good = _write_txt(tmp_path / "good.parquet", _txt_rows())
    with pytest.raises(ValueError, match="holds no imagery"):
        BigEarthNetTxtReader(good)
    with pytest.raises(ValueError, match="text_types"):
        BigEarthNetTxtReader(good, images=_fake_images, text_types=("vqa",))


def test_text_conversion_rules() -> None:
    assert binary_to_text("Is there a forest? Answer yes or no.", "Yes") == "There is a forest."
    assert binary_to_text("Are there any rivers in the patch?", "no") == "There are no rivers in the patch."
    assert binary_to_text("Does the image contain <ref>pastures</ref>?", "no") == "The image does not contain pastures."
    assert binary_to_text("Does this scene show urban fabric?", "yes") == "The scene shows urban fabric."
    assert binary_to_text("Was it taken in winter?", "yes") == "Was it taken in winter? Yes."
    assert binary_to_text("Is there a forest?", "maybe") is None
    country = mcq_to_text("In which country is the patch?\nA. Portugal\nB. Austria", "A")
    assert country == "In which country is the patch: Portugal."
    assert mcq_to_text("What covers most of it? (A) forest (B) water", "(B) water") == "What covers most of it: water."
    assert bbox_to_text("Find <ref>the river</ref>.", "<box>[0.0 0.4, 0.2 0.6]</box>") == "The river on the left."
    assert bbox_to_text("Find <ref>fields</ref>.", "[0.4 0.0, 0.6 0.2], [0.0 0.0, 1.0 0.9]") == (
        "Fields at the top and covering most of the image."
    )
    assert bbox_to_text("Find <ref>a lake</ref>.", "<point>(0.5, 0.5)</point>") == "A lake in the center."
    assert bbox_to_text("Find the lake.", "[0.1 0.1, 0.2 0.2]") is None  # no referring phrase
    assert bbox_to_text("Find <ref>x</ref>.", "[10 10, 90 90]") is None  # not normalised


# ---------------------------------------------------------------- label captions


def test_v1_mapping_covers_the_43_classes() -> None:
    assert len(V1_TO_V2) == 43 and len(V2_LABELS) == 19
    assert {v for v in V1_TO_V2.values() if v is not None} == set(V2_LABELS)
    assert sum(v is None for v in V1_TO_V2.values()) == 11
    assert to_v2_labels(["Sea and ocean", "Estuaries", "Burnt areas", "Pastures"]) == ["Pastures", "Marine waters"]
    with pytest.raises(ValueError, match="unknown BigEarthNet label"):
        to_v2_labels(["Lava"])


def test_label_captions_deterministic_and_varied() -> None:
    labels = ["Coniferous forest", "Inland waters", "Arable land"]
    first = label_captions(labels, k=5, seed=stable_seed("patch-1"))
    assert first == label_captions(labels, k=5, seed=stable_seed("patch-1"))
    assert first != label_captions(labels, k=5, seed=stable_seed("patch-2"))
    assert len(set(first)) == 5
    assert len({caption.split()[0] for caption in first}) >= 3  # different templates, not one pattern
    single = label_captions(["Pastures"], k=8, seed=3)
    assert len(set(single)) == 8
    assert all(caption.endswith(".") for caption in first + single)
    assert stable_seed("patch-1") == stable_seed("patch-1")
    with pytest.raises(ValueError, match="nothing to caption"):
        label_captions(["Burnt areas"])
