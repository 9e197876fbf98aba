"""Caption-redundancy report (BLEU-uniqueness weights) of a Karpathy-format caption file.

Reads images[].sentences[].raw from the JSON with :func:`wfa.data.karpathy.read_karpathy_captions` (no
images needed), prints a summary, and optionally writes the report as JSON (--out) and a PNG of the
distributions (--plot). Images with more than 1,000 captions are skipped and counted, as `wfa shards`
rejects them.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from wfa.commands.paths import output_file_problem
from wfa.data.karpathy import read_karpathy_captions
from wfa.data.sample import MAX_CAPTIONS
from wfa.errors import RedundancyError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``wfa redundancy`` options."""
    parser.add_argument("--captions", required=True, type=Path, metavar="FILE",
                        help="Karpathy-format caption JSON ({'images': [{'sentences': [{'raw': ...}]}]})")
    parser.add_argument("--out", type=Path, metavar="JSON", help="write the report here")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write the K / entropy / BLEU histograms here")
    parser.add_argument("--split", metavar="NAME", help="only images whose 'split' is NAME (e.g. train)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for BLEU (default 1)")
    parser.add_argument("--tau", type=float, default=None,
                        help="softmax temperature for the weights (default: linear normalisation)")


def _print_summary(report: dict) -> None:
    entropy = report["weight_entropy_normalized"]
    bleu = report["mean_pairwise_bleu"]
    skipped = report["skipped_reasons"]
    lines = [
        f"images            {report['num_images']} (skipped without captions: {skipped['no captions']}, "
        f"with more than {MAX_CAPTIONS} captions: {skipped['too many captions']})",
        f"captions          {report['num_captions']}  K mean {report['k']['mean']:.2f} "
        f"min {report['k']['min']} max {report['k']['max']}",
        f"distinct ratio    {report['distinct_ratio']:.4f}  exact-duplicate rate "
        f"{report['exact_duplicate_rate']:.4f}  images with copies {report['images_with_copies']:.4f}",
        f"mean pair BLEU    {'n/a' if bleu is None else f'{bleu:.2f}'} over {report['num_pairs']} ordered pairs",
        "weight entropy    " + ("n/a (every image has K = 1)" if entropy["mean"] is None else
                                f"{entropy['mean']:.4f} mean, {entropy['min']:.4f} min (normalised by log K)"),
        "K histogram       " + ", ".join(f"{k}: {n}" for k, n in report["k_histogram"].items()),
    ]
    print("\n".join(lines))


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before any caption is read: the caption file, the output paths, the
    numbers. Raises :class:`RedundancyError` (exit 2)."""
    if not args.captions.is_file():
        raise RedundancyError(f"caption file not found or not a file: {args.captions}").with_exit_code(2)
    for path, option in ((args.out, "--out"), (args.plot, "--plot")):
        problem = output_file_problem(path, option) if path is not None else None
        if problem is not None:
            raise RedundancyError(problem).with_exit_code(2)
    if args.workers < 1:
        raise RedundancyError(f"--workers {args.workers} must be >= 1").with_exit_code(2)
    if args.tau is not None and not (math.isfinite(args.tau) and args.tau > 0):
        raise RedundancyError(f"--tau {args.tau} must be a finite number > 0 (or left out)").with_exit_code(2)


def run(args: argparse.Namespace) -> int:
    """Compute, print and write the redundancy report; 0 on success; :class:`RedundancyError` on bad input.

    Images without captions and images with more than ``MAX_CAPTIONS`` captions (which ``wfa shards``
    rejects too: BLEU uniqueness costs K^2 comparisons) are skipped and counted in ``skipped_reasons``."""
    from wfa.redundancy import EmptyCaptionError, plot_redundancy, redundancy_report

    check_arguments(args)
    try:
        entries = read_karpathy_captions(args.captions, splits=None if args.split is None else [args.split])
    except (ValueError, UnicodeDecodeError) as error:
        raise RedundancyError(str(error)).with_exit_code(2) from None
    kept = [entry for entry in entries if 0 < len(entry.captions) <= MAX_CAPTIONS]
    names = [entry.filename for entry in kept]
    groups = [list(entry.captions) for entry in kept]
    skipped = {"no captions": sum(1 for entry in entries if not entry.captions),
               "too many captions": sum(1 for entry in entries if len(entry.captions) > MAX_CAPTIONS)}
    if not groups:
        raise RedundancyError(f"{args.captions}: no images with 1..{MAX_CAPTIONS} captions"
                              + (f" in split {args.split!r}" if args.split else "")
                              + f" (skipped: {skipped})").with_exit_code(2)
    try:
        report = redundancy_report(groups, tau=args.tau, workers=args.workers, progress=True)
    except EmptyCaptionError as error:
        raise RedundancyError(f"{args.captions}: image {names[error.image_index]!r} caption {error.caption_index} "
                              "is empty; fix or remove it").with_exit_code(2) from None
    except ValueError as error:
        raise RedundancyError(f"{args.captions}: {error}").with_exit_code(2) from None
    report = {"source": str(args.captions), "split": args.split, "skipped_images": sum(skipped.values()),
              "skipped_reasons": skipped, **report}
    _print_summary(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote report {args.out}")
    if args.plot is not None:
        print(f"wrote plot {plot_redundancy(report, args.plot)}")
    return 0
