"""Write a data set into WebDataset shards with precomputed BLEU weights and an index.json.

Sources (one subcommand each):

  wfa shards synthetic --out DIR [--num-images 1000] [--multispectral]
  wfa shards karpathy --captions dataset.json --images DIR [--labels labels.csv] --out DIR
  wfa shards bigearthnet --s2 DIR [--s1 DIR] [--mode s1s2|s2|s1] --out DIR
  wfa shards bigearthnet-lmdb --lmdb DIR [--mode s1s2|s2|s1] --out DIR
  wfa shards bigearthnet-txt --parquet FILE (--s2 DIR [--s1 DIR] | --lmdb DIR | --procedural-images)
                             [--text-types captioning,binary] --out DIR

Shards are OUT/{split}-{NNNNNN}.tar; OUT/index.json holds the counts. A bad item (missing or
unreadable image, no or empty caption, missing band, wrong band shape, NaN) stops the run and is
named; with --skip-bad it is listed in OUT/rejects.jsonl instead, and `written + rejected == read`
is printed either way.
"""
from __future__ import annotations

import argparse
from typing import Any

from wfa.errors import ShardsError

SOURCES = ("synthetic", "karpathy", "bigearthnet", "bigearthnet-lmdb", "bigearthnet-txt")
MODES = ("s1s2", "s2", "s1")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; previous shards in it are replaced)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad items, listing them in OUT/rejects.jsonl, instead of stopping at the first")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard at most (default 1000)")
    parser.add_argument("--max-shard-mb", type=float, default=512.0, help="megabytes per shard at most (default 512)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that validate and encode images (default 0: in this process)")
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                        help="encoding of RGB images (jpg at quality 95, or lossless png); multispectral "
                             "bands are stored exactly (safetensors, native resolution)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _patch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metadata", action="append",
                        help="v2 metadata.parquet (labels, splits, S1 pairing); repeat it to add "
                             "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    parser.add_argument("--mapping", help="csv/parquet 'patch_id,s1_name' pairing S2 patches with S1 patches")
    parser.add_argument("--splits", help="csv/parquet 'patch_id,split' (default: from metadata, else train)")
    parser.add_argument("--default-split", default="train", help="split of patches no table names (default train)")
    parser.add_argument("--captions-per-image", type=int, default=5,
                        help="label-template captions per patch (default 5)")
    parser.add_argument("--resample", choices=("bilinear", "nearest"), default="bilinear",
                        help="resampling of 20/60 m bands to 120 x 120 (default bilinear)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``wfa shards <source> ...``."""
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    synthetic = sources.add_parser("synthetic", help="the embedded synthetic data set (no download)")
    synthetic.add_argument("--num-images", type=int, default=1000, help="images to draw (default 1000)")
    synthetic.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same data (default 0)")
    synthetic.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    synthetic.add_argument("--captions-per-image", type=int, default=5, help="captions per image (default 5)")
    synthetic.add_argument("--multispectral", action="store_true", help="12 Sentinel-2-like bands instead of RGB")

    karpathy = sources.add_parser("karpathy", help="a Karpathy caption json (UCM, RSICD, ...) and an image folder")
    karpathy.add_argument("--captions", required=True, help="the Karpathy-format caption json")
    karpathy.add_argument("--images", required=True, help="the image folder")
    karpathy.add_argument("--labels", help="optional csv 'filename,class' for class labels")

    ben = sources.add_parser("bigearthnet", help="BigEarthNet GeoTIFF trees (v1 or v2.0 layout)")
    ben.add_argument("--s2", help="the Sentinel-2 patch folder (v1 S2/ or v2 BigEarthNet-S2/)")
    ben.add_argument("--s1", help="the Sentinel-1 patch folder (v1 S1/ or v2 BigEarthNet-S1/)")
    ben.add_argument("--mode", choices=MODES,
                     help="bands to stack (default: s1s2 with both folders, else the one given)")
    ben.add_argument("--layout", choices=("auto", "v1", "v2"), default="auto", help="folder layout (default auto)")
    _patch_options(ben)

    lmdb = sources.add_parser("bigearthnet-lmdb", help="BigEarthNet patches in an LMDB (rico-hdl encoding)")
    lmdb.add_argument("--lmdb", required=True, help="the LMDB folder (holding data.mdb)")
    lmdb.add_argument("--mode", choices=MODES, default="s1s2", help="bands to stack (default s1s2)")
    _patch_options(lmdb)

    txt = sources.add_parser("bigearthnet-txt", help="BigEarthNet.txt parquet text with BigEarthNet imagery")
    txt.add_argument("--parquet", required=True, help="the BigEarthNet.txt parquet file")
    txt.add_argument("--s2", help="the BigEarthNet v2.0 Sentinel-2 patch folder (BigEarthNet-S2/)")
    txt.add_argument("--s1", help="the BigEarthNet v2.0 Sentinel-1 patch folder (BigEarthNet-S1/)")
    txt.add_argument("--lmdb", help="instead of --s2/--s1: the patches as an LMDB folder (holding data.mdb)")
    txt.add_argument("--mode", choices=MODES,
                     help="bands to stack (default: s1s2 with both folders or an LMDB, else the one given)")
    txt.add_argument("--text-types", default="captioning",
                     help="comma-separated row types turned into captions: captioning, binary, mcq, "
                          "'bounding box' (default captioning)")
    txt.add_argument("--keep-splits",
                     help="comma-separated splits to keep (train, validation, test, bench; default all)")
    txt.add_argument("--procedural-images", action="store_true",
                     help="instead of real imagery: procedural bands keyed by patch id (wfa.data.txt_standin), "
                          "for measuring the conversion of a stand-in parquet")
    txt.add_argument("--procedural-scale", type=int, default=1,
                     help="divide the procedural bands' sides by this (1, 2, 4, 5, 10, 20; default 1: native size)")
    txt.add_argument("--work-dir", help="folder for the temporary row buckets (default: the system temp folder)")

    for sub in sources.choices.values():
        _common(sub)


def _mode(args: argparse.Namespace) -> str:
    if args.mode:
        return args.mode
    if (args.s2 and args.s1) or getattr(args, "lmdb", None):
        return "s1s2"
    if args.s1:
        return "s1"
    return "s2"


def _patch_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"metadata": args.metadata, "mapping": args.mapping, "splits": args.splits,
            "default_split": args.default_split, "k": args.captions_per_image}


def build_reader(args: argparse.Namespace) -> Any:
    """The reader for ``args.source`` (readers are imported here, keeping the CLI start light)."""
    if args.source == "synthetic":
        from wfa.data.synthetic import SyntheticReader

        return SyntheticReader(num_images=args.num_images, seed=args.seed, image_size=args.image_size,
                               multispectral=args.multispectral, captions_per_image=args.captions_per_image)
    if args.source == "karpathy":
        from wfa.data.karpathy import KarpathyReader

        return KarpathyReader(args.captions, args.images, labels=args.labels)
    if args.source == "bigearthnet":
        from wfa.data.bigearthnet import BigEarthNetReader

        if not args.s2 and not args.s1:
            raise ValueError("give --s2 and/or --s1")
        return BigEarthNetReader(args.s2, args.s1, mode=_mode(args), layout=args.layout, resample=args.resample,
                                 native=True, **_patch_kwargs(args))
    if args.source == "bigearthnet-lmdb":
        from wfa.data.lmdb_reader import LMDBReader

        return LMDBReader(args.lmdb, mode=args.mode, resample=args.resample, native=True, **_patch_kwargs(args))
    from wfa.data.bigearthnet_txt import BigEarthNetTxtReader

    images: Any
    if args.procedural_images:
        from wfa.data.txt_standin import ProceduralImages

        images = ProceduralImages(mode=args.mode or "s1s2", scale=args.procedural_scale)
    elif args.lmdb:
        from wfa.data.lmdb_reader import LMDBReader

        images = LMDBReader(args.lmdb, mode=_mode(args), native=True)
    elif args.s2 or args.s1:
        from wfa.data.bigearthnet import BigEarthNetReader

        images = BigEarthNetReader(args.s2, args.s1, mode=_mode(args), native=True)
    else:
        raise ValueError("give --s2 and/or --s1, or --lmdb: the imagery the parquet's patch ids refer to "
                         "(or --procedural-images for a stand-in)")
    text_types = tuple(t.strip() for t in args.text_types.split(",") if t.strip())
    keep = [s.strip() for s in args.keep_splits.split(",") if s.strip()] if args.keep_splits else None
    return BigEarthNetTxtReader(args.parquet, images=images, text_types=text_types, splits=keep,
                                work_dir=args.work_dir, progress=not args.no_progress)


def summary(index: dict[str, Any], out: str, reader: Any = None) -> list[str]:
    """The lines printed after a write: counts, splits, rejects (and a text reader's row counts)."""
    lines = [f"read {index['read']}, written {index['written']}, rejected {index['rejected']} "
             f"(written + rejected == read: {index['written'] + index['rejected'] == index['read']})"]
    for split, info in index["splits"].items():
        lines.append(f"  {split}: {info['num_samples']} samples in {len(info['shards'])} shard(s)")
    if index["rejected"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in index["rejected_reasons"].items())
        lines.append(f"  rejected: {reasons} -- listed in {out}/rejects.jsonl")
    source = index.get("source") or {}
    not_read = {key: source[key] for key in ("s1_unpaired", "unlabelled", "label_rows_unmatched") if source.get(key)}
    if not_read:
        lines.append("  not read or without labels: " + ", ".join(f"{k}: {v}" for k, v in not_read.items())
                     + " (see source in index.json)")
    stats = getattr(reader, "stats", None)
    if stats:
        lines.append(f"  text rows: {stats}")
    lines.append(f"index: {out}/index.json")
    return lines


def run(args: argparse.Namespace) -> int:
    """Build the reader, write the shards, print the summary.

    Exit code 2 for unusable arguments (a missing or malformed source), 1 for a bad item, no sample
    written or a busy ``--out``; ``--out`` keeps its previous data set in every failing case.
    """
    from wfa.data.sample import BadItemError
    from wfa.data.writer import write_shards

    if args.shard_size < 1 or not args.max_shard_mb > 0 or args.workers < 0:
        raise ShardsError("--shard-size and --max-shard-mb must be positive and --workers >= 0").with_exit_code(2)
    try:
        reader = build_reader(args)
    except (ValueError, OSError) as error:
        raise ShardsError(_one_line(error)).with_exit_code(2) from None
    try:
        index = write_shards(reader, args.out, shard_size=args.shard_size,
                             max_shard_bytes=int(args.max_shard_mb * 1024 * 1024), skip_bad=args.skip_bad,
                             workers=args.workers, image_format=args.image_format, progress=not args.no_progress)
    except BadItemError as error:
        raise ShardsError(f"{error}; {args.out} was left as it was") from None
    except ShardsError:
        raise
    except (ValueError, OSError) as error:  # a reader's malformed source found while reading
        raise ShardsError(f"{_one_line(error)}; {args.out} was left as it was").with_exit_code(2) from None
    print("\n".join(summary(index, args.out, reader)))
    return 0


def _one_line(error: BaseException) -> str:
    """An exception as a message: OS errors keep their file name."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)
