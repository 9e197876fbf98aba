"""Write a BigEarthNet.txt stand-in parquet (wfa.data.txt_standin): the real schema and counts.

    python scripts/bigearthnet_txt_standin.py --out standin.parquet            # full size: 464,044 patches
    python scripts/bigearthnet_txt_standin.py --out small.parquet --patches 2000 --seed 1

Convert it with procedural imagery:

    wfa shards bigearthnet-txt --parquet standin.parquet --procedural-images --out shards/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wfa.data.txt_standin import FULL_PATCHES, write_standin  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, write the parquet, print its counts as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the parquet file to write")
    parser.add_argument("--patches", type=int, default=FULL_PATCHES, help=f"patches (default {FULL_PATCHES:,})")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same file (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        counts = write_standin(args.out, num_patches=args.patches, seed=args.seed, progress=not args.no_progress)
    except ValueError as error:
        print(f"bigearthnet_txt_standin: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
