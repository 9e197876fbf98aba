"""Benchmark retrieval: FAISS vs torch brute force at 10k images x 50k captions (D=512).

Random unit features with planted matches (each caption = its image + noise). Each backend runs in its
own subprocesses so that peak memory (``ru_maxrss``, which also sees FAISS's C++ allocations) is its own.
Per backend: the wall time of ``retrieval_metrics`` (both directions, exact ranks) and of the raw
top-10 search of the 50k caption queries alone, repeated ``--repeats`` times (median reported), peak
RSS and its increase over the process's RSS after building the features. The backends alternate, one
subprocess per repeat (load drift on a shared machine hits both alike). The metrics of both backends
must be identical. Writes ``benchmarks/retrieval.json``.

  python scripts/bench/retrieval.py [--images 10000] [--captions 50000] [--dim 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, write_result  # noqa: E402


def make_features(images: int, captions: int, dim: int, noise: float, seed: int = 0):
    """(image features, caption features, caption -> image) with planted matches, float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.standard_normal((images, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.arange(captions) % images
    txt = img[owner] + noise * rng.standard_normal((captions, dim), dtype=np.float32) / np.sqrt(dim)
    return img, txt, owner


def maxrss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    """Run one backend in this process; return its timings and memory."""
    import torch

    from wfa.eval.metrics import Searcher, l2_normalize, retrieval_metrics

    torch.set_num_threads(args.threads)
    img, txt, owner = make_features(args.images, args.captions, args.dim, args.noise)
    base = maxrss_mib()
    full, search = [], []
    metrics = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = retrieval_metrics(img, txt, owner, backend=args.worker)
        full.append(time.perf_counter() - start)
    q, g = l2_normalize(txt), l2_normalize(img)
    for _ in range(args.repeats):
        start = time.perf_counter()
        Searcher(g, args.worker).search(q, 10)
        search.append(time.perf_counter() - start)
    peak = maxrss_mib()
    return {"backend": args.worker, "metrics_s": full, "metrics_median_s": statistics.median(full),
            "search_top10_s": search, "search_top10_median_s": statistics.median(search),
            "peak_rss_mib": peak, "rss_after_features_mib": base, "peak_increase_mib": peak - base,
            "metrics": metrics, "threads": args.threads, "faiss_omp_threads": _faiss_threads()}


def _faiss_threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def main() -> int:
    """Run both backends in subprocesses and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--captions", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=5.0, help="caption noise relative to the unit image vector")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "retrieval.json")
    parser.add_argument("--worker", choices=("faiss", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {"faiss": [], "torch": []}
    # backends alternate, one fresh subprocess per repeat, so that load drift on a shared machine
    # hits both alike; medians over the repeats
    for _ in range(args.repeats):
        for backend in ("faiss", "torch"):
            cmd = [sys.executable, __file__, "--worker", backend, "--images", str(args.images), "--captions",
                   str(args.captions), "--dim", str(args.dim), "--noise", str(args.noise), "--repeats", "1",
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs[backend].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = {}
    for backend, items in runs.items():
        first = items[0]
        r = {"backend": backend, "metrics_s": [x["metrics_s"][0] for x in items],
             "search_top10_s": [x["search_top10_s"][0] for x in items],
             "peak_rss_mib": max(x["peak_rss_mib"] for x in items),
             "peak_increase_mib": max(x["peak_increase_mib"] for x in items),
             "rss_after_features_mib": first["rss_after_features_mib"], "metrics": first["metrics"],
             "metrics_all_runs_equal": all(x["metrics"] == first["metrics"] for x in items),
             **{k: first[k] for k in ("threads", "faiss_omp_threads")}}
        r["metrics_median_s"] = statistics.median(r["metrics_s"])
        r["search_top10_median_s"] = statistics.median(r["search_top10_s"])
        results[backend] = r
        print(f"{backend:5s}: retrieval_metrics {r['metrics_median_s']:.2f} s (median of {args.repeats}), "
              f"raw top-10 search {r['search_top10_median_s']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(+{r['peak_increase_mib']:.0f} MiB over the features)")
    identical = (results["faiss"]["metrics"] == results["torch"]["metrics"]
                 and all(r["metrics_all_runs_equal"] for r in results.values()))
    print(f"metrics identical: {identical}; mR = {results['faiss']['metrics']['mR']:.2f}")
    out = {"images": args.images, "captions": args.captions, "dim": args.dim, "noise": args.noise,
           "repeats": args.repeats, "machine": {"load_avg_at_start": load_start},
           "metrics_identical": identical, "results": results,
           "ratio_torch_over_faiss_metrics": results["torch"]["metrics_median_s"] / results["faiss"]["metrics_median_s"],
           "ratio_torch_over_faiss_search": results["torch"]["search_top10_median_s"]
           / results["faiss"]["search_top10_median_s"]}
    write_result(args.out, out, script=__file__)
    print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
