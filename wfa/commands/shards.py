"""Write a data set into WebDataset shards with precomputed BLEU weights and an index.json.

One sub-command per registered reader (wfa.data.list_readers(); a package's readers join through its
`wfa.readers` entry points, a script's through `wfa --import MODULE`), e.g.:

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

from wfa.errors import PluginError, ShardsError

# names a reader's argument cannot take: the options of _common, and the sub-command's own
_RESERVED = frozenset({"out", "skip_bad", "shard_size", "max_shard_mb", "workers", "image_format", "no_progress",
                       "command", "source"})


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


def _shown(default: Any) -> str | None:
    """A factory default as an option's help shows it (None: nothing worth showing)."""
    if default is None or default is False or default == ():
        return None
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default))
    return str(default)


def add_reader_arguments(parser: argparse.ArgumentParser, spec: Any) -> None:
    """One option per argument ``spec`` (a :class:`wfa.data.readers.ReaderSpec`) declares. An option not given
    is not passed, so the factory's own default applies (shown in the help)."""
    for arg in spec.args:
        if {arg.name, arg.option.lstrip("-").replace("-", "_")} & _RESERVED:
            raise PluginError(f"reader {spec.name!r} declares the argument {arg.name!r}, which wfa shards uses "
                              "itself; rename it")
        default = None if spec.required(arg.name) else _shown(spec.default(arg.name))
        text = arg.help + (f" (default {default})" if default is not None else "")
        kwargs: dict[str, Any] = {"dest": arg.name, "help": text, "default": argparse.SUPPRESS}
        if arg.switch:
            kwargs["action"] = "store_true"
        else:
            metavar = arg.metavar or (None if arg.choices else arg.option.lstrip("-").replace("-", "_").upper())
            kwargs.update(type=arg.type, choices=arg.choices, metavar=metavar)
            if arg.repeat:
                kwargs["action"] = "append"
            if spec.required(arg.name):
                kwargs["required"] = True
        try:
            parser.add_argument(arg.option, **kwargs)
        except argparse.ArgumentError as error:
            raise PluginError(f"reader {spec.name!r}: {error}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``wfa shards <reader> ...``: one sub-command per registered reader."""
    from wfa.data.readers import get_reader, list_readers

    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name in list_readers():
        spec = get_reader(name)
        sub = sources.add_parser(name, help=spec.help, description=spec.help)
        add_reader_arguments(sub, spec)
        _common(sub)


def build_reader(args: argparse.Namespace) -> Any:
    """The reader ``args.source`` from the options given (``wfa.data.create_reader``)."""
    from wfa.data.readers import create_reader, get_reader

    spec = get_reader(args.source)
    kwargs = {arg.name: getattr(args, arg.name) for arg in spec.args if hasattr(args, arg.name)}
    if spec.takes("progress"):
        kwargs["progress"] = not args.no_progress
    return create_reader(args.source, **kwargs)


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
