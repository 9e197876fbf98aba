"""Write the scene images of a captioned data set as a class-per-folder tree (ImageFolder layout).

    python scripts/scene_folders.py --root $WFA_SHARED_DATA/ucm-captions --out data/ucm-scenes
    python scripts/scene_folders.py --root $WFA_SHARED_DATA/rsicd --captions dataset_rsicd.json \\
        --exclude playfields --out data/rsicd-scenes

Reads the Karpathy caption file (its splits), ``labels.csv`` (``filename,class``) and ``images/`` of
``--root`` through the ``karpathy`` benchmark task (:mod:`wfa.eval.tasks`, the same listing ``wfa benchmark``
uses) and writes ``OUT/<split>/<class>/<file>``: hard links to the source images where the file system
allows, else copies (``--copy`` always copies). With ``--no-splits`` the tree is ``OUT/<class>/<file>``, as the
original UC Merced Land Use download is. A ``folder`` task on the tree then lists the same images with the
same classes and splits as the ``ucm`` / ``rsicd`` task on the source (tested). ``--out`` must not exist yet.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wfa.eval.tasks import create_task  # noqa: E402


def place(source: Path, target: Path, copy: bool) -> str:
    """Hard-link (or copy) ``source`` to ``target``; returns ``"linked"`` or ``"copied"``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(source, target)
            return "linked"
        except OSError:
            pass
    shutil.copy2(source, target)
    return "copied"


def write_tree(root: Path, out: Path, captions: str = "dataset.json", exclude: tuple[str, ...] = (),
               splits: bool = True, copy: bool = False) -> Counter:
    """Write the tree (module docstring); returns counts: images written by split, linked/copied, skipped."""
    if out.exists():
        raise SystemExit(f"scene_folders.py: error: --out {out} exists; give a new folder")
    task = create_task("karpathy", captions=root / captions, images=root / "images", labels=root / "labels.csv",
                       exclude=exclude)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    counts: Counter = Counter()
    for item in task.items:
        source = Path(item.ref)
        folder = staging / (item.split or "train") if splits else staging
        counts[place(source, folder / item.labels[0] / source.name, copy)] += 1
        counts[f"split {item.split}"] += 1
    for reason, n in task.skipped.items():
        counts[f"skipped: {reason}"] += n
    staging.rename(out)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="data set folder: the caption file, labels.csv, images/")
    parser.add_argument("--captions", default="dataset.json", help="caption file name in --root (default dataset.json)")
    parser.add_argument("--out", required=True, help="new folder for the tree")
    parser.add_argument("--exclude", default="", help="comma-separated classes to leave out")
    parser.add_argument("--no-splits", action="store_true", help="OUT/<class>/ without split folders")
    parser.add_argument("--copy", action="store_true", help="copy the images instead of hard-linking them")
    args = parser.parse_args(argv)
    exclude = tuple(c.strip() for c in args.exclude.split(",") if c.strip())
    try:
        counts = write_tree(Path(args.root), Path(args.out), args.captions, exclude, not args.no_splits, args.copy)
    except ValueError as error:
        print(f"scene_folders.py: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{key} {n}" for key, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
