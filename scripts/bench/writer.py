"""Shard-writing rate on the full UCM-Captions set (2,100 images) with 0, 1 and 2 worker processes.

Usage:
    python scripts/bench/writer.py [--data DATA/ucm-captions] [--workers 0,1,2] [--repeats 1]
                                   [--output benchmarks/writer.json]

Each run reads the Karpathy json and the JPEGs, validates, re-encodes (JPEG quality 95), computes
the BLEU weights and writes the shards into a temporary folder. Reported per worker count: the
best wall time over ``--repeats`` runs, images/s, MB/s of shards written, and the machine's load
average at the start (the machine may be shared, which slows every figure).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

from wfa.data.karpathy import KarpathyReader  # noqa: E402
from wfa.data.shard_format import WRITER_VERSION  # noqa: E402
from wfa.data.writer import write_shards  # noqa: E402


def bench(data: Path, workers: int, repeats: int) -> dict:
    """Write UCM ``repeats`` times with ``workers`` processes; the best run's figures."""
    best = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            reader = KarpathyReader(data / "dataset.json", data / "images", labels=data / "labels.csv")
            load = os.getloadavg()[0]
            start = time.perf_counter()
            index = write_shards(reader, out, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in Path(out).glob("*.tar"))
        if best is None or seconds < best["seconds"]:
            best = {"workers": workers, "seconds": round(seconds, 3), "images": index["written"],
                    "images_per_s": round(index["written"] / seconds, 1), "shard_mb": round(size / 1e6, 2),
                    "mb_per_s": round(size / 1e6 / seconds, 2), "load_average_at_start": round(load, 2)}
    assert best is not None
    return best


def main() -> None:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ucm-captions", help="the UCM-Captions folder")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (default 0,1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count; the best is kept")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "writer.json", help="the JSON report")
    args = parser.parse_args()
    runs = []
    for workers in (int(w) for w in args.workers.split(",")):
        runs.append(bench(args.data, workers, args.repeats))
        print(json.dumps(runs[-1]))
    report = {"benchmark": "shard writing, full UCM-Captions (2100 images, jpg q95, BLEU weights)",
              "writer_version": WRITER_VERSION, "runs": runs}
    write_result(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
