"""Karpathy-format caption files (UCM, Sydney, RSICD, RSITMD, ...) plus an image folder.

The caption file is ``{"images": [{"filename", "split", "sentences": [{"raw", ...}], ...}], ...}``.
Each entry becomes one ``Sample`` with all its ``raw`` sentences as captions, verbatim; its id is the
file name without extension (``"1.tif"`` -> ``"1"``). A missing ``split`` reads as ``default_split``.

Images are looked up in ``image_dir`` by the exact file name, else by the same stem with any image
extension (``.jpg .jpeg .png .tif .tiff``, case-insensitive; first found in that order), because
datasets are often re-encoded (UCM's json says ``N.tif`` while the shared copy holds ``N.jpg``).
JPEG/PNG/TIFF are read with PIL (TIFFs PIL cannot read fall back to tifffile; non-8-bit data is
scaled by its maximum to 0..255; NaN/inf pixels or an all-negative image make it unreadable) and
converted to RGB.

Bad items are yielded as ``Rejected(id, reason, detail)`` with reason one of ``"missing image"``,
``"unreadable image"``, ``"unsafe path"`` (a file name that is absolute, holds ``..``, or is a symlink
out of the image folder: never read), ``"no captions"``, ``"empty caption"`` (detail names the caption
index), ``"duplicate id"``. A malformed file (not UTF-8 JSON, no ``images`` list, an entry without
``filename``, a sentence without ``raw``) raises ``ValueError`` naming the file and entry, since
nothing after it can be trusted.

Optional ``labels``: a csv ``filename,class`` (UCM's ``labels.csv``), matched by stem;
``Sample.labels`` is then ``[class]``. A row without a class, a repeated file name, or a file of
which no row matches an entry raises ``ValueError``; entries without a row and rows without an entry
are counted in ``source["unlabelled"]`` and ``source["label_rows_unmatched"]``.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from wfa.data.readers import ReaderArg, register_reader
from wfa.data.sample import Rejected, Sample, is_blank

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def load_karpathy(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a Karpathy caption file; return the whole document.

    Raises ``ValueError`` naming the problem (not JSON, no ``images`` list, an entry without a
    ``filename`` string or ``sentences`` list, a sentence without a ``raw`` string).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"caption file {path} not found or not a file")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from exc
    except RecursionError:
        raise ValueError(f"{path} nests too deeply to be a Karpathy caption file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a Karpathy caption file: expected an object with an 'images' list")
    for index, entry in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise ValueError(f"{where} has no 'filename' string")
        where += f" ({entry['filename']!r})"
        if not isinstance(entry.get("sentences"), list):
            raise ValueError(f"{where} has no 'sentences' list")
        for number, sentence in enumerate(entry["sentences"]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise ValueError(f"{where}: sentences[{number}] has no 'raw' string")
    return data


# -- the one parser of Karpathy entries: the reader, `wfa redundancy`, zero-shot and the benchmarks use it


@dataclass(frozen=True)
class KarpathyEntry:
    """One image of a Karpathy caption file: ``filename`` as written, its ``split`` (``None`` when the entry
    has none and no default was given), its ``raw`` captions verbatim and its ``imgid``/``sentids`` (``ids``,
    only the keys the entry has)."""

    filename: str
    split: str | None
    captions: tuple[str, ...]
    ids: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The sample id: the file name without extension (``"1.tif"`` -> ``"1"``)."""
        return _item_id(self.filename)


def read_karpathy_captions(path: str | os.PathLike, splits: Sequence[str] | None = None,
                           default_split: str | None = None) -> list[KarpathyEntry]:
    """The image entries of a Karpathy caption file, in file order (structure checked by :func:`load_karpathy`).

    An entry without ``split`` gets ``default_split``; ``splits`` keeps only entries of those splits.
    Raises ``ValueError`` naming the entry for a ``split`` that is not a string.
    """
    return _entries(load_karpathy(path), path, splits, default_split)


def _entries(document: dict[str, Any], path: str | os.PathLike, splits: Sequence[str] | None,
             default_split: str | None) -> list[KarpathyEntry]:
    """:class:`KarpathyEntry` list of a document :func:`load_karpathy` has checked."""
    entries = []
    for index, entry in enumerate(document["images"]):
        split = entry.get("split", default_split)
        if split is not None and not isinstance(split, str):
            raise ValueError(f"{path}: images[{index}] ({entry['filename']!r}) has a 'split' that is not a string")
        if splits is not None and split not in splits:
            continue
        entries.append(KarpathyEntry(filename=entry["filename"], split=split,
                                     captions=tuple(sentence["raw"] for sentence in entry["sentences"]),
                                     ids={key: entry[key] for key in ("imgid", "sentids") if key in entry}))
    return entries


def read_caption_groups(path: str | os.PathLike) -> list[list[str]]:
    """The captions of every image of a Karpathy file, in file order."""
    return [list(entry.captions) for entry in read_karpathy_captions(path)]


def write_karpathy_subset(path: str | os.PathLike, limit: int, out: str | os.PathLike) -> Path:
    """Write a Karpathy caption file holding the first ``limit`` images of each split of ``path`` (in file order) to
    ``out``; returns ``out``. A small, fixed subset of a data set (smoke runs, tests)."""
    document = load_karpathy(path)
    kept, per_split = [], {}
    for entry in document["images"]:
        split = entry.get("split", "train")
        if per_split.get(split, 0) < limit:
            per_split[split] = per_split.get(split, 0) + 1
            kept.append(entry)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**document, "images": kept}), encoding="utf-8")
    return out


def read_csv(path: str | os.PathLike) -> tuple[list[dict[str, str]], list[str]]:
    """The rows (dicts by the header row's names) and the column names of a UTF-8 csv file; ``ValueError`` naming
    the file for one that is not UTF-8 or not readable as csv."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader), list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except csv.Error as exc:
        raise ValueError(f"{path} is not a readable csv file ({exc})") from None


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """``filename,class`` csv (header row) -> ``{file stem: class}``.

    Raises ``ValueError`` naming the file (and the line) for a file that is missing, not UTF-8, without
    the two columns, or with a row that has no file name or no class, or repeats a file name.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file {path} not found or not a file")
    rows, fields = read_csv(path)
    if not {"filename", "class"} <= set(fields):
        raise ValueError(f"{path} must have the columns filename,class (has {sorted(fields)})")
    labels: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name, label = (row.get("filename") or "").strip(), (row.get("class") or "").strip()
        if not name or not label:
            raise ValueError(f"{path} line {line}: a row needs both a filename and a class (got {name!r}, {label!r})")
        stem = PurePosixPath(name).with_suffix("").as_posix()
        if stem in labels:
            raise ValueError(f"{path} line {line}: {name} is labelled twice")
        labels[stem] = label
    return labels


def _to_rgb(array: np.ndarray) -> Image.Image:
    """A tifffile array (H x W, H x W x C or C x H x W) as an 8-bit RGB image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3:
        array = array[..., :3] if array.shape[-1] >= 3 else array[..., 0]
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(f"{bad} NaN or inf pixel value(s)")
        peak = array.max()
        if peak <= 0 and array.min() < 0:
            raise ValueError("all pixel values are negative: no brightness scale to 0..255")
        array = np.clip(array / peak * 255.0 if peak > 0 else array, 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def read_rgb(path: Path) -> Image.Image:
    """Read a JPEG/PNG/TIFF fully into memory as RGB; raise on any decoding problem."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("F", "I") or image.mode.startswith("I;16"):  # PIL would clip, not scale, to 8 bits
                return _to_rgb(np.asarray(image))
            return image.convert("RGB")
    except Exception as pil_error:  # PIL raises many types for corrupt or unsupported files
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
        import tifffile

        try:
            array = tifffile.imread(path)
        except Exception:
            raise pil_error from None
        return _to_rgb(array)  # its ValueError (NaN pixels, ...) says more than PIL's


def _item_id(filename: str) -> str:
    relative = PurePosixPath(filename)
    return relative.with_suffix("").as_posix() if relative.name not in ("", ".", "..") else filename


def _repeated_ids(entries: Sequence[KarpathyEntry]) -> set[int]:
    """Indices of entries whose id already appeared earlier (the first occurrence is kept)."""
    seen: set[str] = set()
    repeated: set[int] = set()
    for index, entry in enumerate(entries):
        item_id = entry.id
        if item_id in seen:
            repeated.add(index)
        seen.add(item_id)
    return repeated


@register_reader(
    "karpathy",
    ReaderArg("captions_json", "the Karpathy-format caption json", flag="--captions"),
    ReaderArg("image_dir", "the image folder", flag="--images"),
    ReaderArg("labels", "optional csv 'filename,class' for class labels"),
    help="a Karpathy caption json (UCM, RSICD, ...) and an image folder",
)
class KarpathyReader:
    """Iterable of ``Sample | Rejected`` over a Karpathy caption file (see the module docstring)."""

    def __init__(
        self,
        captions_json: str | os.PathLike,
        image_dir: str | os.PathLike,
        splits: Sequence[str] | None = None,
        labels: str | os.PathLike | None = None,
        default_split: str = "train",
    ) -> None:
        """``splits`` keeps only entries of those splits; ``labels`` is an optional ``filename,class`` csv."""
        self.captions_json = Path(captions_json)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise ValueError(f"image folder {self.image_dir} does not exist")
        document = load_karpathy(self.captions_json)
        self.default_split = default_split
        self.splits = list(splits) if splits is not None else None
        self.entries = _entries(document, self.captions_json, self.splits, default_split)
        self._duplicates = _repeated_ids(self.entries)
        self.labels = read_labels_csv(labels) if labels is not None else None
        unlabelled = unmatched = None
        if self.labels is not None:
            ids = {entry.id for entry in self.entries}
            unmatched = len(set(self.labels) - ids)  # a labels file may cover more images than a subset holds
            if self.labels and ids and unmatched == len(self.labels):
                raise ValueError(f"{labels}: none of its {len(self.labels)} rows matches an image of "
                                 f"{self.captions_json} (e.g. {', '.join(sorted(self.labels)[:3])}); check that the "
                                 "two files belong together")
            unlabelled = len(ids - set(self.labels))
        self._folders: dict[Path, dict[str, str]] = {}
        self.source = {
            "type": "karpathy",
            "dataset": document.get("dataset"),
            "captions": str(self.captions_json),
            "images": str(self.image_dir),
            "labels": str(labels) if labels is not None else None,
            "unlabelled": unlabelled,
            "label_rows_unmatched": unmatched,
            "splits": self.splits,
        }

    def __len__(self) -> int:
        return len(self.entries)

    def _stems(self, folder: Path) -> dict[str, str]:
        """``{stem: file name}`` of the image files in ``folder``, preferring IMAGE_EXTENSIONS order."""
        if folder not in self._folders:
            names = sorted(os.listdir(folder)) if folder.is_dir() else []
            rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
            found: dict[str, str] = {}
            for name in sorted(names, key=lambda n: rank.get(Path(n).suffix.lower(), len(rank))):
                suffix = Path(name).suffix.lower()
                if suffix in rank:
                    found.setdefault(Path(name).stem, name)
            self._folders[folder] = found
        return self._folders[folder]

    def resolve(self, filename: str) -> Path | None:
        """The image file for ``filename``: exact name, else same stem with an image extension.

        Raises ``ValueError`` for a name that leaves ``image_dir``: absolute, with ``..``, or a symlink that
        points outside the folder.
        """
        relative = PurePosixPath(filename)
        if relative.is_absolute() or PureWindowsPath(filename).drive or ".." in relative.parts or "\0" in filename:
            raise ValueError(f"file name {filename!r} leaves the image folder {self.image_dir}")
        path = self._find(filename)
        if path is not None and not path.resolve().is_relative_to(self.image_dir.resolve()):
            raise ValueError(f"{path} is a link to {path.resolve()}, outside the image folder {self.image_dir}")
        return path

    def _find(self, filename: str) -> Path | None:
        exact = self.image_dir / filename
        if exact.is_file():
            return exact
        relative = PurePosixPath(filename)
        folder = self.image_dir / relative.parent
        name = self._stems(folder).get(relative.stem)
        return folder / name if name is not None else None

    def __iter__(self) -> Iterator[Sample | Rejected]:
        for index in range(len(self.entries)):
            yield self.sample_at(index)

    def sample_at(self, index: int) -> Sample | Rejected:
        """The ``index``-th item of the iteration (lets a writer load items in worker processes)."""
        entry = self.entries[index]
        filename = entry.filename
        item_id = entry.id
        if index in self._duplicates:
            detail = f"{filename} has the same id as an earlier entry of {self.captions_json}"
            return Rejected(item_id, "duplicate id", detail)
        captions = list(entry.captions)
        if not captions:
            return Rejected(item_id, "no captions", f"{filename} has an empty 'sentences' list")
        for index, caption in enumerate(captions):
            if is_blank(caption):
                return Rejected(item_id, "empty caption", f"{filename}: caption {index} is empty or invisible")
        try:
            path = self.resolve(filename)
        except ValueError as exc:
            return Rejected(item_id, "unsafe path", str(exc))
        except OSError as exc:  # a name the file system refuses (longer than 255 bytes, ...): this item only
            return Rejected(item_id, "missing image", f"{filename[:80]!r}...: {exc.strerror or exc}"
                            if len(filename) > 80 else f"{filename!r}: {exc.strerror or exc}")
        if path is None:
            return Rejected(
                item_id,
                "missing image",
                f"no {filename} nor {PurePosixPath(filename).stem}.<jpg|png|tif> in {self.image_dir}",
            )
        try:
            image = read_rgb(path)
        except Exception as exc:  # report any decoder failure as this item's problem
            return Rejected(item_id, "unreadable image", f"{path}: {exc}")
        meta = {"filename": filename, "path": path.relative_to(self.image_dir).as_posix()}
        meta.update(entry.ids)
        labels = None
        if self.labels is not None and item_id in self.labels:
            labels = [self.labels[item_id]]
        return Sample(
            id=item_id,
            image=image,
            captions=captions,
            split=entry.split,
            labels=labels,
            meta=meta,
        )
