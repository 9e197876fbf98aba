"""The light command line: `wfa --help`, `wfa shards ... --help` and every conversion (each built-in reader) start
without torch or open_clip (issue 19, item 5). Each case runs `wfa` in a fresh interpreter and fails naming the
heavy modules it imported; the figures (wall time, RSS) are in BENCHMARKS.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from wfa.data.readers import list_readers

HEAVY = ("torch", "open_clip", "torchvision", "webdataset")

# runs `wfa ARGV` (argparse's --help exit included) in this interpreter, then prints the heavy modules loaded
RUN = """
import json, sys
from wfa.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def run_wfa(*argv: object, cwd: Path | None = None) -> dict:
    """``{"code", "heavy"}`` of ``wfa ARGV`` run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps([str(a) for a in argv]), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


HELP_LINES = [("--help",), ("--version",), ("shards", "--help"), ("redundancy", "--help"),
              *[("shards", name, "--help") for name in list_readers()]]


@pytest.mark.parametrize("argv", HELP_LINES, ids=" ".join)
def test_help_does_not_import_torch(argv: tuple[str, ...]) -> None:
    result = run_wfa(*argv)
    assert result == {"code": 0, "heavy": []}


def test_the_check_sees_torch_where_a_command_needs_it() -> None:
    # the same probe on `wfa train --help` (whose config module imports torch) must see it: the check works
    assert "torch" in run_wfa("train", "--help")["heavy"]


def test_synthetic_conversion_does_not_import_torch(tmp_path: Path) -> None:
    result = run_wfa("shards", "synthetic", "--num-images", "12", "--image-size", "16", "--out", tmp_path / "out",
                     "--no-progress")
    assert result == {"code": 0, "heavy": []}
    assert json.loads((tmp_path / "out" / "index.json").read_text())["written"] == 12


def test_karpathy_conversion_and_redundancy_report_do_not_import_torch(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (16, 16), colour).save(images / f"{i}.png")
        entries.append({"filename": f"{i}.png", "split": "train",
                        "sentences": [{"raw": f"a {colour} field"}, {"raw": f"a {colour} square field"}]})
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps({"dataset": "tiny", "images": entries}))
    result = run_wfa("shards", "karpathy", "--captions", captions, "--images", images, "--out", tmp_path / "out",
                     "--no-progress")
    assert result == {"code": 0, "heavy": []}
    assert json.loads((tmp_path / "out" / "index.json").read_text())["written"] == 3
    result = run_wfa("redundancy", "--captions", captions, "--out", tmp_path / "report.json")
    assert result == {"code": 0, "heavy": []} and (tmp_path / "report.json").is_file()


def test_bigearthnet_txt_conversion_does_not_import_torch(tmp_path: Path) -> None:
    from wfa.data.txt_standin import write_standin

    parquet = tmp_path / "standin.parquet"
    write_standin(parquet, num_patches=20, seed=0, progress=False)
    result = run_wfa("shards", "bigearthnet-txt", "--parquet", parquet, "--procedural-images", "--procedural-scale",
                     "10", "--text-types", "captioning,binary", "--out", tmp_path / "out", "--work-dir", tmp_path,
                     "--no-progress")
    assert result == {"code": 0, "heavy": []}
    assert json.loads((tmp_path / "out" / "index.json").read_text())["written"] == 20


def test_bigearthnet_conversions_do_not_import_torch(ben_v1_dir: Path, ben_v2_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    result = run_wfa("shards", "bigearthnet", "--s2", ben_v1_dir / "S2", "--s1", ben_v1_dir / "S1", "--skip-bad",
                     "--out", tmp_path / "tree", "--no-progress")
    assert result == {"code": 0, "heavy": []}
    patches = sorted(p.name for p in (ben_v2_dir / "BigEarthNet-S2").glob("*/*") if p.is_dir())
    metadata = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"patch_id": patches, "labels": [["Arable land"]] * len(patches),
                             "split": ["test"] * len(patches)}), metadata)
    result = run_wfa("shards", "bigearthnet-lmdb", "--lmdb", ben_v2_dir / "lmdb", "--metadata", metadata,
                     "--out", tmp_path / "lmdb", "--no-progress")
    assert result == {"code": 0, "heavy": []}
    assert json.loads((tmp_path / "lmdb" / "index.json").read_text())["written"] == len(patches)
