"""BigEarthNet.txt conversion at full size: ``wfa shards bigearthnet-txt`` on the stand-in parquet.

Usage:
    python scripts/bigearthnet_txt_standin.py --out /data/standin.parquet        # 464,044 patches, 9.6M rows
    python scripts/bench/bigearthnet_txt.py --parquet /data/standin.parquet --text-types captioning \
        --procedural-scale 10 --out-dir /data/shards --output benchmarks/bigearthnet_txt_captioning.json

The conversion runs as its own process (``python -m wfa.cli shards bigearthnet-txt ...
--procedural-images``), so its wall time and peak RSS (``getrusage`` of the child: the largest
resident set of the process or any worker it started) are the command's own. Reported: wall time,
rows/s (rows of the selected types), patches/s, peak RSS, shard bytes per patch, and -- in a
second, text-only pass over the same reader -- the time the BLEU weights of all texts take
(``wfa.redundancy.bleu_uniqueness_batch`` over batches of 32 patches, as the writer calls it),
measured rather than extrapolated. ``--bleu-only`` skips the conversion.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, write_result  # noqa: E402

from wfa.data.bigearthnet_txt import TEXT_TYPES, BigEarthNetTxtReader  # noqa: E402
from wfa.data.sample import Sample  # noqa: E402
from wfa.redundancy import bleu_uniqueness_batch  # noqa: E402

_BLEU_BATCH = 32  # patches per bleu_uniqueness_batch call, like the writer's tasks


def convert(parquet: Path, out: Path, text_types: str, scale: int, workers: int, work_dir: Path | None) -> dict:
    """Run the conversion as a child process; its wall time, peak RSS and output sizes."""
    command = [sys.executable, "-m", "wfa.cli", "shards", "bigearthnet-txt", "--parquet", str(parquet),
               "--procedural-images", "--procedural-scale", str(scale), "--text-types", text_types,
               "--out", str(out), "--workers", str(workers)]
    if work_dir is not None:
        command += ["--work-dir", str(work_dir)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    index = json.loads((out / "index.json").read_text())
    shard_bytes = sum(p.stat().st_size for p in out.glob("*.tar"))
    rows = index["source"]["rows"]
    texts = sum(rows["texts_by_type"].values())
    return {"seconds": round(seconds, 1), "minutes": round(seconds / 60, 2),
            "rows_read": rows["rows_read"], "rows_selected": rows["rows_selected"], "texts": texts,
            "patches_written": index["written"], "patches_rejected": index["rejected"],
            "rows_per_s": round(rows["rows_selected"] / seconds), "patches_per_s": round(index["written"] / seconds, 1),
            "peak_rss_gib": round(peak_kb / 2**20, 3), "shard_bytes": shard_bytes,
            "shard_bytes_per_patch": round(shard_bytes / max(index["written"], 1)),
            "row_skips": rows["skipped"], "load_average_at_start": round(load, 2),
            "command": " ".join(command[1:])}


def bleu_time(parquet: Path, text_types: list[str]) -> dict:
    """Seconds that the BLEU weights of every patch's texts take, measured over the whole file."""
    reader = BigEarthNetTxtReader(parquet, images=lambda patch_id: np.zeros((1, 1, 1), np.float32), bands=["x"],
                                  text_types=text_types)
    bleu_seconds, patches, texts, batch = 0.0, 0, 0, []
    start = time.perf_counter()
    for item in reader:
        if isinstance(item, Sample):
            batch.append(item.captions)
        if len(batch) == _BLEU_BATCH:
            t = time.perf_counter()
            bleu_uniqueness_batch(batch)
            bleu_seconds += time.perf_counter() - t
            patches, texts, batch = patches + len(batch), texts + sum(map(len, batch)), []
    if batch:
        t = time.perf_counter()
        bleu_uniqueness_batch(batch)
        bleu_seconds += time.perf_counter() - t
        patches, texts = patches + len(batch), texts + sum(map(len, batch))
    total = time.perf_counter() - start
    return {"bleu_seconds": round(bleu_seconds, 1), "bleu_minutes": round(bleu_seconds / 60, 2), "patches": patches,
            "texts": texts, "texts_per_s": round(texts / max(bleu_seconds, 1e-9)),
            "text_pass_seconds": round(total, 1)}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parquet", type=Path, required=True, help="the stand-in (or real) BigEarthNet.txt parquet")
    parser.add_argument("--text-types", default="captioning", help="as for `wfa shards bigearthnet-txt`")
    parser.add_argument("--procedural-scale", type=int, default=1, help="procedural band side divisor (default 1)")
    parser.add_argument("--workers", type=int, default=0, help="writer worker processes (default 0)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="shard folder (replaced; removed after unless --keep)")
    parser.add_argument("--work-dir", type=Path, help="folder for the reader's row buckets")
    parser.add_argument("--keep", action="store_true", help="keep the shards")
    parser.add_argument("--bleu-only", action="store_true", help="only the text-only BLEU pass")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "bigearthnet_txt.json")
    args = parser.parse_args(argv)
    types = [t.strip() for t in args.text_types.split(",") if t.strip()]
    unknown = [t for t in types if t not in TEXT_TYPES]
    if unknown:
        parser.error(f"unknown text types {unknown}; choose from {list(TEXT_TYPES)}")
    report: dict = {"benchmark": "BigEarthNet.txt conversion, procedural imagery", "parquet": str(args.parquet),
                    "parquet_bytes": args.parquet.stat().st_size, "text_types": types,
                    "procedural_scale": args.procedural_scale, "workers": args.workers}
    if not args.bleu_only:
        report["conversion"] = convert(args.parquet, args.out_dir, ",".join(types), args.procedural_scale,
                                       args.workers, args.work_dir)
        print(json.dumps(report["conversion"]), flush=True)
        if not args.keep:
            shutil.rmtree(args.out_dir, ignore_errors=True)
    report["bleu"] = bleu_time(args.parquet, types)
    print(json.dumps(report["bleu"]), flush=True)
    write_result(args.output, report, argv=argv)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
