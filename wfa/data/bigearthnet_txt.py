"""BigEarthNet.txt: the text parquet of BigEarthNet v2.0 grouped into one ``Sample`` per patch.

The file has exactly the columns ``ID, s1_name, patch_id, input, output, type, category, split,
latitude, longitude, country, season, climate_zone``; ``type`` is one of ``binary``, ``mcq``,
``bounding box``, ``captioning`` and ``split`` one of ``train``, ``validation``, ``test``,
``bench``. Rows are grouped by ``patch_id`` (the S2 patch) wherever they lie in the file, streaming
through on-disk buckets (see ``BigEarthNetTxtReader``); patches come out sorted by ``patch_id``,
so the output order is deterministic.

**Which texts a patch keeps, and in which order** (the caption-keeping rule): the captions come
first, then the other selected types in the fixed order of :data:`TEXT_ORDER` -- ``captioning``,
``binary``, ``mcq``, ``bounding box`` --, each type in ``ID`` order. Training keeps the first
``data.max_captions`` texts of a sample (``wfa.data.loader``), so with any ``max_captions >= 1``
a patch's human-written caption is never the one cut off for a rule-made sentence, whatever the row
order of the file (BigEarthNet.txt stores the caption rows after the binary / MCQ / box rows, so
``ID`` order would keep the caption of almost no patch at ``max_captions: 5``). Per type:

- ``captioning`` rows: the caption is ``output``, verbatim (an empty or invisible one -- only
  white space or zero-width characters -- rejects the patch, like such a caption anywhere else);
- with ``"binary"`` in ``text_types``: ``binary_to_text(input, output)``;
- with ``"mcq"``: ``mcq_to_text(input, output)``;
- with ``"bounding box"``: ``bbox_to_text(input, output)``.

A row whose ``ID`` repeats an earlier row's (a duplicated row) is skipped and counted once, not
turned into a second text. The conversions are small documented rules (see each function); a row
they cannot parse is skipped and counted in ``stats["skipped"]`` by reason. ``stats`` also counts
rows read, rows per type in the file, rows selected, texts produced per type, the captions kept and
dropped by reason (``stats["captions"]``: ``rows == kept + sum(dropped)``) and how many captions
each patch keeps (``captions_per_patch``, from which the captions any ``max_captions`` keeps
follow); the reader's ``source`` (which the shard writer stores in ``index.json``) holds ``stats``
as ``rows``.

The file must have the column types of BigEarthNet.txt (``ID`` an integer, ``latitude`` and
``longitude`` numbers, the rest strings; :func:`check_schema`), and a file pyarrow cannot read is
named in the error. The row buckets live in a work folder (``work_dir``) that the running
conversion holds a lock in; a later conversion removes the work folders of killed ones (and only
folders with such a lock file).

The parquet holds no imagery: ``images`` must be a ``BigEarthNetReader`` or ``LMDBReader`` over the
BigEarthNet v2.0 patches (its ``mode`` decides the channels, its ``native`` flag whether samples carry
native-resolution ``NativeBands``; the row's ``s1_name`` is used as the S1 partner), the stand-in's
``wfa.data.txt_standin.ProceduralImages``, or a callable ``patch_id -> C x H x W array`` (then pass
``bands=``), ``-> NativeBands`` or ``-> PIL image``.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wfa.data.bigearthnet import PatchError
from wfa.data.progress import progress
from wfa.data.sample import Rejected, Sample, caption_problem, is_blank
from wfa.data.shard_format import NativeBands

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "ID", "s1_name", "patch_id", "input", "output", "type", "category", "split",
    "latitude", "longitude", "country", "season", "climate_zone",
)
TEXT_TYPES: tuple[str, ...] = ("binary", "mcq", "bounding box", "captioning")
TEXT_ORDER: tuple[str, ...] = ("captioning", "binary", "mcq", "bounding box")  # a patch's texts, in this order
# the column types of BigEarthNet.txt: (pyarrow type test, what it should be)
_COLUMN_KINDS = {"ID": ("integer", "an integer"), "latitude": ("number", "a number"),
                 "longitude": ("number", "a number")}
_WORK_PREFIX = "wfa-bigearthnet-txt-"
_OWNER_LOCK = ".wfa-owner.lock"  # held by the conversion using a work folder; marks the folder as wfa's
SPLITS: tuple[str, ...] = ("train", "validation", "test", "bench")
_META_COLUMNS = ("s1_name", "latitude", "longitude", "country", "season", "climate_zone")
_PATCHES_PER_BATCH = 2048
_SCAN_ROWS = 1 << 20  # rows per parquet batch read
_BUCKET_ROWS = 1_000_000  # selected rows per on-disk bucket (bounds the memory of one iteration)

_REF = re.compile(r"<ref>(.*?)</ref>", re.S)
_COORD_TAGS = re.compile(r"<(point|box|quad)>.*?</\1>", re.S)
_ANY_TAG = re.compile(r"</?[a-z_]+>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?")
_OPTION = re.compile(r"(?:^|\s)\(?([A-H])[).:]\s+")


def strip_tags(text: str) -> str:
    """Drop ``<point>..</point>``/``<box>..</box>`` (coordinates) and keep the words inside other tags."""
    text = _COORD_TAGS.sub(" ", text)
    return " ".join(_ANY_TAG.sub(" ", text).split())


def _first_question(text: str) -> str | None:
    match = re.search(r"[^.?!\n]*\?", strip_tags(text))
    return " ".join(match.group(0).split()) if match else None


def _yes_no(answer: str) -> bool | None:
    word = strip_tags(answer).strip().rstrip(".!").lower()
    return {"yes": True, "true": True, "no": False, "false": False}.get(word)


def _sentence(text: str) -> str:
    text = text.strip().rstrip("?.! ")
    return text[:1].upper() + text[1:] + "."


def _third_person(verb: str) -> str:
    if verb == "have":
        return "has"
    return verb + ("es" if verb.endswith(("s", "sh", "ch", "x", "z", "o")) else "s")


def binary_to_text(question: str, answer: str) -> str | None:
    """A yes/no question and its answer as one declarative sentence, or ``None`` if unparsable.

    Rules, on the first ``...?`` sentence of ``question`` (tags stripped):
    ``Is there X?`` -> ``There is X.`` / ``There is no X.`` (``Are there`` likewise; a leading
    "any" is dropped, and "a"/"an" too after "no");
    ``Does the image|patch|scene|area V X?`` -> ``The image Vs X.`` / ``The image does not V X.``;
    any other question -> ``<question> Yes.`` / ``<question> No.``.
    """
    positive = _yes_no(answer)
    asked = _first_question(question)
    if positive is None or asked is None:
        return None
    there = re.match(r"^(is|are) there (.+)\?$", asked, re.I)
    if there:
        verb, rest = there.group(1).lower(), re.sub(r"^any\s+", "", there.group(2), flags=re.I)
        if positive:
            return _sentence(f"there {verb} {rest}")
        rest = re.sub(r"^(a|an|any)\s+", "", rest, flags=re.I)
        return _sentence(f"there {verb} no {rest}")
    does = re.match(r"^does (the|this) (image|patch|scene|area|picture) (\w+) (.+)\?$", asked, re.I)
    if does:
        subject, verb, rest = f"the {does.group(2).lower()}", does.group(3).lower(), does.group(4)
        return _sentence(f"{subject} {_third_person(verb)} {rest}" if positive else f"{subject} does not {verb} {rest}")
    return f"{asked} {'Yes' if positive else 'No'}."


def mcq_to_text(question: str, answer: str) -> str | None:
    """A multiple-choice question and its answer as ``"<question stem>: <answer>."``, or ``None``.

    Options are recognised as ``A) text``, ``A. text``, ``A: text`` or ``(A) text``; the stem is
    the text before the first option (up to its ``?``). An answer that is an option letter (with or
    without its text) is replaced by that option's text.
    """
    text = strip_tags(question)
    markers = list(_OPTION.finditer(text))
    options: dict[str, str] = {}
    for index, marker in enumerate(markers):
        end = markers[index + 1].start() if index + 1 < len(markers) else len(text)
        options[marker.group(1)] = text[marker.end() : end].strip().rstrip(",;")
    stem = text[: markers[0].start()] if markers else text
    stem = stem[: stem.index("?")] if "?" in stem else stem
    stem = stem.strip()
    chosen = strip_tags(answer).strip()
    letter = re.match(r"^\(?([A-H])(?:[).:]\s*|\s+|$)(.*)$", chosen)
    if letter and letter.group(1) in options:
        chosen = options[letter.group(1)]
    chosen = chosen.strip().rstrip(".")
    if not stem or not chosen:
        return None
    return f"{stem[:1].upper()}{stem[1:]}: {chosen}."


_REGIONS = {
    ("upper", "left"): "in the upper left", ("upper", "center"): "at the top",
    ("upper", "right"): "in the upper right", ("middle", "left"): "on the left",
    ("middle", "center"): "in the center", ("middle", "right"): "on the right",
    ("lower", "left"): "in the lower left", ("lower", "center"): "at the bottom",
    ("lower", "right"): "in the lower right",
}


def region_words(x: float, y: float) -> str:
    """Where a point in normalised image coordinates (x right, y down, both in [0, 1]) lies, in words."""
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "center"
    row = "upper" if y < 1 / 3 else "lower" if y > 2 / 3 else "middle"
    return _REGIONS[(row, column)]


def bbox_to_text(question: str, answer: str) -> str | None:
    """A referring expression and its boxes/points as a region phrase, or ``None`` if unparsable.

    The phrase is the first ``<ref>..</ref>`` of the answer or the question. Coordinates are read
    from ``answer`` (``<box>``/``<point>`` tags or bare brackets), all numbers in [0, 1]: groups of
    four are boxes ``x1 y1 x2 y2``, a lone pair is a point. Each box becomes the region of its centre
    (``region_words``), or "covering most of the image" when it spans over 2/3 in both directions;
    e.g. ``"<ref>the forest</ref>"`` + ``[0.0 0.0, 0.3 0.3]`` -> ``"The forest in the upper left."``.
    """
    refs = _REF.findall(answer) or _REF.findall(question)
    phrase = " ".join(_ANY_TAG.sub(" ", refs[0]).split()) if refs else ""
    coordinates = _REF.sub(" ", answer)
    numbers = [float(value) for value in _NUMBER.findall(coordinates)]
    if not phrase or not numbers or any(not 0.0 <= value <= 1.0 for value in numbers):
        return None
    if len(numbers) == 2:
        places = [region_words(numbers[0], numbers[1])]
    elif len(numbers) % 4 == 0:
        places = []
        for x1, y1, x2, y2 in zip(*[iter(numbers)] * 4):
            if abs(x2 - x1) > 2 / 3 and abs(y2 - y1) > 2 / 3:
                places.append("covering most of the image")
            else:
                places.append(region_words((x1 + x2) / 2, (y1 + y2) / 2))
    else:
        return None
    unique = list(dict.fromkeys(places))
    return _sentence(f"{phrase} {' and '.join(unique)}")


_CONVERTERS: dict[str, Callable[[str, str], str | None]] = {
    "binary": binary_to_text,
    "mcq": mcq_to_text,
    "bounding box": bbox_to_text,
}


def _unreadable(path: str | os.PathLike, error: BaseException) -> ValueError:
    """A pyarrow read error as a ``ValueError`` that names the file."""
    detail = " ".join(str(error).split())[:300]
    return ValueError(f"{path} is not a readable parquet file ({type(error).__name__}: {detail})")


def check_schema(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming the file unless it is a readable parquet with exactly ``COLUMNS``, ``ID`` an
    integer column, ``latitude``/``longitude`` numeric and every other column text (nulls are allowed: a row
    without what it needs is skipped and counted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from None
    names = schema.names
    missing = [name for name in COLUMNS if name not in names]
    extra = [name for name in names if name not in COLUMNS]
    if missing or extra:
        raise ValueError(
            f"{path} is not a BigEarthNet.txt parquet: missing columns {missing}, unexpected columns {extra} "
            f"(expected exactly {list(COLUMNS)})"
        )
    tests = {"integer": pa.types.is_integer, "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
             "text": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)}
    wrong = []
    for name in COLUMNS:
        kind, wanted = _COLUMN_KINDS.get(name, ("text", "text"))
        column_type = schema.field(name).type
        if not (tests[kind](column_type) or pa.types.is_null(column_type)):
            wrong.append(f"{name} is {column_type}, expected {wanted}")
    if wrong:
        raise ValueError(f"{path} is not a BigEarthNet.txt parquet: column types: {'; '.join(wrong)}")


class BigEarthNetTxtReader:
    """Iterable of ``Sample | Rejected``, one per patch of a BigEarthNet.txt parquet (module docstring).

    Streaming, with memory bounded by ``bucket_rows`` rather than by the file: the constructor scans
    only the ``patch_id``, ``type`` and ``split`` columns, batch by batch, to count rows and list the
    patches; each iteration then copies the selected rows, batch by batch, into Arrow IPC bucket files
    (in ``work_dir``, default the system temp folder) by patch rank -- about ``bucket_rows`` rows
    each -- and reads the buckets back one at a time, sorted by ``patch_id`` then ``ID``. So the rows
    of a patch may lie anywhere in the file, and the output is in ``patch_id`` order.
    """

    def __init__(
        self,
        parquet: str | os.PathLike,
        images: Any = None,
        text_types: Sequence[str] = ("captioning",),
        splits: Sequence[str] | None = None,
        bands: Sequence[str] | None = None,
        bucket_rows: int = _BUCKET_ROWS,
        work_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        """``images``: a BigEarthNet/LMDB reader or a callable (see the module docstring); ``splits``
        keeps only those splits; ``bands`` names the channels a callable returns; ``bucket_rows`` and
        ``work_dir``: see the class docstring; ``progress``: show the sorting pass's progress (a bar on a
        terminal, log lines elsewhere)."""
        if images is None:
            raise ValueError(
                "BigEarthNet.txt holds no imagery: pass images= a BigEarthNetReader (GeoTIFF tree) or "
                "LMDBReader over the BigEarthNet v2.0 patches, or a callable patch_id -> C x H x W array"
            )
        if not (hasattr(images, "image") or callable(images)):
            kind = type(images).__name__
            raise ValueError(f"images must be a BigEarthNetReader/LMDBReader or a callable, got {kind}")
        unknown = [t for t in text_types if t not in TEXT_TYPES]
        if unknown or not text_types:
            raise ValueError(f"text_types must be a non-empty subset of {list(TEXT_TYPES)}, got {list(text_types)}")
        bad_splits = [s for s in splits or () if s not in SPLITS]
        if bad_splits:
            raise ValueError(f"unknown split(s) {bad_splits}: BigEarthNet.txt splits are {list(SPLITS)}")
        if bucket_rows < 1:
            raise ValueError(f"bucket_rows must be positive, got {bucket_rows}")
        self.path = Path(parquet)
        check_schema(self.path)
        self.images = images
        self.text_types = list(text_types)
        self.splits = list(splits) if splits is not None else None
        self.bands = list(bands) if bands is not None else getattr(images, "bands", None)
        self.bucket_rows = bucket_rows
        self.work_dir = work_dir
        self.progress = progress
        self.stats: dict[str, Any] = {}
        self._scan()
        self.source = {
            "type": "bigearthnet-txt",
            "parquet": str(self.path),
            "text_types": self.text_types,
            "splits": self.splits,
            "images": getattr(images, "source", repr(images)),
            "rows": self.stats,  # filled in while iterating: the index then holds the final row counts
        }

    def _selected(self, table):  # noqa: ANN001, ANN202 - pyarrow.Table -> (mask, mask, counts, caption counts)
        """The rows to convert, the rows with a known split, and how many of the others were left out by
        reason (all rows, and captioning rows alone)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        kind = table.column("type")
        inside = lambda column, values: pc.fill_null(pc.is_in(column, value_set=_array(values)), False)  # noqa: E731
        every = pa.array(np.ones(table.num_rows, dtype=bool))
        known = inside(kind, list(TEXT_TYPES))
        wanted = inside(kind, self.text_types)
        has_patch = pc.and_(wanted, pc.is_valid(table.column("patch_id")))
        has_id = pc.and_(has_patch, pc.is_valid(table.column("ID")))
        split_ok = pc.and_(has_id, inside(table.column("split"), list(SPLITS)))
        keep = split_ok
        if self.splits is not None:
            keep = pc.and_(split_ok, inside(table.column("split"), self.splits))
        caption = pc.fill_null(pc.equal(kind, "captioning"), False)
        count = lambda mask: pc.sum(mask).as_py() or 0  # noqa: E731
        steps = (("unknown type", every, known), ("type not selected", known, wanted),
                 ("no patch_id", wanted, has_patch), ("no ID", has_patch, has_id),
                 ("unknown split", has_id, split_ok), ("split not selected", split_ok, keep))
        counts = {reason: count(before) - count(after) for reason, before, after in steps}
        captions = {reason: count(pc.and_(before, caption)) - count(pc.and_(after, caption))
                    for reason, before, after in steps[1:]}
        return keep, split_ok, counts, captions

    def _scan(self) -> None:
        """Pass over the ``patch_id``/``type``/``split`` columns: counts, patch list, split conflicts."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        rows_read, rows_selected = 0, 0
        rows_by_type: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        captions_dropped: Counter[str] = Counter()
        pairs, kept = [], []
        try:
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=_SCAN_ROWS,
                                                                columns=["ID", "patch_id", "type", "split"]):
                table = pa.Table.from_batches([batch])
                rows_read += table.num_rows
                rows_by_type.update({"(null)" if kind is None else kind: n
                                     for kind, n in zip(*_value_counts(table.column("type")))})
                keep, split_ok, counts, caption_counts = self._selected(table)
                skipped.update(counts)
                captions_dropped.update(caption_counts)
                rows_selected += pc.sum(keep).as_py() or 0
                pairs.append(table.filter(split_ok).group_by(["patch_id", "split"]).aggregate([]))
                kept.append(pc.unique(table.filter(keep).column("patch_id")))
        except (pa.ArrowException, OSError) as error:
            raise _unreadable(self.path, error) from None
        pair_table = pa.concat_tables(pairs).group_by(["patch_id", "split"]).aggregate([]) if pairs else None
        conflicting: list[str] = []
        if pair_table is not None and pair_table.num_rows:
            per_patch = pair_table.group_by("patch_id").aggregate([("split", "count")])
            in_two = per_patch.filter(pc.greater(per_patch.column("split_count"), 1))
            conflicting = in_two.column("patch_id").to_pylist()
        self._conflicting = set(conflicting)
        ids = pa.chunked_array(kept, type=pa.string()).combine_chunks() if kept else pa.array([], pa.string())
        ids = pc.unique(ids)
        self._patch_ids = ids.take(pc.sort_indices(ids))
        self.stats.update({
            "rows_read": rows_read,
            "rows_by_type": dict(sorted(rows_by_type.items())),
            "rows_selected": rows_selected,
            "patches": len(self._patch_ids),
            "texts_by_type": {t: 0 for t in self.text_types},
            "skipped": {reason: n for reason, n in sorted(skipped.items()) if n},
            "captions": {"rows": rows_by_type.get("captioning", 0), "kept": 0,
                         "dropped": {reason: n for reason, n in sorted(captions_dropped.items()) if n}},
            "captions_per_patch": {},
        })
        self._row_drops = dict(self.stats["captions"]["dropped"])  # the row-level part, restored per iteration

    def __len__(self) -> int:
        return len(self._patch_ids)

    def _skip(self, reason: str) -> None:
        self.stats["skipped"][reason] = self.stats["skipped"].get(reason, 0) + 1

    def _drop_captions(self, reason: str, n: int) -> None:
        if n:
            dropped = self.stats["captions"]["dropped"]
            dropped[reason] = dropped.get(reason, 0) + n

    def _rejected(self, patch_id: str, reason: str, detail: str, captions: int) -> Rejected:
        """A rejected patch, its captions counted as dropped for that reason."""
        self._drop_captions(f"patch rejected: {reason}", captions)
        return Rejected(patch_id, reason, detail)

    def _load(self, patch_id: str, s1_name: str | None) -> Any:
        if not hasattr(self.images, "image"):
            return self.images(patch_id)
        if getattr(self.images, "mode", None) == "s1":
            return self.images.image(s1_name)
        return self.images.image(patch_id, s1_name=s1_name)

    def _buckets(self, folder: Path) -> list[Path]:
        """Copy the selected rows into IPC files by patch rank (about ``bucket_rows`` rows each)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        count = max(1, -(-self.stats["rows_selected"] // self.bucket_rows))
        per_bucket = max(1, -(-len(self) // count))
        paths = [folder / f"bucket-{b:05d}.arrow" for b in range(count)]
        writers: list[Any] = [None] * count
        columns = ["ID", "patch_id", "input", "output", "type", "split", "category", *_META_COLUMNS]
        bar = progress(self.stats["rows_read"], desc="sorting rows by patch", unit="row", unit_scale=True,
                       enabled=self.progress)
        try:
            for batch in _batches(self.path, columns):
                bar.update(batch.num_rows)
                table = pa.Table.from_batches([batch])
                keep, _, _, _ = self._selected(table)
                table = table.filter(keep)
                if not table.num_rows:
                    continue
                rank = pc.index_in(table.column("patch_id"), value_set=self._patch_ids)
                table = table.append_column("_rank", rank)
                bucket = pc.divide(rank, pa.scalar(per_bucket, pa.int32())).to_numpy()
                order = np.argsort(bucket, kind="stable")
                table, bucket = table.take(order), bucket[order]
                edges = np.flatnonzero(np.diff(bucket)) + 1
                for lo, hi in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(bucket)]])):
                    b = int(bucket[lo])
                    if writers[b] is None:
                        writers[b] = pa.ipc.new_file(paths[b], table.schema)
                    writers[b].write_table(table.slice(int(lo), int(hi - lo)))
        finally:
            bar.close()
            for writer in writers:
                if writer is not None:
                    writer.close()
        return [path for path, writer in zip(paths, writers) if writer is not None]

    def __iter__(self) -> Iterator[Sample | Rejected]:
        import pyarrow as pa

        self.stats["texts_by_type"].update({t: 0 for t in self.text_types})
        for reason in _ROW_REASONS & set(self.stats["skipped"]):
            del self.stats["skipped"][reason]
        self.stats["captions"].update(kept=0, dropped=dict(self._row_drops))
        self.stats["captions_per_patch"] = {}
        with work_folder(self.work_dir) as folder:
            for path in self._buckets(folder):
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
                table = table.sort_by([("_rank", "ascending"), ("ID", "ascending")]).combine_chunks()
                starts = _group_starts(table.column("_rank"))
                for first in range(0, len(starts) - 1, _PATCHES_PER_BATCH):
                    last = min(first + _PATCHES_PER_BATCH, len(starts) - 1)
                    offset = int(starts[first])
                    block = table.slice(offset, int(starts[last]) - offset).to_pydict()
                    for group in range(first, last):
                        lo, hi = int(starts[group]) - offset, int(starts[group + 1]) - offset
                        yield self._patch({name: values[lo:hi] for name, values in block.items()})
                del table
                path.unlink()

    def _patch(self, rows: dict[str, list[Any]]) -> Sample | Rejected:
        patch_id = rows["patch_id"][0]
        split_values = sorted(set(rows["split"]))
        n_captions = sum(1 for kind in rows["type"] if kind == "captioning")
        if patch_id in self._conflicting:  # checked before any split filter, so no patch leaks across splits
            return self._rejected(patch_id, "conflicting splits", "its rows are in more than one split", n_captions)
        by_type: dict[str, list[str]] = {kind: [] for kind in TEXT_ORDER}
        seen: set[int] = set()
        for row_id, kind, question, answer in zip(rows["ID"], rows["type"], rows["input"], rows["output"]):
            if row_id in seen:  # a duplicated row: one text, counted once
                self._skip("duplicate ID")
                if kind == "captioning":
                    n_captions -= 1
                    self._drop_captions("duplicate ID", 1)
                continue
            seen.add(row_id)
            if kind == "captioning":
                if answer is None or is_blank(answer):
                    what = "an empty" if not (answer or "").strip() else "an invisible (zero-width or control)"
                    return self._rejected(patch_id, "empty caption", f"captioning row ID {row_id} has {what} output",
                                          n_captions)
                text = answer
            else:
                text = _CONVERTERS[kind](question or "", answer or "")
                if text is None:
                    self._skip(f"unparsed {kind}")
                    continue
            by_type[kind].append(text)
        texts = [text for kind in TEXT_ORDER for text in by_type[kind]]  # the caption-keeping rule: captions first
        if not texts:
            return self._rejected(patch_id, "no captions", f"none of its {len(rows['ID'])} selected rows gave a text",
                                  n_captions)
        problem = caption_problem(patch_id, texts)
        if problem is not None:
            return self._rejected(patch_id, problem.reason, problem.detail, n_captions)
        s1_name = rows["s1_name"][0]
        try:
            image = self._load(patch_id, s1_name)
        except PatchError as exc:
            return self._rejected(patch_id, exc.reason, exc.detail, n_captions)
        except (KeyError, FileNotFoundError) as exc:
            return self._rejected(patch_id, "missing image", str(exc), n_captions)
        except Exception as exc:  # a user callable may fail in any way; report it as this patch's problem
            return self._rejected(patch_id, "unreadable image", f"{type(exc).__name__}: {exc}", n_captions)
        if isinstance(image, np.ndarray) and self.bands is None:
            raise ValueError("images returned an array but no band names are known: pass bands=[...]")
        bands = image.bands if isinstance(image, NativeBands) else self.bands
        counts = {kind: len(found) for kind, found in by_type.items() if found}
        for kind, n in counts.items():
            self.stats["texts_by_type"][kind] += n
        self.stats["captions"]["kept"] += n_captions
        per_patch = self.stats["captions_per_patch"]
        per_patch[n_captions] = per_patch.get(n_captions, 0) + 1
        meta = {name: rows[name][0] for name in _META_COLUMNS}
        meta["categories"] = sorted({c for c in rows["category"] if c})
        meta["texts_by_type"] = counts  # in TEXT_ORDER, the order of the captions list
        return Sample(
            id=patch_id,
            image=image,
            captions=texts,
            split=split_values[0],
            labels=None,
            meta=meta,
            bands=list(bands) if isinstance(image, (np.ndarray, NativeBands)) else None,
        )


_ROW_REASONS = {f"unparsed {kind}" for kind in _CONVERTERS} | {"duplicate ID"}


def _array(values: Sequence[str]):  # noqa: ANN202 - pyarrow.Array
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())


def _value_counts(column) -> tuple[list[Any], list[int]]:  # noqa: ANN001 - pyarrow.ChunkedArray
    counts = column.value_counts()
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def _group_starts(patch_ids) -> np.ndarray:  # noqa: ANN001 - pyarrow.Array, sorted
    """Row offsets where each run of equal ``patch_id`` begins, plus the total length at the end."""
    import pyarrow.compute as pc

    patch_ids = patch_ids.combine_chunks() if hasattr(patch_ids, "combine_chunks") else patch_ids
    n = len(patch_ids)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    changed = pc.not_equal(patch_ids.slice(1), patch_ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)


def _batches(path: Path, columns: list[str]) -> Iterator[Any]:
    """The file's record batches of ``columns``; a read error names the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=_SCAN_ROWS, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from None


@contextmanager
def work_folder(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A fresh work folder ``wfa-bigearthnet-txt-XXXX`` in ``parent`` (default: the system temp folder),
    removed afterwards. This process holds a ``flock`` on its ``.wfa-owner.lock`` while it works; first,
    the work folders of conversions that were killed (whose lock nobody holds any more) are removed --
    and no other folder: one without the lock file was not made here."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(parent.glob(f"{_WORK_PREFIX}*")):
        lock = stale / _OWNER_LOCK
        if not stale.is_dir() or stale.is_symlink() or not lock.is_file():
            continue
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a conversion that is running now
        finally:
            os.close(fd)
        size = sum(f.stat().st_size for f in stale.rglob("*") if f.is_file())
        shutil.rmtree(stale, ignore_errors=True)
        logger.warning("removed the work folder %s of a conversion that was killed (%.1f MB)", stale, size / 1e6)
    folder = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=parent))
    # locked under another name, then renamed: another conversion never finds the lock file unlocked
    fd = os.open(folder / f"{_OWNER_LOCK}.new", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.rename(folder / f"{_OWNER_LOCK}.new", folder / _OWNER_LOCK)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
