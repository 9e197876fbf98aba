"""The shard writer and ``wfa shards``: real UCM round trip, determinism, index, every bad input."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tifffile
import webdataset as wds
from PIL import Image

import wfa.cli
from wfa.data.sample import BadItemError, Rejected, Sample
from wfa.data.shard_format import decode_bands
from wfa.data.synthetic import S2_BANDS, SyntheticReader
from wfa.data.writer import TAR_MTIME, sample_key, write_shards
from wfa.errors import ShardsError
from wfa.redundancy import bleu_uniqueness


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of a shard, read with plain tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def read_all(out: Path) -> dict[str, dict[str, Any]]:
    """Every sample of a shard folder: {key: {"split", "json", ext: bytes}} following index.json."""
    index = json.loads((out / "index.json").read_text())
    result = {}
    for split, info in index["splits"].items():
        for shard in info["shards"]:
            members = read_tar(out / shard["name"])
            assert len(members) == shard["num_samples"]
            for key, sample in members.items():
                result[key] = {**sample, "split": split, "record": json.loads(sample["json"])}
    return result


def grid_array(out: Path, sample: dict[str, Any]) -> np.ndarray:
    """A multispectral sample's stored bands on the index's grid, as the loader decodes them."""
    index = json.loads((out / "index.json").read_text())
    return decode_bands(sample["safetensors.zst"], index["band_layout"], index["image_size"], index["resample"],
                        index["bands_bytes"])


def shard_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def cli(*argv: str) -> int:
    return wfa.cli.main(["shards", *argv])


@pytest.fixture(autouse=True)
def only_shards_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the CLI with the ``shards`` subcommand only, independent of the other commands."""
    monkeypatch.setattr(wfa.cli, "COMMANDS", ("shards",))


# ---------------------------------------------------------------- real UCM, written once per module

@pytest.fixture(scope="module")
def ucm_shards(ucm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from wfa.data.karpathy import KarpathyReader

    out = tmp_path_factory.mktemp("ucm")
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", labels=ucm_dir / "labels.csv")
    index = write_shards(reader, out, workers=2, progress=False)
    return out, index


def test_ucm_round_trip_keeps_every_caption_and_split(ucm_dir: Path, ucm_shards: tuple[Path, dict]) -> None:
    out, index = ucm_shards
    document = json.loads((ucm_dir / "dataset.json").read_text())
    samples = read_all(out)
    assert len(samples) == len(document["images"]) == 2100
    for entry in document["images"]:
        stem = entry["filename"].rsplit(".", 1)[0]
        sample = samples[sample_key(stem)]
        record = sample["record"]
        assert record["id"] == stem and record["split"] == entry["split"] == sample["split"]
        assert record["captions"] == [s["raw"] for s in entry["sentences"]]
        assert len(record["labels"]) == 1
        assert np.allclose(record["weights"]["bleu"], bleu_uniqueness(record["captions"]), atol=1e-12)
        assert abs(sum(record["weights"]["bleu"]) - 1) < 1e-9
    splits = {split: info["num_samples"] for split, info in index["splits"].items()}
    assert splits == {"train": 1680, "val": 210, "test": 210}
    assert (index["read"], index["written"], index["rejected"], index["num_samples"]) == (2100, 2100, 0, 2100)
    assert index["captions"] == {"k_min": 5, "k_max": 5, "k_mean": 5.0, "num_captions": 10500,
                                 "distinct_mean": index["captions"]["distinct_mean"],
                                 "images_with_repeats": index["captions"]["images_with_repeats"]}
    assert index["captions"]["images_with_repeats"] > 0  # e.g. image 1901 repeats a sentence
    assert index["modality"] == "rgb" and index["bands"] is None and index["band_stats"] is None
    assert index["image_size"] is None  # 44 UCM images are a few pixels smaller than 256
    assert json.loads((out / "index.json").read_text()) == index
    assert not (out / "rejects.jsonl").exists()


def test_ucm_images_survive_reencoding(ucm_dir: Path, ucm_shards: tuple[Path, dict]) -> None:
    out, _ = ucm_shards
    samples = read_tar(out / "val-000000.tar")
    for key in list(samples)[:5]:
        original = np.asarray(Image.open(ucm_dir / "images" / f"{key}.jpg").convert("RGB"), np.float32)
        written = np.asarray(Image.open(io.BytesIO(samples[key]["jpg"])), np.float32)
        assert written.shape == original.shape and np.abs(written - original).mean() < 3


def test_ucm_shards_read_with_webdataset(ucm_shards: tuple[Path, dict]) -> None:
    out, index = ucm_shards
    urls = [str(out / s["name"]) for s in index["splits"]["test"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 210
    for sample in samples[:10]:
        assert set(sample) >= {"__key__", "jpg", "json"} and sample["jpg"].mode == "RGB"
        assert sample["json"]["split"] == "test" and len(sample["json"]["captions"]) == 5


# ---------------------------------------------------------------- determinism and the index

def test_same_input_gives_byte_identical_shards(tmp_path: Path) -> None:
    first = write_shards(SyntheticReader(num_images=60), tmp_path / "a", shard_size=16, workers=0, progress=False)
    second = write_shards(SyntheticReader(num_images=60), tmp_path / "b", shard_size=16, workers=2, progress=False)
    assert first == second
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    # rewriting into the same folder replaces it with the same bytes
    write_shards(SyntheticReader(num_images=60), tmp_path / "a", shard_size=16, progress=False)
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (TAR_MTIME, 0, 0, "wfa", 0o444)
    png = write_shards(SyntheticReader(num_images=10), tmp_path / "png1", image_format="png", progress=False)
    write_shards(SyntheticReader(num_images=10), tmp_path / "png2", image_format="png", progress=False)
    assert shard_files(tmp_path / "png1") == shard_files(tmp_path / "png2") and png["image_format"] == "png"
    pixels = np.asarray(Image.open(io.BytesIO(next(iter(read_all(tmp_path / "png1").values()))["png"])))
    key = next(iter(read_all(tmp_path / "png1")))
    reference = SyntheticReader(num_images=10).sample_at(int(key.rsplit("-", 1)[1]))
    assert np.array_equal(pixels, np.asarray(reference.image))  # png is lossless


def test_index_counts_shards_and_captions(tmp_path: Path) -> None:
    reader = SyntheticReader(num_images=100, captions_per_image=6)
    index = write_shards(reader, tmp_path, shard_size=16, progress=False)
    assert index["format"] == "wfa-shards" and index["writer_version"] and index["source"] == reader.source
    assert (index["num_samples"], index["read"], index["written"], index["rejected"]) == (100, 100, 100, 0)
    assert index["rejected_reasons"] == {}
    expected = {"train": 80, "val": 10, "test": 10}
    for split, n in expected.items():
        info = index["splits"][split]
        assert info["num_samples"] == n
        counts = [s["num_samples"] for s in info["shards"]]
        assert counts == [16] * (n // 16) + ([n % 16] if n % 16 else [])
        assert [s["name"] for s in info["shards"]] == [f"{split}-{i:06d}.tar" for i in range(len(counts))]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tar") == sorted(
        s["name"] for info in index["splits"].values() for s in info["shards"])
    captions = index["captions"]
    assert (captions["k_min"], captions["k_max"], captions["k_mean"], captions["num_captions"]) == (6, 6, 6.0, 600)
    assert 0 < captions["images_with_repeats"] < 100 and captions["distinct_mean"] < 6
    assert index["modality"] == "rgb" and index["image_size"] == [64, 64] and index["image_format"] == "jpg"
    records = {k: v["record"] for k, v in read_all(tmp_path).items()}
    one = records["synthetic-000003"]
    assert set(one) == {"id", "captions", "weights", "split", "labels", "meta"}
    assert one["captions"] == reader.sample_at(3).captions and one["labels"] == reader.sample_at(3).labels


def test_shards_are_bounded_by_bytes(tmp_path: Path) -> None:
    index = write_shards(SyntheticReader(num_images=40), tmp_path, max_shard_bytes=20_000, progress=False)
    shards = index["splits"]["train"]["shards"]
    assert len(shards) > 1 and sum(s["num_samples"] for s in shards) == 32
    for shard in shards:
        with tarfile.open(tmp_path / shard["name"]) as tar:
            size = sum(512 + -(-m.size // 512) * 512 for m in tar.getmembers())
        assert size <= 20_000 or shard["num_samples"] == 1


def test_key_has_no_dots() -> None:
    assert sample_key("a.b/c d.tif") == "a_b_c_d_tif"
    assert sample_key("S2A_MSIL2A_20170617T113321_36_85") == "S2A_MSIL2A_20170617T113321_36_85"


# ---------------------------------------------------------------- multispectral

def test_synthetic_multispectral_band_stats(tmp_path: Path) -> None:
    reader = SyntheticReader(num_images=40, image_size=32, multispectral=True)
    index = write_shards(reader, tmp_path, progress=False)
    assert index["modality"] == "multispectral" and index["bands"] == S2_BANDS and index["image_format"] == "safetensors.zst"
    train = np.stack([s.image for s in reader if s.split == "train"]).astype(np.float64)
    stats = index["band_stats"]
    assert stats["split"] == "train" and stats["num_pixels"] == [train.shape[0] * 32 * 32] * len(S2_BANDS)
    assert np.allclose(stats["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-10)
    assert np.allclose(stats["std"], train.std(axis=(0, 2, 3)), rtol=1e-8)
    for key, sample in read_all(tmp_path).items():
        array = grid_array(tmp_path, sample)
        assert array.shape == (12, 32, 32) and array.dtype == np.float32
        assert np.array_equal(array, reader.sample_at(int(key.rsplit("-", 1)[1])).image)
        assert sample["record"]["bands"] == S2_BANDS


def test_bigearthnet_v1_pairs_written_equal_to_the_reader(ben_v1_dir: Path, tmp_path: Path) -> None:
    from wfa.data.bigearthnet import BigEarthNetReader

    reader = BigEarthNetReader(ben_v1_dir / "S2", ben_v1_dir / "S1", mode="s1s2")
    index = write_shards(reader, tmp_path, skip_bad=True, progress=False)
    expected = {s.id: s for s in reader if isinstance(s, Sample)}
    assert index["written"] == len(expected) == 3 and index["read"] == 11
    assert index["rejected"] == 8 and index["rejected_reasons"] == {"missing s1 pair": 8}
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 8
    bands = S2_BANDS + ["VV", "VH"]
    assert index["bands"] == bands and index["image_size"] == [120, 120]
    stack = []
    for key, sample in read_all(tmp_path).items():
        array = grid_array(tmp_path, sample)
        record = sample["record"]
        assert np.array_equal(array, expected[record["id"]].image) and record["bands"] == bands
        assert record["captions"] == expected[record["id"]].captions
        stack.append(array.astype(np.float64))
    assert np.allclose(index["band_stats"]["mean"], np.mean(stack, axis=(0, 2, 3)), rtol=1e-10)


# ---------------------------------------------------------------- bad input

KARPATHY_CASES = {  # case -> reason the reader reports
    "unreadable image": "unreadable image",
    "truncated image": "unreadable image",
    "missing image": "missing image",
    "no captions": "no captions",
    "empty caption": "empty caption",
}


def karpathy_folder(root: Path, ucm_dir: Path, case: str) -> tuple[Path, Path]:
    """A 3-image Karpathy folder whose middle item ``bad`` has the problem ``case``."""
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("1", "2"):
        shutil.copy(ucm_dir / "images" / f"{name}.jpg", images / f"{name}.jpg")
    bad_sentences = [{"raw": "a bad image ."}, {"raw": "another caption ."}]
    if case == "unreadable image":
        (images / "bad.jpg").write_bytes(b"this is not a jpeg")
    elif case == "truncated image":
        (images / "bad.jpg").write_bytes((ucm_dir / "images" / "3.jpg").read_bytes()[:2000])
    elif case != "missing image":
        shutil.copy(ucm_dir / "images" / "3.jpg", images / "bad.jpg")
    if case == "no captions":
        bad_sentences = []
    if case == "empty caption":
        bad_sentences[1]["raw"] = "   "
    entries = [{"filename": "1.tif", "split": "train", "sentences": [{"raw": "one ."}, {"raw": "one again ."}]},
               {"filename": "bad.tif", "split": "train", "sentences": bad_sentences},
               {"filename": "2.tif", "split": "test", "sentences": [{"raw": "two ."}]}]
    captions = root / "dataset.json"
    captions.write_text(json.dumps({"dataset": "tiny", "images": entries}))
    return captions, images


@pytest.mark.parametrize("case", list(KARPATHY_CASES))
def test_bad_karpathy_item_stops_the_run_naming_it(case: str, ucm_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from wfa.data.karpathy import KarpathyReader

    captions, images = karpathy_folder(tmp_path / "data", ucm_dir, case)
    with pytest.raises(BadItemError) as error:
        write_shards(KarpathyReader(captions, images), tmp_path / "out", progress=False)
    assert error.value.item_id == "bad" and KARPATHY_CASES[case] in str(error.value)
    assert not (tmp_path / "out").exists()  # a failed run creates no --out, and leaves no staging folder or lock
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert cli("karpathy", "--captions", str(captions), "--images", str(images), "--out", str(tmp_path / "cli"),
               "--no-progress") == 1
    message = capsys.readouterr().err
    assert "'bad'" in message and KARPATHY_CASES[case] in message and "--skip-bad" in message


@pytest.mark.parametrize("case", list(KARPATHY_CASES))
def test_bad_karpathy_item_skipped_and_listed(case: str, ucm_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    captions, images = karpathy_folder(tmp_path / "data", ucm_dir, case)
    out = tmp_path / "out"
    assert cli("karpathy", "--captions", str(captions), "--images", str(images), "--out", str(out),
               "--skip-bad", "--workers", "0", "--no-progress") == 0
    assert "read 3, written 2, rejected 1 (written + rejected == read: True)" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert (index["read"], index["written"], index["rejected"]) == (3, 2, 1)
    assert index["rejected_reasons"] == {KARPATHY_CASES[case]: 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("bad", KARPATHY_CASES[case])]
    assert set(read_all(out)) == {"1", "2"}


def ben_folder(root: Path, ben_v1_dir: Path, case: str) -> tuple[Path, str]:
    """A 2-patch v1 tree (S2, or S1 for NaN) whose second patch is broken; returns (folder, mode)."""
    sensor = "S1" if case == "nan values" else "S2"
    patches = sorted(p.name for p in (ben_v1_dir / sensor).iterdir() if p.is_dir())[:2]
    for patch in patches:
        shutil.copytree(ben_v1_dir / sensor / patch, root / sensor / patch)
    broken = root / sensor / patches[1]
    if case == "missing band":
        (broken / f"{patches[1]}_B05.tif").unlink()
    elif case == "wrong band shape":
        tifffile.imwrite(broken / f"{patches[1]}_B02.tif", np.ones((50, 50), np.uint16))
    else:
        vv = tifffile.imread(broken / f"{patches[1]}_VV.tif").astype(np.float32)
        vv[3, 7] = np.nan
        tifffile.imwrite(broken / f"{patches[1]}_VV.tif", vv)
    return root / sensor, patches[1]


@pytest.mark.parametrize("case", ["missing band", "wrong band shape", "nan values"])
def test_bad_bigearthnet_patch_in_both_modes(case: str, ben_v1_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    folder, broken = ben_folder(tmp_path / "data", ben_v1_dir, case)
    sensor_flag = "--s1" if folder.name == "S1" else "--s2"
    out = tmp_path / "out"
    assert cli("bigearthnet", sensor_flag, str(folder), "--out", str(out), "--no-progress") == 1
    message = capsys.readouterr().err
    assert broken in message and case in message and "--skip-bad" in message
    assert not (out / "index.json").exists() and not list(out.glob("*.tar"))
    assert cli("bigearthnet", sensor_flag, str(folder), "--out", str(out), "--skip-bad", "--no-progress") == 0
    assert "read 2, written 1, rejected 1 (written + rejected == read: True)" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert index["rejected_reasons"] == {case: 1}
    assert json.loads((out / "rejects.jsonl").read_text())["id"] == broken


def _array_sample(item_id: str, image: np.ndarray, bands: list[str] | None = None, **changes: Any) -> Sample:
    fields = {"captions": ["a field .", "a green field ."], "split": "train", "labels": ["x"],
              "bands": bands if bands is not None else [f"B{i}" for i in range(image.shape[0])]}
    fields.update(changes)
    return Sample(id=item_id, image=image, **fields)


def _truncated_jpeg(path: Path) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return Image.open(path)  # lazily: decoding fails only when the writer loads it


GOOD = np.ones((3, 8, 8), np.float32)
WRITER_CASES: dict[str, tuple[Any, str]] = {  # the writer's own checks, on items a reader let through
    "nan": (lambda tmp: _array_sample("bad", np.where(np.eye(8, dtype=bool), np.nan, GOOD)), "nan values"),
    "inf": (lambda tmp: _array_sample("bad", GOOD * np.inf), "nan values"),
    "no captions": (lambda tmp: _array_sample("bad", GOOD, captions=[]), "no captions"),
    "empty caption": (lambda tmp: _array_sample("bad", GOOD, captions=["ok .", " \t"]), "empty caption"),
    "band names": (lambda tmp: _array_sample("bad", GOOD, bands=["B0", "B1"]), "missing band"),
    "other bands": (lambda tmp: _array_sample("bad", GOOD, bands=["B0", "B1", "B9"]), "missing band"),
    "band shape": (lambda tmp: _array_sample("bad", np.ones((3, 4, 8), np.float32)), "wrong band shape"),
    "2d array": (lambda tmp: _array_sample("bad", np.ones((8, 8), np.float32), bands=["B0"]), "wrong band shape"),
    "duplicate id": (lambda tmp: _array_sample("good", GOOD), "duplicate id"),
    "rgb among arrays": (lambda tmp: Sample("bad", Image.new("RGB", (8, 8)), ["a ."], "train"), "wrong image type"),
    "unreadable image": (lambda tmp: Sample("bad", _truncated_jpeg(tmp / "t.jpg"), ["a ."], "train"),
                         "unreadable image"),
    "reader rejected": (lambda tmp: Rejected("bad", "missing image", "no such file"), "missing image"),
    "bad split": (lambda tmp: _array_sample("bad", GOOD, split="train/x"), "invalid split"),
}


@pytest.mark.parametrize("case", list(WRITER_CASES))
@pytest.mark.parametrize("skip_bad", [False, True])
def test_writer_validates_items(case: str, skip_bad: bool, tmp_path: Path) -> None:
    make, reason = WRITER_CASES[case]
    items = [_array_sample("good", GOOD), make(tmp_path), _array_sample("last", GOOD * 2)]
    out = tmp_path / "out"
    if not skip_bad:
        with pytest.raises(BadItemError) as error:
            write_shards(items, out, progress=False)
        assert error.value.item_id in ("bad", "good") and reason in str(error.value)
        assert "--skip-bad" in str(error.value) and not out.exists()
        return
    index = write_shards(items, out, skip_bad=True, progress=False)
    assert (index["read"], index["written"], index["rejected"]) == (3, 2, 1)
    assert index["rejected_reasons"] == {reason: 1}
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert reject["reason"] == reason and reject["detail"]
    assert set(read_all(out)) == {"good", "last"}


def test_a_crash_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    write_shards(SyntheticReader(num_images=20), tmp_path, progress=False)
    before = shard_files(tmp_path)

    def crashing() -> Iterator[Sample]:
        yield from SyntheticReader(num_images=12, seed=5)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_shards(crashing(), tmp_path, progress=False)
    assert shard_files(tmp_path) == before


def test_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShardsError, match="notes.txt"):
        write_shards(SyntheticReader(num_images=5), tmp_path, progress=False)
    assert cli("synthetic", "--num-images", "5", "--out", str(tmp_path)) == 2


def test_cli_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "syn"
    assert cli("synthetic", "--out", str(out), "--num-images", "30", "--seed", "2", "--image-size", "32",
               "--multispectral", "--shard-size", "10", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "read 30, written 30, rejected 0 (written + rejected == read: True)" in printed
    assert "train: 24 samples in 3 shard(s)" in printed
    index = json.loads((out / "index.json").read_text())
    assert index["source"]["seed"] == 2 and index["bands"] == S2_BANDS and index["image_size"] == [32, 32]


def test_cli_bigearthnet_v2_tree_and_lmdb_give_the_same_shards(ben_v2_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    patches = sorted(p.name for p in (ben_v2_dir / "BigEarthNet-S2").glob("*/*") if p.is_dir())
    metadata = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"patch_id": patches, "labels": [["Arable land"]] * len(patches),
                             "split": ["test"] * len(patches)}), metadata)
    tree, lmdb = tmp_path / "tree", tmp_path / "lmdb"
    assert cli("bigearthnet", "--s2", str(ben_v2_dir / "BigEarthNet-S2"), "--s1", str(ben_v2_dir / "BigEarthNet-S1"),
               "--metadata", str(metadata), "--out", str(tree), "--no-progress") == 0
    assert cli("bigearthnet-lmdb", "--lmdb", str(ben_v2_dir / "lmdb"), "--metadata", str(metadata),
               "--out", str(lmdb), "--no-progress") == 0
    from_tree, from_lmdb = read_all(tree), read_all(lmdb)
    assert set(from_tree) == set(from_lmdb) == {sample_key(p) for p in patches}
    for key, sample in from_tree.items():
        assert sample["split"] == "test" and sample["record"]["labels"] == ["Arable land"]
        array = grid_array(tree, sample)
        assert array.shape == (14, 120, 120)
        assert sample["safetensors.zst"] == from_lmdb[key]["safetensors.zst"]
    index = json.loads((tree / "index.json").read_text())
    assert index["band_stats"]["split"] == "all"  # no train split: statistics over everything written


def test_cli_bigearthnet_txt_parquet(ben_v2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    patch = next(p.name for p in (ben_v2_dir / "BigEarthNet-S2").glob("*/*") if p.is_dir())
    s1_name = next(p.name for p in (ben_v2_dir / "BigEarthNet-S1").glob("*/*") if p.is_dir())
    rows = [  # (ID, type, input, output)
        (1, "captioning", "Describe the image.", "Fields and a small village."),
        (2, "captioning", "Describe the image.", "Fields and a small village."),
        (3, "binary", "Is there water in the image?", "No"),
        (4, "captioning", "Describe the image.", "Farmland with scattered houses."),
    ]
    n = len(rows)
    table = pa.table({
        "ID": [r[0] for r in rows], "s1_name": [s1_name] * n, "patch_id": [patch] * n,
        "input": [r[2] for r in rows], "output": [r[3] for r in rows], "type": [r[1] for r in rows],
        "category": ["scene"] * n, "split": ["validation"] * n, "latitude": [52.1] * n, "longitude": [13.4] * n,
        "country": ["Germany"] * n, "season": ["summer"] * n, "climate_zone": ["Cfb"] * n})
    pq.write_table(table, tmp_path / "text.parquet")
    out = tmp_path / "out"
    assert cli("bigearthnet-txt", "--parquet", str(tmp_path / "text.parquet"),
               "--s2", str(ben_v2_dir / "BigEarthNet-S2"), "--s1", str(ben_v2_dir / "BigEarthNet-S1"),
               "--out", str(out), "--no-progress") == 0
    assert "read 1, written 1, rejected 0" in capsys.readouterr().out
    (sample,) = read_all(out).values()
    record = sample["record"]
    assert record["captions"] == ["Fields and a small village.", "Fields and a small village.",
                                  "Farmland with scattered houses."]
    assert record["split"] == "validation" and record["weights"]["bleu"][0] == record["weights"]["bleu"][1]
    assert grid_array(out, sample).shape == (14, 120, 120)
    with_binary = tmp_path / "with_binary"
    assert cli("bigearthnet-txt", "--parquet", str(tmp_path / "text.parquet"), "--lmdb", str(ben_v2_dir / "lmdb"),
               "--text-types", "captioning,binary", "--out", str(with_binary), "--no-progress") == 0
    (sample,) = read_all(with_binary).values()
    assert len(sample["record"]["captions"]) == 4


def test_worker_processes_reject_a_lazily_opened_broken_image(tmp_path: Path) -> None:
    items = [Sample("good", Image.new("RGB", (8, 8), "red"), ["red ."], "train"),
             Sample("bad", _truncated_jpeg(tmp_path / "t.jpg"), ["noise ."], "train"),
             Sample("last", Image.new("RGB", (8, 8), "blue"), ["blue ."], "test")]
    index = write_shards(items, tmp_path / "out", skip_bad=True, workers=1, progress=False)
    assert (index["written"], index["rejected_reasons"]) == (2, {"unreadable image": 1})
    with pytest.raises(BadItemError, match="'bad'"):
        write_shards(items, tmp_path / "stop", workers=1, progress=False)
    assert not (tmp_path / "stop").exists()


def test_long_ids_round_trip_through_webdataset(tmp_path: Path) -> None:
    long_id = "patch." + "x" * 150
    items = [Sample(long_id, Image.new("RGB", (8, 8), "red"), ["a red square ."], "train")]
    write_shards(items, tmp_path, progress=False)
    (sample,) = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False).decode())
    assert sample["__key__"] == sample_key(long_id) and sample["json"]["id"] == long_id
