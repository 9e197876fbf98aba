"""Write a reader's samples into WebDataset shards plus an ``index.json`` (docs/shard-format.md).

Layout of ``OUT``::

    OUT/{split}-{NNNNNN}.tar   one sample per image: "<key>.jpg|png|safetensors.zst" and "<key>.json"
    OUT/index.json             counts, shard lists, caption and band statistics, source, version
    OUT/rejects.jsonl          with skip_bad only: one {"id", "reason", "detail"} line per bad item

Everything is written into a staging folder beside ``OUT`` under an exclusive lock and swapped into
place only when the whole run succeeded and wrote at least one sample (:mod:`wfa.data.publish`), so
a crash, a kill, a bad item or an empty result leaves the previous contents of ``OUT`` untouched.
The tar headers carry a fixed mtime, owner and mode, samples keep the reader's order (also with
worker processes), and JSON is written with sorted keys: the same input gives byte-identical shards.

Bad items -- a reader's :class:`Rejected`, or what the writer's own checks find (no caption, an
empty caption, an unreadable or empty image, NaN/inf values, bands or shapes that differ from the
rest of the data set, a duplicate id) -- stop the run with :class:`BadItemError`, or with
``skip_bad`` are listed in ``rejects.jsonl`` and counted in ``index.json``
(``written + rejected == read``). ``rejected_reasons`` counts the readers'/writer's short reason
strings; the per-item detail is in ``rejects.jsonl``.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import shutil
import tarfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from wfa.data.progress import progress as progress_display
from wfa.data.publish import check_out_folder, folder_lock, make_staging, publish, recover
from wfa.data.sample import MAX_ID_CHARS, BadItemError, Rejected, Sample, caption_problem
from wfa.data.shard_format import (BANDS_MEMBER, FORMAT, INDEX_NAME, WRITER_VERSION, NativeBands, band_layout,
                                   encode_bands)
from wfa.errors import ShardsError
from wfa.redundancy import bleu_uniqueness_batch, normalize_caption

# Fixed tar header fields so that the same input gives byte-identical shards.
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z
TAR_OWNER = "wfa"
TAR_MODE = 0o444
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 6
DEFAULT_MAX_SHARD_BYTES = 512 * 1024 * 1024
IMAGE_FORMATS = ("jpg", "png")
SHARD_NAME = re.compile(r"^[A-Za-z0-9_]+-\d{6}\.tar$")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_ITEMS_PER_TASK = 32  # items encoded at a time (amortises inter-process and BLEU-batch overhead)


def sample_key(item_id: str) -> str:
    """The ``__key__`` of an id: every character other than letters, digits, ``_`` and ``-``
    (dots above all, which WebDataset reads as extension separators) becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", item_id)


@dataclass
class _Encoded:
    """One validated sample, encoded into tar members in a (possibly worker) process."""

    id: str
    key: str
    split: str
    members: dict[str, bytes]
    num_captions: int
    num_distinct: int
    modality: str
    bands: list[str] | None
    shape: tuple[int, ...]
    # (per-band pixel count, mean, sum of squared deviations) over the stored pixels, multispectral only
    moments: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    layout: list[dict[str, Any]] | None = None  # multispectral: per-band dtype and stored shape
    resample: str | None = None  # multispectral: how bands off the grid are resampled on load
    blob_bytes: int | None = None  # multispectral: uncompressed size of the bands member


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and paths in ``meta`` become plain JSON values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_bands(item_id: str, arrays: dict[str, np.ndarray], grid: tuple[int, ...],
                  resample: str) -> tuple | Rejected:
    """A multispectral image as its stored bands (``shard_format.encode_bands``), with per-band moments."""
    counts, means, m2s = [], [], []
    for name, array in arrays.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            return Rejected(item_id, "invalid array", f"band {name} has dtype {array.dtype}, not numeric")
        values = np.asarray(array, dtype=np.float64).ravel()
        with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN pixels are reported just below
            mean = values.mean()
            m2 = ((values - mean) ** 2).sum()
        if not (np.isfinite(mean) and np.isfinite(m2)):  # any NaN/inf pixel makes these non-finite
            return Rejected(item_id, "nan values", f"NaN or inf in band {name}")
        counts.append(values.size)
        means.append(mean)
        m2s.append(m2)
    moments = (np.array(counts, dtype=np.float64), np.array(means), np.array(m2s))
    shape = (len(arrays), *grid)
    member, blob_bytes = encode_bands(arrays)
    return (BANDS_MEMBER, member, "multispectral", shape, moments, band_layout(arrays), resample, blob_bytes)


def _encode_image(sample: Sample, image_format: str) -> tuple | Rejected:
    """Return (extension, bytes, modality, shape, moments[, band layout, resample, blob bytes]) or a Rejected."""
    image = sample.image
    if isinstance(image, Image.Image):
        try:
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
        except Exception as error:  # PIL raises many types for broken files
            return Rejected(sample.id, "unreadable image", f"{type(error).__name__}: {error}")
        if rgb.width == 0 or rgb.height == 0:
            return Rejected(sample.id, "empty image", f"size {rgb.width}x{rgb.height}")
        buffer = io.BytesIO()
        if image_format == "jpg":
            rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        else:
            rgb.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return image_format, buffer.getvalue(), "rgb", (rgb.height, rgb.width), None
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or 0 in image.shape:
            return Rejected(sample.id, "wrong band shape",
                            f"expected a non-empty C x H x W array, got shape {image.shape}")
        if sample.bands is not None and len(sample.bands) != image.shape[0]:
            return Rejected(sample.id, "missing band",
                            f"{len(sample.bands)} band names for {image.shape[0]} channels")
        names = list(sample.bands) if sample.bands is not None else [str(c) for c in range(image.shape[0])]
        return _encode_bands(sample.id, dict(zip(names, image)), tuple(image.shape[1:]), "bilinear")
    if isinstance(image, NativeBands):
        if not image.arrays or any(np.ndim(a) != 2 or 0 in np.shape(a) for a in image.arrays.values()):
            return Rejected(sample.id, "wrong band shape", "expected one or more non-empty 2-D bands")
        if sample.bands is not None and list(sample.bands) != image.bands:
            return Rejected(sample.id, "missing band", f"band names {sample.bands} differ from the bands {image.bands}")
        return _encode_bands(sample.id, image.arrays, (image.size, image.size), image.resample)
    return Rejected(sample.id, "unreadable image", f"image is a {type(image).__name__}, not a PIL image or array")


def _checked_and_encoded(item: Sample | Rejected, image_format: str) -> tuple[Sample, tuple] | Rejected:
    """Validate one reader item and encode its image: ``(item, encoded image)`` or a Rejected."""
    if isinstance(item, Rejected):
        return item
    if not isinstance(item.id, str) or not sample_key(item.id).strip("_"):
        return Rejected(str(item.id), "invalid id", "the id is empty or has no letters or digits")
    if len(item.id) > MAX_ID_CHARS:
        return Rejected(item.id[:80] + "...", "invalid id", f"the id has {len(item.id):,} characters, at most "
                                                            f"{MAX_ID_CHARS}")
    if not item.id.isprintable():  # control characters, lone surrogates (which UTF-8 cannot hold)
        return Rejected(item.id, "invalid id", "the id holds control characters or invalid Unicode")
    if not isinstance(item.split, str) or not _SPLIT_NAME.match(item.split):
        return Rejected(item.id, "invalid split", f"split {item.split!r} is not a plain name like 'train'")
    problem = caption_problem(item.id, item.captions)
    if problem is not None:
        return problem
    encoded = _encode_image(item, image_format)
    return encoded if isinstance(encoded, Rejected) else (item, encoded)


def _members(item: Sample, encoded: tuple, bleu_weights: np.ndarray) -> _Encoded | Rejected:
    """The tar members of one valid item: its image and its ``json`` record."""
    extension, data, modality, shape, moments, *layout = encoded
    captions = list(item.captions)
    record: dict[str, Any] = {"id": item.id, "captions": captions, "weights": {"bleu": bleu_weights.tolist()},
                              "split": item.split, "labels": item.labels, "meta": item.meta}
    if modality == "multispectral":
        record["bands"] = item.bands
    try:
        text = json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as error:
        return Rejected(item.id, "invalid metadata", str(error))
    distinct = len({normalize_caption(c).lower() for c in captions})
    bands = list(item.bands) if item.bands is not None else None
    if modality == "multispectral" and bands is None:
        bands = [entry["band"] for entry in layout[0]]
    return _Encoded(item.id, sample_key(item.id), item.split, {extension: data, "json": text.encode("utf-8")},
                    len(captions), distinct, modality, bands, shape, moments, *layout)


def encode_items(items: Sequence[Sample | Rejected], image_format: str = "jpg") -> list[_Encoded | Rejected]:
    """Validate reader items and encode them into tar members, in order; bad items come back as Rejected.

    The BLEU weights of all valid items are computed in one :func:`bleu_uniqueness_batch` call (the
    per-image function pays numpy's call overhead once per image).
    """
    staged = [_checked_and_encoded(item, image_format) for item in items]
    valid = [entry for entry in staged if not isinstance(entry, Rejected)]
    weights = iter(bleu_uniqueness_batch([list(item.captions) for item, _ in valid]))
    return [entry if isinstance(entry, Rejected) else _members(*entry, next(weights)) for entry in staged]


_WORKER_READER: Any = None


def _init_worker(reader: Any, parent: int) -> None:
    global _WORKER_READER
    _WORKER_READER = reader
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(pid: int, every_s: float = 0.5) -> None:
    """End this worker once process ``pid`` (the writer) is gone: a ``kill -9`` of ``wfa shards`` would
    otherwise leave the pool's workers running (their parent is the forkserver, not the writer)."""
    while True:
        time.sleep(every_s)
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                gone = handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")  # a zombie is gone too
        except FileNotFoundError:
            gone = True
        except OSError:  # no /proc: fall back to signal 0
            try:
                os.kill(pid, 0)
                gone = False
            except ProcessLookupError:
                gone = True
        if gone:
            os._exit(1)


def _loaded(item: Sample | Rejected) -> Sample | Rejected:
    """Decode a lazily opened PIL image here, so that a broken file becomes a Rejected item rather
    than an error while the item is pickled for a worker process."""
    if isinstance(item, Sample) and isinstance(item.image, Image.Image):
        try:
            item.image.load()
        except Exception as error:  # PIL raises many types for broken files
            return Rejected(item.id, "unreadable image", f"{type(error).__name__}: {error}")
    return item


def _load_and_encode(indices: list[int], image_format: str) -> list[_Encoded | Rejected]:
    return encode_items([_WORKER_READER.sample_at(i) for i in indices], image_format)


def _is_indexed(reader: Any) -> bool:
    """Readers with ``__len__`` and ``sample_at(i)`` are loaded inside the worker processes too."""
    return callable(getattr(reader, "sample_at", None)) and hasattr(reader, "__len__")


def _chunked(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for value in iterable:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encoded_stream(reader: Any, image_format: str, workers: int) -> Iterator[_Encoded | Rejected]:
    """Encoded items in the reader's order; with workers > 0 through a process pool."""
    if workers <= 0:
        for chunk in _chunked(reader, _ITEMS_PER_TASK):
            yield from encode_items(chunk, image_format)
        return
    indexed = _is_indexed(reader)
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(reader if indexed else None, os.getpid())) as pool:
        pending: deque[Future] = deque()
        tasks = _chunked(range(len(reader)) if indexed else map(_loaded, reader), _ITEMS_PER_TASK)
        try:
            for chunk in tasks:
                pending.append(pool.submit(_load_and_encode if indexed else encode_items, chunk, image_format))
                if len(pending) >= 4 * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:  # stopped early (bad item, error): do not wait for work nobody will read
            for future in pending:
                future.cancel()


class _Moments:
    """Streaming per-band mean / variance (Chan et al. pairwise combination); ``n`` counts pixels per band."""

    def __init__(self) -> None:
        self.n: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        if self.mean is None:
            self.n, self.mean, self.m2 = n.copy(), mean.copy(), m2.copy()
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.n = total

    def stats(self, split: str) -> dict[str, Any]:
        assert self.n is not None and self.mean is not None and self.m2 is not None
        return {"mean": self.mean.tolist(), "std": np.sqrt(self.m2 / self.n).tolist(), "split": split,
                "num_pixels": [int(n) for n in self.n]}


class _SplitShards:
    """The shards of one split: opened lazily, rotated by sample count and bytes."""

    def __init__(self, folder: Path, split: str, shard_size: int, max_bytes: int) -> None:
        self.folder, self.split = folder, split
        self.shard_size, self.max_bytes = shard_size, max_bytes
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0

    @staticmethod
    def _tar_bytes(members: dict[str, bytes]) -> int:
        return sum(512 + -(-len(data) // 512) * 512 for data in members.values())

    def write(self, key: str, members: dict[str, bytes]) -> None:
        size = self._tar_bytes(members)
        if self._tar is not None and (self._count >= self.shard_size or self._bytes + size > self.max_bytes):
            self.close()
        if self._tar is None:
            name = f"{self.split}-{len(self.shards):06d}.tar"
            # PAX: ids longer than the 100 characters of a plain ustar name still fit
            self._tar = tarfile.open(self.folder / name, "w", format=tarfile.PAX_FORMAT)
            self.shards.append({"name": name, "num_samples": 0})
            self._count = self._bytes = 0
        for extension in sorted(members):  # WebDataset's TarWriter order, with fixed header fields
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(members[extension]), TAR_MTIME, TAR_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = TAR_OWNER
            self._tar.addfile(info, io.BytesIO(members[extension]))
        self._count += 1
        self._bytes += size
        self.shards[-1]["num_samples"] = self._count

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


class _Run:
    """The bookkeeping of one write: shards, consistency checks, counts and statistics."""

    def __init__(self, staging: Path, shard_size: int, max_bytes: int, skip_bad: bool) -> None:
        self.staging, self.shard_size, self.max_bytes, self.skip_bad = staging, shard_size, max_bytes, skip_bad
        self.splits: dict[str, _SplitShards] = {}
        self.read = self.written = 0
        self.reasons: Counter[str] = Counter()
        self.keys: set[str] = set()
        self.modality: str | None = None
        self.bands: list[str] | None = None
        self.array_shape: tuple[int, ...] | None = None
        self.layout: list[dict[str, Any]] | None = None
        self.resample: str | None = None
        self.blob_bytes: int | None = None
        self.band_shapes: list[set[tuple[int, ...]]] = []
        self.sizes: set[tuple[int, ...]] = set()
        self.k: list[int] = []
        self.distinct: list[int] = []
        self.train_moments, self.all_moments = _Moments(), _Moments()
        self._rejects: Any = None

    def _consistency(self, item: _Encoded) -> Rejected | None:
        if item.key in self.keys:
            return Rejected(item.id, "duplicate id", f"another item has the key {item.key!r}")
        if self.modality is None:
            self.modality, self.bands = item.modality, item.bands
            self.array_shape = item.shape if item.modality == "multispectral" else None
            self.layout, self.resample = item.layout, item.resample
            self.band_shapes = [set() for _ in item.layout or ()]
            return None
        if item.modality != self.modality:
            return Rejected(item.id, "wrong image type", f"a {item.modality} image in a {self.modality} data set")
        if item.modality == "multispectral":
            if item.bands != self.bands:
                return Rejected(item.id, "missing band", f"bands {item.bands} differ from the data set's {self.bands}")
            if (item.shape, item.resample) != (self.array_shape, self.resample):
                return Rejected(item.id, "wrong band shape", f"a {item.shape} grid ({item.resample}) differs from the "
                                                             f"data set's {self.array_shape} ({self.resample})")
            dtypes = [entry["dtype"] for entry in item.layout]
            if dtypes != [entry["dtype"] for entry in self.layout]:
                return Rejected(item.id, "wrong band type", f"band dtypes {dtypes} differ from the data set's "
                                                            f"{[entry['dtype'] for entry in self.layout]}")
        return None

    def _add_layout(self, item: _Encoded) -> None:
        """Record a written multispectral sample's band shapes and member size: a band may be stored at
        different shapes across the data set (B01 at its native 20 px, or already on the 120 px grid), so the
        first sample does not decide the layout; the index lists every shape and the largest member."""
        for entry, shapes in zip(item.layout, self.band_shapes):
            shapes.add(tuple(entry["shape"]))
        self.blob_bytes = max(self.blob_bytes or 0, item.blob_bytes or 0)

    def add(self, result: _Encoded | Rejected) -> None:
        self.read += 1
        if isinstance(result, _Encoded):
            problem = self._consistency(result)
            if problem is not None:
                result = problem
        if isinstance(result, Rejected):
            self._reject(result)
            return
        self.splits.setdefault(result.split, _SplitShards(self.staging, result.split, self.shard_size, self.max_bytes)
                               ).write(result.key, result.members)
        self.keys.add(result.key)
        self.written += 1
        self.k.append(result.num_captions)
        self.distinct.append(result.num_distinct)
        self.sizes.add(result.shape[-2:])
        if result.layout is not None:
            self._add_layout(result)
        if result.moments is not None:
            self.all_moments.add(*result.moments)
            if result.split == "train":
                self.train_moments.add(*result.moments)

    def _reject(self, item: Rejected) -> None:
        reason = f"{item.reason} ({item.detail})" if item.detail else item.reason
        if not self.skip_bad:
            raise BadItemError(item.id, reason)
        if self._rejects is None:
            self._rejects = open(self.staging / "rejects.jsonl", "w", encoding="utf-8", errors="backslashreplace")
        self._rejects.write(json.dumps({"id": item.id, "reason": item.reason, "detail": item.detail},
                                       ensure_ascii=False) + "\n")
        self.reasons[item.reason] += 1

    def close(self) -> None:
        for shards in self.splits.values():
            shards.close()
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None

    def index(self, source: Any, image_format: str) -> dict[str, Any]:
        k = np.array(self.k or [0])
        band_stats = None
        if self.modality == "multispectral":
            has_train = self.train_moments.n is not None
            moments, split = (self.train_moments, "train") if has_train else (self.all_moments, "all")
            band_stats = moments.stats(split)
        return {
            "format": FORMAT,
            "writer_version": WRITER_VERSION,
            "source": source,
            "num_samples": self.written,
            "read": self.read,
            "written": self.written,
            "rejected": self.read - self.written,
            "rejected_reasons": dict(sorted(self.reasons.items())),
            "splits": {split: {"num_samples": sum(s["num_samples"] for s in shards.shards), "shards": shards.shards}
                       for split, shards in sorted(self.splits.items())},
            "captions": {"k_min": int(k.min()), "k_max": int(k.max()), "k_mean": float(k.mean()),
                         "num_captions": int(sum(self.k)),
                         "distinct_mean": float(np.mean(self.distinct)) if self.distinct else 0.0,
                         "images_with_repeats": int(sum(d < n for d, n in zip(self.distinct, self.k)))},
            "modality": self.modality or "rgb",
            "bands": self.bands if self.modality == "multispectral" else None,
            "band_stats": band_stats,
            "band_layout": [{**entry, "shapes": sorted(list(shape) for shape in shapes)}
                            for entry, shapes in zip(self.layout, self.band_shapes)]
                           if self.modality == "multispectral" else None,
            "resample": self.resample if self.modality == "multispectral" else None,
            "bands_bytes": self.blob_bytes if self.modality == "multispectral" else None,
            "image_size": list(next(iter(self.sizes))) if len(self.sizes) == 1 else None,
            "image_format": BANDS_MEMBER if self.modality == "multispectral" else image_format,
            "shard_size": self.shard_size,
            "max_shard_bytes": self.max_bytes,
        }


def _is_ours(path: Path) -> bool:
    return path.name in (INDEX_NAME, "rejects.jsonl") or bool(SHARD_NAME.match(path.name)) \
        or path.name.startswith(".wfa-shards-")


def write_shards(reader: Iterable[Sample | Rejected], out_dir: str | Path, shard_size: int = 1000,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, skip_bad: bool = False, workers: int = 0,
                 image_format: str = "jpg", progress: bool = True) -> dict[str, Any]:
    """Write every item of ``reader`` into ``{split}-{NNNNNN}.tar`` shards in ``out_dir``.

    ``shard_size``/``max_shard_bytes`` bound each shard by samples and bytes. ``workers`` > 0
    validates and encodes (and, for readers with ``__len__`` and ``sample_at(i)``, also loads) in that
    many processes; the output is the same as with ``workers=0``. ``image_format``: ``"jpg"``
    (quality 95) or ``"png"`` for RGB images; multispectral images (arrays or ``NativeBands``) are
    always a zstd-compressed ``safetensors.zst`` member of the bands as given (``wfa.data.shard_format``). Raises
    :class:`BadItemError` on the first bad item unless ``skip_bad``. Returns the index written to
    ``out_dir/index.json``. Worker processes are started with ``forkserver`` (``spawn`` where that
    is missing), so a script calling this with ``workers > 0`` needs the usual
    ``if __name__ == "__main__":`` guard. Raises :class:`~wfa.errors.ShardsError` when no sample was
    written (``out_dir`` keeps its previous data set) or ``out_dir`` holds other files, and
    :class:`~wfa.errors.BusyError` when another run writes into ``out_dir``.
    """
    if shard_size < 1 or max_shard_bytes < 1:
        raise ValueError("shard_size and max_shard_bytes must be positive")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    out = Path(out_dir)
    if out.is_symlink() and not out.exists():
        raise ShardsError(f"--out {out} is a symlink to {os.readlink(out)}, which does not exist; create the target "
                          "folder or give another --out").with_exit_code(2)
    with folder_lock(out):
        recover(out)
        check_out_folder(out, _is_ours)
        staging = make_staging(out)
        try:
            index = _write(reader, staging, shard_size, max_shard_bytes, skip_bad, workers, image_format, progress)
            if index["written"] == 0:
                raise ShardsError(f"no sample was written to {out} (read {index['read']}; {_nothing_written(index)}); "
                                  "the previous contents of the folder are kept")
            publish(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return index


def _nothing_written(index: dict[str, Any]) -> str:
    """Why a run wrote nothing: the rejects by reason, else what the reader left out (its ``source`` counts,
    e.g. rows of unknown splits), else an empty source."""
    reasons = [f"{reason}: {n}" for reason, n in index["rejected_reasons"].items()]
    rows = (index.get("source") or {}).get("rows") or {}
    left_out = {reason: n for reason, n in (rows.get("skipped") or {}).items() if n}
    if left_out:
        reasons.append(f"the reader left out {sum(left_out.values()):,} of {rows.get('rows_read', '?'):,} rows ("
                       + ", ".join(f"{reason}: {n:,}" for reason, n in left_out.items()) + ")")
    return ", ".join(reasons) or "the source is empty"


def _write(reader: Iterable[Sample | Rejected], staging: Path, shard_size: int, max_shard_bytes: int,
           skip_bad: bool, workers: int, image_format: str, progress: bool) -> dict[str, Any]:
    """Write every item into ``staging`` (shards, ``rejects.jsonl``, ``index.json``); return the index."""
    run = _Run(staging, shard_size, max_shard_bytes, skip_bad)
    total = len(reader) if hasattr(reader, "__len__") else None
    try:
        with progress_display(total, desc="writing shards", unit="img", enabled=progress) as bar, \
                closing(_encoded_stream(reader, image_format, workers)) as stream:
            for result in stream:
                run.add(result)
                bar.update()
                if run.read % 100 == 0:
                    bar.set_postfix(written=run.written, rejected=run.read - run.written, refresh=False)
        run.close()
        index = run.index(getattr(reader, "source", {"type": type(reader).__name__}), image_format)
        (staging / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    finally:
        run.close()
    return index
