"""Helpers of the hostile-input suite (``tests/test_hostile_*.py``): run a ``wfa`` command, build crafted
files, and check that a data set or a run folder is complete and unchanged."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import Any

import pytest

import wfa.cli


def wfa_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Run ``wfa ARGV`` in this process; returns (exit code, stderr). Exit codes of argparse count too."""
    try:
        code = wfa.cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


def error_line(err: str, command: str) -> str:
    """The one-line error of a failed command; fails when there is none or a traceback was printed."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"wfa {command}: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


class Payload:
    """A pickle that creates ``marker`` when it is unpickled (what an attacker's file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def assert_payload_is_live(tmp_path: Path) -> None:
    """The payload really runs code when unpickled: so a test that finds no marker file can fail."""
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps({"x": Payload(probe)}))
    assert probe.exists()
    probe.unlink()


def folder_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_complete_dataset(out: Path) -> dict[str, Any]:
    """``out`` holds a complete shard data set: an index whose every shard exists with its samples."""
    index = json.loads((out / "index.json").read_text())
    for split in index["splits"].values():
        for shard in split["shards"]:
            with tarfile.open(out / shard["name"]) as tar:
                keys = {m.name.split(".")[0] for m in tar.getmembers()}
            assert len(keys) == shard["num_samples"], shard
    return index


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar archive in memory holding ``members``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def rewrite_members(shard: Path, change: Any) -> None:
    """Rewrite every member of a tar shard through ``change(name, data) -> bytes | None`` (None drops it)."""
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}
    changed = {name: change(name, data) for name, data in members.items()}
    shard.write_bytes(tar_bytes({name: data for name, data in changed.items() if data is not None}))


def edit_index(shards: Path, change: Any) -> None:
    """Apply ``change(index)`` (in place) to ``shards/index.json``."""
    index = json.loads((shards / "index.json").read_text())
    change(index)
    (shards / "index.json").write_text(json.dumps(index))


def write_patch(folder: Path, name: str, bands: dict[str, int], dtype: str = "uint16", seed: int = 0) -> Path:
    """A BigEarthNet-style patch folder ``folder/name`` holding ``name_BAND.tif`` for each band at ``size`` px."""
    import numpy as np
    import tifffile

    patch = folder / name
    patch.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for band, size in bands.items():
        tifffile.imwrite(patch / f"{name}_{band}.tif", rng.integers(1, 3000, (size, size)).astype(dtype))
    return patch


def txt_parquet(path: Path, rows: list[dict], types: dict[str, Any] | None = None) -> Path:
    """A BigEarthNet.txt-schema parquet of ``rows`` (missing columns are filled; ``types`` overrides column
    types, e.g. ``{"latitude": pa.string()}``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wfa.data.bigearthnet_txt import COLUMNS

    default = {"ID": pa.int64(), "latitude": pa.float64(), "longitude": pa.float64()}
    types = {**default, **(types or {})}
    filled = [{"s1_name": f"S1_{r.get('patch_id')}", "input": "Describe the image.", "category": "c",
               "split": "train", "latitude": 47.5, "longitude": 13.0, "country": "Austria", "season": "Summer",
               "climate_zone": "Dfb", **r} for r in rows]
    table = pa.table({c: pa.array([r.get(c) for r in filled], type=types.get(c, pa.string())) for c in COLUMNS})
    pq.write_table(table, path)
    return path
