"""Caption-redundancy report (BLEU-uniqueness weights) of a Karpathy-format caption file.

Reads images[].sentences[].raw from the JSON with :func:`wfa.data.karpathy.read_karpathy_captions` (no
images needed), prints a summary, and optionally writes the report as JSON (--out) and a PNG of the
distributions (--plot).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wfa.data.karpathy import read_karpathy_captions


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
    lines = [
        f"images            {report['num_images']} (skipped without captions: {report['skipped_images']})",
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


def run(args: argparse.Namespace) -> int:
    """Compute, print and write the redundancy report; 0 on success, 2 on bad input."""
    from wfa.redundancy import EmptyCaptionError, plot_redundancy, redundancy_report

    if not args.captions.is_file():
        print(f"error: caption file not found: {args.captions}", file=sys.stderr)
        return 2
    try:
        entries = read_karpathy_captions(args.captions, splits=None if args.split is None else [args.split])
    except (ValueError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # images without captions have no weights: counted, not reported
    names = [entry.filename for entry in entries if entry.captions]
    groups = [list(entry.captions) for entry in entries if entry.captions]
    skipped = len(entries) - len(groups)
    if not groups:
        print(f"error: {args.captions}: no images with captions"
              + (f" in split {args.split!r}" if args.split else ""), file=sys.stderr)
        return 2
    try:
        report = redundancy_report(groups, tau=args.tau, workers=args.workers, progress=True)
    except EmptyCaptionError as error:
        print(f"error: {args.captions}: image {names[error.image_index]!r} caption "
              f"{error.caption_index} is empty; fix or remove it", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {"source": str(args.captions), "split": args.split, "skipped_images": skipped, **report}
    _print_summary(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote report {args.out}")
    if args.plot is not None:
        print(f"wrote plot {plot_redundancy(report, args.plot)}")
    return 0
