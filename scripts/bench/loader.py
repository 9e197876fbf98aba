"""Benchmark the streaming shard loader: samples/s with 0, 1, 2 workers at several image sizes.

Each measurement is one training epoch (augmentation and shuffling on, batch 32 by default) from a
freshly built loader, worker start-up included, on the given shards (default: the UCM train split,
written first with ``wfa.data.writer`` from $WFA_SHARED_DATA/ucm-captions, else synthetic shards).
Configurations are interleaved over ``--repeats`` rounds so that load from other processes hits them
alike; the median is reported. Writes ``benchmarks/loader.json``.

    python scripts/bench/loader.py --shards /tmp/ucm_shards --sizes 64 224 --workers 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

from wfa.data.loader import LoaderConfig, build_loader  # noqa: E402

UCM = SHARED_DATA / "ucm-captions"
# Images/s that training consumes on this machine's 2 cores (batch 32, 2 threads; early notes): tiny ViT
# (width 256, 4+4 layers) ~47 at 64 px and ~30 at 128 px; ViT-B-32 ~3 at 224 px.
TRAINING_IMAGES_PER_S = {64: 47.0, 128: 30.0, 224: 3.0}


def write_bench_shards(out: Path) -> str:
    """Write UCM shards (or synthetic ones when UCM is absent) into ``out``; return what was written."""
    from wfa.data.writer import write_shards

    if (UCM / "dataset.json").is_file():
        from wfa.data.karpathy import KarpathyReader

        reader = KarpathyReader(UCM / "dataset.json", UCM / "images")
        source = f"UCM-Captions ({UCM})"
    else:
        from wfa.data.synthetic import SyntheticReader

        reader = SyntheticReader(num_images=2100, image_size=256)
        source = "synthetic (2100 images, 256 px)"
    write_shards(reader, out, shard_size=256, workers=2, progress=False)
    return source


def measure(cfg: LoaderConfig, tokenizer) -> dict:
    """Iterate one epoch of a fresh loader; return samples, seconds, samples/s and skip count."""
    start = time.perf_counter()
    loader, steps = build_loader(cfg, tokenizer)
    samples = 0
    for batch in loader:
        samples += len(batch["image_ids"])
    seconds = time.perf_counter() - start
    return {"samples": samples, "steps": steps, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1), "skipped": loader.stats.skipped}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard dir with index.json (default: write UCM/synthetic shards)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--view", default="images", choices=["images", "pairs"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process (as training)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "loader.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    with tempfile.TemporaryDirectory(prefix="wfa-bench-loader-") as tmp:
        if args.shards:
            shards, source = args.shards, f"given ({args.shards})"
        else:
            shards = str(Path(tmp) / "shards")
            print("writing benchmark shards ...", flush=True)
            source = write_bench_shards(Path(shards))
        runs: dict[tuple[int, int], list[dict]] = {}
        for round_no in range(args.repeats):
            for size in args.sizes:
                for workers in args.workers:
                    cfg = LoaderConfig(shards=shards, split=args.split, batch_size=args.batch_size,
                                       num_workers=workers, image_size=size, augment=True, view=args.view, seed=round_no)
                    result = measure(cfg, tokenizer)
                    runs.setdefault((size, workers), []).append(result)
                    print(f"round {round_no} size {size} workers {workers}: {result['samples_per_s']} samples/s",
                          flush=True)

    results = []
    for (size, workers), measured in runs.items():
        median = statistics.median(r["samples_per_s"] for r in measured)
        entry = {"image_size": size, "num_workers": workers, "samples_per_s_median": median, "runs": measured}
        if size in TRAINING_IMAGES_PER_S:
            entry["x_training"] = round(median / TRAINING_IMAGES_PER_S[size], 1)
        results.append(entry)
    report = {
        "what": f"one augmented, shuffled training epoch of split {args.split!r} (view {args.view!r}) from a fresh "
                "loader, worker start-up included; median over rounds",
        "source": source,
        "batch_size": args.batch_size,
        "main_threads": args.threads,
        "note": "2 cores shared with other jobs: absolute figures move with their load (machine.load_average, "
                "taken at the end)",
        "training_images_per_s": {str(k): v for k, v in TRAINING_IMAGES_PER_S.items()},
        "results": results,
    }
    write_result(args.out, report, argv=argv, script=__file__)
    print(f"\n{'size':>5} {'workers':>7} {'samples/s':>10} {'x training':>10}")
    for entry in results:
        print(f"{entry['image_size']:>5} {entry['num_workers']:>7} {entry['samples_per_s_median']:>10} "
              f"{entry.get('x_training', '-'):>10}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
