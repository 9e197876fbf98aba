"""Exactness of the compact multispectral shard format (wfa.data.shard_format, docs/shard-format.md).

Stored bands must equal the source GeoTIFF/LMDB values bit for bit, and resampling on load must give
what writer version 1 stored (float32 arrays resampled at write time) -- on the real BigEarthNet
patches in ../shared/data.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import tifffile
import torch
from safetensors.numpy import load as load_safetensors

import wfa.cli
from wfa.data.bigearthnet import BigEarthNetReader
from wfa.data.lmdb_reader import LMDBReader
from wfa.data.loader import LoaderConfig, build_eval_loader, read_index
from wfa.data.shard_format import (
    NATIVE_SIZE, S1_BANDS, S2_BANDS, WRITER_VERSION, NativeBands, check_version, decode_bands, encode_bands, to_grid,
)
from wfa.data.transforms import MultispectralTransform
from wfa.data.writer import write_shards


def _members(out: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of every shard in ``out``."""
    found: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, extension = member.name.split(".", 1)
                found.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return found


def _blob(member: bytes, size: int) -> bytes:
    """The safetensors blob inside a member (zstd, with pyarrow's codec)."""
    import pyarrow as pa

    return pa.Codec("zstd").decompress(member, decompressed_size=size, asbytes=True)


def _tiff_bands(folder: Path, bands: list[str]) -> dict[str, np.ndarray]:
    return {band: tifffile.imread(folder / f"{folder.name}_{band}.tif") for band in bands}


def test_stored_bands_equal_the_geotiffs_and_the_lmdb(ben_v2_dir: Path, tmp_path: Path) -> None:
    s2_root, s1_root = ben_v2_dir / "BigEarthNet-S2", ben_v2_dir / "BigEarthNet-S1"
    (s2_folder,) = [p for p in s2_root.glob("*/*") if p.is_dir()]
    (s1_folder,) = [p for p in s1_root.glob("*/*") if p.is_dir()]
    captions = {s2_folder.name: ["a patch of land."]}
    tree = write_shards(BigEarthNetReader(s2_root, s1_root, native=True, captions=captions), tmp_path / "tree",
                        progress=False)
    lmdb = write_shards(LMDBReader(ben_v2_dir / "lmdb", native=True, captions=captions), tmp_path / "lmdb",
                        progress=False)
    assert tree["writer_version"] == WRITER_VERSION and tree["image_format"] == "safetensors.zst"
    assert tree["band_layout"] == lmdb["band_layout"] and tree["resample"] == "bilinear"
    assert [(e["band"], e["dtype"], e["shape"]) for e in tree["band_layout"]] == [
        (band, "uint16" if band in S2_BANDS else "float32", [NATIVE_SIZE[band]] * 2) for band in S2_BANDS + S1_BANDS]
    (from_tree,) = _members(tmp_path / "tree").values()
    (from_lmdb,) = _members(tmp_path / "lmdb").values()
    stored = load_safetensors(_blob(from_tree["safetensors.zst"], tree["bands_bytes"]))
    source = {**_tiff_bands(s2_folder, S2_BANDS), **_tiff_bands(s1_folder, S1_BANDS)}
    assert set(stored) == set(source)
    for band, array in source.items():
        assert stored[band].dtype == array.dtype and np.array_equal(stored[band], array), band
    assert from_tree["safetensors.zst"] == from_lmdb["safetensors.zst"]
    # bytes per patch: the whole sample (bands, json, tar headers; not the archive's end padding) against
    # the 14 source GeoTIFFs on disk
    with tarfile.open(next((tmp_path / "tree").glob("*.tar"))) as tar:
        shard_bytes = max(m.offset_data + -(-m.size // 512) * 512 for m in tar)
    tiff_bytes = sum(p.stat().st_size for folder in (s2_folder, s1_folder) for p in folder.glob("*_[BV]*.tif"))
    assert shard_bytes <= tiff_bytes, (shard_bytes, tiff_bytes)


@pytest.mark.parametrize("resample", ["bilinear", "nearest"])
def test_grid_on_load_equals_the_writer_side_grid(ben_v1_dir: Path, tmp_path: Path, resample: str) -> None:
    """decode_bands(stored) == the float32 array writer version 1 stored (resampled at write time)."""
    native = BigEarthNetReader(root=ben_v1_dir, mode="s2", resample=resample, native=True)
    grid = BigEarthNetReader(root=ben_v1_dir, mode="s2", resample=resample)
    index = write_shards(native, tmp_path, progress=False)
    assert index["written"] == len(grid) == 11 and index["resample"] == resample
    records = _members(tmp_path)
    for patch_id in grid.ids():
        member = records[patch_id]
        record = json.loads(member["json"])
        decoded = decode_bands(member["safetensors.zst"], index["band_layout"], index["image_size"], index["resample"],
                               index["bands_bytes"])
        assert record["bands"] == S2_BANDS and decoded.dtype == np.float32
        assert np.array_equal(decoded, grid.load(patch_id)), patch_id


def test_loader_batches_equal_the_old_format_transform(ben_v1_dir: Path, tmp_path: Path) -> None:
    """Through the loader (decode, resample, normalise, resize to 48 px) the compact shards give the
    images writer version 1's float32 arrays gave, within float tolerance."""
    write_shards(BigEarthNetReader(root=ben_v1_dir, mode="s2", native=True), tmp_path, progress=False)
    index = read_index(tmp_path)
    grid = BigEarthNetReader(root=ben_v1_dir, mode="s2")
    transform = MultispectralTransform(48, index["band_stats"]["mean"], index["band_stats"]["std"], train=False)
    cfg = LoaderConfig(shards=str(tmp_path), split="train", batch_size=4, image_size=48)
    loader, _ = build_eval_loader(cfg, open_clip.get_tokenizer("ViT-B-32"))
    seen = 0
    for batch in loader:
        for patch_id, image in zip(batch["image_ids"], batch["images"]):
            assert image.shape == (12, 48, 48)
            assert torch.allclose(image, transform(grid.load(patch_id)), atol=1e-5), patch_id
            seen += 1
    assert seen == 11 and loader.stats.skipped == 0


def test_band_stats_are_over_the_stored_pixels(ben_v1_dir: Path, tmp_path: Path) -> None:
    reader = BigEarthNetReader(root=ben_v1_dir, mode="s2", native=True)
    index = write_shards(reader, tmp_path, progress=False)
    patches = [reader.load_native(p) for p in reader.ids()]
    for channel, band in enumerate(S2_BANDS):
        values = np.concatenate([p.arrays[band].ravel().astype(np.float64) for p in patches])
        assert index["band_stats"]["num_pixels"][channel] == values.size == 11 * NATIVE_SIZE[band] ** 2
        assert np.isclose(index["band_stats"]["mean"][channel], values.mean(), rtol=1e-12)
        assert np.isclose(index["band_stats"]["std"][channel], values.std(), rtol=1e-9)


def test_to_grid_copies_grid_bands_and_resamples_the_others() -> None:
    rng = np.random.default_rng(0)
    full, small = rng.integers(0, 10_000, (8, 8), dtype=np.uint16), rng.integers(0, 10_000, (2, 2), dtype=np.uint16)
    out = to_grid([full, small], 8, "nearest")
    assert np.array_equal(out[0], full.astype(np.float32))
    assert np.array_equal(out[1], np.repeat(np.repeat(small, 4, 0), 4, 1).astype(np.float32))
    assert np.array_equal(NativeBands({"a": full, "b": small}, 8, "nearest").to_grid(), out)
    with pytest.raises(ValueError, match="resample"):
        to_grid([full], 8, "cubic")


def test_decode_refuses_a_member_that_differs_from_the_layout() -> None:
    layout = [{"band": "B02", "dtype": "uint16", "shape": [4, 4]}]
    member, size = encode_bands({"B03": np.zeros((4, 4), np.uint16)})
    with pytest.raises(ValueError, match="band B02 missing"):
        decode_bands(member, layout, [4, 4], "bilinear", size)
    member, size = encode_bands({"B02": np.zeros((4, 4), np.float32)})
    with pytest.raises(ValueError, match="band B02 is float32"):
        decode_bands(member, layout, [4, 4], "bilinear", size)
    with pytest.raises(ValueError, match="more than the index's"):  # never more than the index says
        decode_bands(member, layout, [4, 4], "bilinear", size - 1)
    with pytest.raises(ValueError, match="does not decompress"):
        decode_bands(b"not zstd at all", layout, [4, 4], "bilinear", size)


def test_versions_readable_and_refused() -> None:
    check_version({"writer_version": "1.0"}, "x")
    check_version({"writer_version": WRITER_VERSION}, "x")
    with pytest.raises(ValueError, match=r"writer version 3\.0.*reads writer versions 1\.x, 2\.x"):
        check_version({"writer_version": "3.0"}, "shards/index.json")


def test_cli_writes_compact_shards_smaller_than_version_1(ben_v2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = tmp_path / "metadata.parquet"
    patch_id = LMDBReader(ben_v2_dir / "lmdb").ids()[0]
    pq.write_table(pa.table({"patch_id": [patch_id], "labels": [["Arable land"]]}), metadata)
    argv = ["shards", "bigearthnet-lmdb", "--lmdb", str(ben_v2_dir / "lmdb"), "--metadata", str(metadata),
            "--out", str(out), "--no-progress"]
    assert wfa.cli.main(argv) == 0
    (member,) = _members(out).values()
    assert "safetensors.zst" in member and "npy" not in member
    version_1 = io.BytesIO()
    np.save(version_1, LMDBReader(ben_v2_dir / "lmdb").load(patch_id))
    assert len(member["safetensors.zst"]) < 0.35 * len(version_1.getvalue())  # ~233 KB against 806 KB
