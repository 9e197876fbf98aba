"""Benchmark: text encoding trimmed to the longest caption vs open_clip's full 77-token encode_text.

Batches are 32 UCM-Captions train images x their 5 captions (160 captions), tokenised with open_clip's
tokenizer. For each text tower: forward (no grad) and forward + backward wall and CPU time, medians over
the same random batches for both variants (alternated), and the largest absolute difference of the features.

    python scripts/bench/text_trim.py --models wfa-vit-tiny ViT-B-32 --repeats 3 --out benchmarks/text_trim.json
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

from wfa.data.karpathy import read_karpathy_captions  # noqa: E402
from wfa.model import create_model, encode_text  # noqa: E402


def load_batches(dataset: Path, images_per_batch: int, num_batches: int, seed: int) -> list[list[str]]:
    """``num_batches`` lists of captions: all captions of ``images_per_batch`` random train images each."""
    if not dataset.is_file():
        raise FileNotFoundError(f"UCM captions not found at {dataset} (pass --data)")
    images = [entry.captions for entry in read_karpathy_captions(dataset, splits=["train"])]
    rng = random.Random(seed)
    return [[caption for captions in rng.sample(images, images_per_batch) for caption in captions]
            for _ in range(num_batches)]


def time_pair(untrimmed, trimmed, repeats: int) -> dict:
    """Median wall and CPU (process) seconds of two calls ``fn(i)``, alternated per repeat after a warm-up.

    Alternating keeps load from other processes on a shared machine from favouring one variant; CPU time
    is the less noisy measure of the work saved there.
    """
    untrimmed(0)
    trimmed(0)
    samples = {"untrimmed": ([], []), "trimmed": ([], [])}
    for i in range(repeats):
        for key, fn in (("untrimmed", untrimmed), ("trimmed", trimmed)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn(i)
            samples[key][0].append(time.perf_counter() - wall)
            samples[key][1].append(time.process_time() - cpu)
    result = {}
    for key, (walls, cpus) in samples.items():
        result[f"{key}_wall_s"] = round(statistics.median(walls), 4)
        result[f"{key}_cpu_s"] = round(statistics.median(cpus), 4)
    result["speedup_wall"] = round(result["untrimmed_wall_s"] / result["trimmed_wall_s"], 2)
    result["speedup_cpu"] = round(result["untrimmed_cpu_s"] / result["trimmed_cpu_s"], 2)
    return result


def bench_model(name: str, batches: list[list[str]], repeats: int, backward: bool) -> dict:
    """Timings and exactness of trimmed vs untrimmed encode_text for one model's text tower."""
    torch.manual_seed(0)
    model, tokenizer = create_model(name)
    tokens = [tokenizer(captions) for captions in batches]
    lengths = [int(t.argmax(dim=-1).max()) + 1 for t in tokens]
    model.eval()
    with torch.no_grad():
        diff = max(float((encode_text(model, t) - encode_text(model, t, trim=False)).abs().max()) for t in tokens)

    def forward(trim: bool):
        def run(i: int) -> None:
            with torch.no_grad():
                encode_text(model, tokens[i % len(tokens)], trim=trim)
        return run

    def forward_backward(trim: bool):
        def run(i: int) -> None:
            model.zero_grad(set_to_none=True)
            encode_text(model, tokens[i % len(tokens)], trim=trim).square().mean().backward()
        return run

    result = {
        "captions_per_batch": tokens[0].shape[0],
        "context_length": tokens[0].shape[1],
        "mean_caption_tokens": round(float(torch.cat([(t != 0).sum(1) for t in tokens]).float().mean()), 2),
        "trimmed_length_per_batch": lengths,
        "max_abs_diff": diff,
    }
    modes = [("forward", forward)] + ([("forward_backward", forward_backward)] if backward else [])
    for mode, make in modes:
        result[mode] = timing = time_pair(make(False), make(True), repeats)
        print(f"{name} {mode}: wall {timing['untrimmed_wall_s']:.3f} -> {timing['trimmed_wall_s']:.3f} s "
              f"(x{timing['speedup_wall']}), cpu {timing['untrimmed_cpu_s']:.3f} -> {timing['trimmed_cpu_s']:.3f} s "
              f"(x{timing['speedup_cpu']})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON report; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["wfa-vit-tiny", "ViT-B-32"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ucm-captions" / "dataset.json")
    parser.add_argument("--images-per-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backward-models", nargs="*", default=["wfa-vit-tiny"],
                        help="models whose forward + backward is timed too (slow for ViT-B-32 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "text_trim.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = load_batches(args.data, args.images_per_batch, args.repeats, args.seed)
    report = {
        "threads": args.threads,
        "device": "cpu",
        "models": {
            name: bench_model(name, batches, args.repeats, name in args.backward_models) for name in args.models
        },
    }
    write_result(args.out, report, argv=argv, script=__file__)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
