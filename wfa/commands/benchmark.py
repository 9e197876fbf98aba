"""Benchmark a model on a suite: zero-shot, linear probe, k-NN and retrieval tables as papers print them.

Examples:
  wfa benchmark --suite configs/benchmarks/shared-data.yaml --checkpoint runs/rsicd_pairs --out bench/rsicd
  wfa benchmark --suite configs/benchmarks/public-scenes.yaml --model ViT-B-32 --pretrained openai
  wfa benchmark --compare bench/a/benchmark.json bench/b/benchmark.json --out bench/both

Writes benchmark.json, benchmark.csv, benchmark.md and benchmark.png into --out and prints the tables.
Image features are cached per (model weights, data set) in --cache (default $WFA_CACHE/benchmark or
~/.cache/wfa/benchmark), so a second run computes only what changed. The suite format and the protocols:
docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from wfa.errors import EvalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``wfa benchmark`` options."""
    parser.add_argument("--suite", help="suite YAML (configs/benchmarks/...)")
    parser.add_argument("--checkpoint", help="a wfa run folder (its model_final.pt) or an open_clip-format model file")
    parser.add_argument("--model", help="architecture: open_clip name, wfa config or JSON config "
                                        "(default: from the run's config.yaml)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or file, for --model without --checkpoint")
    parser.add_argument("--out", default="benchmark", help="output folder (default: benchmark)")
    parser.add_argument("--data-root", help="folder the suite's relative data paths start from "
                                            "(replaces its data_root)")
    parser.add_argument("--only", help="comma-separated data set names of the suite to run")
    parser.add_argument("--templates", help="zero-shot prompt YAML whose sections replace the packaged ones")
    parser.add_argument("--cache", help="feature and result cache folder (default: $WFA_CACHE/benchmark, "
                                        "else ~/.cache/wfa/benchmark)")
    parser.add_argument("--no-cache", action="store_true", help="compute everything, keep nothing")
    parser.add_argument("--image-size", type=int, help="input size (default: the run's data.image_size or the model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="image loading processes (default: min(4, CPUs))")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--compare", nargs="+", metavar="BENCHMARK_JSON",
                        help="no model run: tables of earlier results side by side")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_cache() -> Path:
    """``$WFA_CACHE/benchmark``, else ``$XDG_CACHE_HOME/wfa/benchmark`` or ``~/.cache/wfa/benchmark``."""
    if os.environ.get("WFA_CACHE"):
        return Path(os.environ["WFA_CACHE"]) / "benchmark"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wfa" / "benchmark"


def model_file(checkpoint: str) -> str:
    """The model file of ``--checkpoint``: the file itself, or a run folder's final model (:class:`wfa.Run`)."""
    from wfa.run import Run

    path = Path(checkpoint)
    if path.is_dir():
        final = Run(path).model_path
        if not final.is_file():
            raise EvalError(f"--checkpoint {path} is a folder without {final.name}: give a run folder whose "
                            "training finished (`wfa train --resume latest`) or a model file").with_exit_code(2)
        return str(final)
    if not path.is_file():
        raise EvalError(f"--checkpoint {path} does not exist").with_exit_code(2)
    return str(path)


def load_model(args: argparse.Namespace, device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info): the one place the benchmark loads a model (through ``wfa eval``'s loader)."""
    from wfa.commands.eval import load_eval_model

    checkpoint = model_file(args.checkpoint) if args.checkpoint else None
    return load_eval_model(checkpoint, args.model, args.pretrained, None, args.image_size, device)


def _check(args: argparse.Namespace) -> None:
    if args.compare:
        if args.suite or args.checkpoint or args.model:
            raise EvalError("--compare makes tables of earlier results; it takes no --suite or model").with_exit_code(2)
        return
    if not args.suite:
        raise EvalError("pass --suite SUITE.yaml (or --compare RESULTS.json ...)").with_exit_code(2)
    if not args.checkpoint and not args.model:
        raise EvalError("pass --checkpoint (a wfa run folder or model file) or --model (any open_clip model "
                        "by name)").with_exit_code(2)
    if args.batch_size < 1 or args.num_workers < 0:
        raise EvalError("--batch-size must be >= 1 and --num-workers >= 0").with_exit_code(2)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file; give a folder").with_exit_code(2)


def _read_results(paths: list[str]) -> list[dict[str, Any]]:
    results = []
    for path in paths:
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise EvalError(f"--compare {path}: not a readable benchmark.json ({error})").with_exit_code(2) from None
        entries = loaded if isinstance(loaded, list) else [loaded]
        if not all(isinstance(e, dict) and "model" in e and "classification" in e for e in entries):
            raise EvalError(f"--compare {path} is not a benchmark.json written by wfa benchmark").with_exit_code(2)
        results += entries
    return results


def _print(results: list[dict[str, Any]], files: dict[str, str]) -> None:
    from wfa.eval.benchmark_report import tables

    for table in tables(results):
        print()
        print(table.text())
    skipped = [s for r in results for s in r.get("skipped", [])]
    for s in skipped:
        print(f"not run: {s['dataset']} ({s['what']}): {s['reason']}")
    print(f"\nwrote {', '.join(files.values())}")


def run(args: argparse.Namespace) -> int:
    """Run ``wfa benchmark``; exit code 1 when a data set of the suite could not be run (the rest is written)."""
    from wfa.eval.benchmark_report import write_benchmark

    _check(args)
    if args.compare:
        results = _read_results(args.compare)
        _print(results, write_benchmark(results, args.out))
        return 0

    import torch

    from wfa.eval.benchmark import RunOptions, SuiteError, load_suite, run_suite
    from wfa.eval.features import FeatureCache

    try:
        suite = load_suite(args.suite, args.data_root)
    except SuiteError as error:
        raise EvalError(str(error)).with_exit_code(2) from None
    if args.templates:
        suite.templates = Path(args.templates)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer, info = load_model(args, device)
    cache = FeatureCache(None if args.no_cache else (args.cache or default_cache()))
    options = RunOptions(device=device, image_size=info["image_size"], batch_size=args.batch_size,
                         num_workers=args.num_workers, progress=not args.no_progress,
                         only=[n.strip() for n in args.only.split(",") if n.strip()] if args.only else None)
    try:
        results = run_suite(suite, model, tokenizer, cache, options, model_info=info)
    except SuiteError as error:
        raise EvalError(str(error)).with_exit_code(2) from None
    except ValueError as error:  # a prompt file or task that is unusable for every data set
        raise EvalError(str(error)) from None
    _print([results], write_benchmark([results], args.out))
    if results["skipped"]:
        names = ", ".join(s["dataset"] for s in results["skipped"])
        raise EvalError(f"{len(results['skipped'])} data set(s) of the suite not run ({names}); "
                        f"see {Path(args.out) / 'benchmark.md'}")
    return 0
