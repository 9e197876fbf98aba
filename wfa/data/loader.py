"""Streaming multi-caption loader over wfa WebDataset shards (``{split}-NNNNNN.tar`` + ``index.json``).

The pipeline follows open_clip's proven order (``open_clip_train/data.py::get_wds_dataset``):

    shard list of the split (or ``wds.ResampledShards`` when ``resampled``)
      -> shuffle shards (deterministic by seed + epoch, identical on every rank)
      -> split by node (explicit rank / world_size) -> split by worker
      -> tar to samples (errors counted and logged, never fatal)
      -> parse json, cap captions, BLEU weights -> [pairs: one sample per caption; distinct-pairs: one
         sample per distinct caption]
      -> shuffle samples (buffer of ``shuffle`` images, or ``shuffle x max_captions`` pairs; seeded by seed,
         epoch, rank, worker)
      -> decode + transform -> batch (our collate: tokens, masks, weights)
      -> ``wds.WebLoader`` with ``with_epoch(steps)``

Epoch arithmetic (training): ``steps = epoch_samples // (batch_size * world_size)`` where
``epoch_samples`` is the split's number of images (``view="images"``), of kept captions
(``view="pairs"``, from ``index.json``) or of distinct kept captions (``view="distinct-pairs"``, counted in
the shards). Every rank takes exactly ``steps`` full batches: each worker
streams its shard subset over and over and the loader stops after ``steps`` batches, so the tail that
does not fill a global batch is dropped (a different tail each epoch, because the order is reshuffled).
When shards are uneven across ranks/workers, a worker that runs out early starts its next pass, so an
epoch may repeat a few samples while a few others wait for the next epoch (as in open_clip).
Evaluation (``build_eval_loader``) is a single ordered pass: no resampling, no shuffling,
partial last batches, every sample exactly once; with ``num_workers > 1`` the batches of the workers
interleave, so align results with ``batch["image_ids"]``.

Caption cap: a sample keeps its first ``max_captions`` captions in the order its json holds them, which the
reader that wrote the shards decides (BigEarthNet.txt puts the captions first: ``wfa.data.bigearthnet_txt``).
No de-duplication: the BLEU weights already split a repeated caption's weight among its copies. The kept
weights are renormalised to sum to 1; if the shard has no usable weights they are recomputed with
``wfa.redundancy.bleu_uniqueness`` on all captions before capping.

Liveness (training): a training loader streams its shards over and over, so a split in which no sample
decodes would otherwise be skipped forever. A training epoch may lose at most ``MAX_MISSING_FRACTION`` (1 %)
of its samples to skips (bad json, missing member, undecodable image): as soon as it has lost more, every
worker ends its stream and the loader raises :class:`~wfa.errors.DataError` naming the shards and reasons --
at the latest after ``1 % x epoch samples + 1`` failed samples, whatever the data. :func:`probe_split`
decodes one sample of every shard of a split up front (``wfa.preflight`` runs it for every split a run
reads).

Captions beyond ``max_captions`` are counted (``stats["captions_capped"]``), not dropped silently.

Do not pass these loaders through ``accelerator.prepare``: sharding across ranks happens here.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.utils import PipelineStage, make_seed

from wfa.data.sample import is_blank
from wfa.data.shard_format import (ARRAY_MEMBER, BANDS_MEMBER, FORMAT, INDEX_NAME, check_band_index, check_version,
                                   decode_bands)
from wfa.data.transforms import DEFAULT_CROP_SCALE, build_transform
from wfa.errors import DataError
from wfa.redundancy import normalize_caption

logger = logging.getLogger(__name__)

VIEWS = ("images", "pairs", "distinct-pairs")
IMAGE_MEMBERS = ("jpg", "jpeg", "png", BANDS_MEMBER, ARRAY_MEMBER)
SKIP_REASONS = ("tar_error", "missing_member", "bad_json", "no_captions", "decode_error")
# Each skip is logged up to this many times per reason; after that it is only counted (see ``loader.stats``).
MAX_LOGGED_SKIPS = 10
MAX_MISSING_FRACTION = 0.01  # more than 1 % of a split's (or an epoch's) samples unreadable: stop, not train on less

Tokenizer = Callable[[list[str]], torch.Tensor]
Batch = dict[str, Any]


# ----------------------------------------------------------------------------------------------- index


def read_index(shards_dir: str | Path) -> dict:
    """Read and check ``<shards_dir>/index.json`` (written by ``wfa shards``)."""
    path = Path(shards_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write shards first with `wfa shards ... --out {shards_dir}`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise ValueError(f"{path} is not valid JSON ({exn}); rewrite the shards with `wfa shards`") from exn
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {index.get('format')!r}, expected {FORMAT!r} (not a wfa shard dir?)")
    if not isinstance(index.get("splits"), dict):
        raise ValueError(f"{path}: no 'splits' mapping; rewrite the shards with `wfa shards`")
    check_version(index, str(path))
    if index.get("image_format") == BANDS_MEMBER and not all(index.get(k) for k in
                                                            ("band_layout", "image_size", "bands_bytes")):
        raise ValueError(f"{path}: {BANDS_MEMBER} shards without band_layout/image_size/bands_bytes; "
                         "rewrite the shards with `wfa shards`")
    if index.get("image_format") == BANDS_MEMBER:
        check_band_index(index, str(path))
    return index


def split_shards(index: dict, shards_dir: str | Path, split: str) -> list[tuple[str, int]]:
    """Return ``[(path, num_samples), ...]`` of the split's shards in index order; checks they exist."""
    splits = index["splits"]
    if split not in splits:
        raise ValueError(f"split {split!r} not in {Path(shards_dir) / INDEX_NAME}; available: {sorted(splits)}")
    listed = splits[split].get("shards") if isinstance(splits[split], dict) else None
    if not isinstance(listed, list):
        raise ValueError(f"{Path(shards_dir) / INDEX_NAME}: split {split!r} has no list of shards; rewrite the shards "
                         "with `wfa shards`")
    shards = []
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or Path(entry["name"]).name != entry["name"] or entry["name"] in ("", ".", ".."):
            raise ValueError(f"{Path(shards_dir) / INDEX_NAME}: shard entry {str(entry)[:100]} is not a file name in "
                             "the shard folder; rewrite the shards with `wfa shards`")
        count = entry.get("num_samples")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{Path(shards_dir) / INDEX_NAME}: shard {entry['name']} has num_samples "
                             f"{str(count)[:40]!r}, not a count of samples; rewrite the shards with `wfa shards`")
        path = Path(shards_dir) / entry["name"]
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in {INDEX_NAME} is missing; rewrite the shards")
        shards.append((str(path), count))
    if not shards:
        raise ValueError(f"split {split!r} of {shards_dir} has no shards")
    return shards


def count_captions(shard_path: str | Path, max_captions: int, distinct: bool = False) -> int:
    """Number of captions kept (at most ``max_captions`` per sample; ``distinct``: of those, the distinct ones)
    in one shard, read from its json members.

    Unreadable members or a damaged shard are left out of the count (the loader skips and counts them too).
    """
    total = 0
    try:
        with tarfile.open(shard_path) as tar:
            for member in tar:
                if member.isreg() and member.name.endswith(".json"):
                    try:
                        captions = json.loads(tar.extractfile(member).read()).get("captions") or []
                    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
                        continue
                    kept = captions[:max_captions]
                    total += len(distinct_captions(kept)) if distinct else len(kept)
    except (tarfile.TarError, OSError) as exn:
        logger.warning("wfa loader: counting captions of %s stopped at %d: %s", shard_path, total, exn)
    return total


# ---------------------------------------------------------------------------------------------- config


@dataclass
class LoaderConfig:
    """What to load and how.

    shards: directory holding ``index.json`` and the tar shards. split: e.g. "train", "val", "test".
    shuffle: sample shuffle buffer size in images (training; 0 or 1 disables; the pairs view holds
    ``shuffle x max_captions`` pairs). seed: shard/sample order seed.
    view: "images" (one sample per image, all its captions), "pairs" (one sample per caption) or
    "distinct-pairs" (one sample per distinct caption: copies equal after white-space and case folding,
    :func:`distinct_captions`, count once).
    augment: training augmentation (see ``wfa.data.transforms``); without it the eval transform is used.
    epoch_samples: override the epoch length in samples (default: from ``index.json``).
    """

    shards: str
    split: str
    batch_size: int
    num_workers: int = 0
    max_captions: int = 5
    image_size: int = 64
    resampled: bool = False
    shuffle: int = 1000
    seed: int = 0
    view: str = "images"
    augment: bool = False
    shuffle_shards: bool = True
    epoch_samples: int | None = None
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"LoaderConfig.view must be one of {VIEWS}, got {self.view!r}")
        for name in ("batch_size", "max_captions", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoaderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.shuffle < 0:
            raise ValueError("LoaderConfig.num_workers and LoaderConfig.shuffle must be >= 0")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"LoaderConfig.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")


# ----------------------------------------------------------------------------------------------- stats


class LoaderStats:
    """Counters shared with the DataLoader worker processes: samples parsed, skipped (by reason), and
    BLEU weights recomputed. Counts cover everything read, including repeated passes within an epoch and
    samples prefetched by workers. ``tar_error`` counts read errors of a shard (a truncated shard may
    report two), not the samples lost with it."""

    FIELDS = ("samples", "weights_recomputed", "captions_read", "captions_capped", *SKIP_REASONS)
    SHARD_FIELDS = ("samples", *SKIP_REASONS)  # also counted per shard

    def __init__(self, shards: Sequence[str] = ()) -> None:
        self._values = {name: multiprocessing.Value("q", 0) for name in self.FIELDS}
        self.shards = [str(url) for url in shards]
        self._shard_index = {url: i for i, url in enumerate(self.shards)}
        self._per_shard = multiprocessing.Array("q", max(1, len(self.shards) * len(self.SHARD_FIELDS)))
        # liveness (training): sample skips allowed per epoch (None: no limit) and the count when the epoch began
        self.budget: int | None = None
        self._epoch_start = multiprocessing.Value("q", 0)

    def sample_skips(self) -> int:
        """Samples skipped so far (bad json, missing member, no captions, undecodable image; not tar errors,
        which count read errors of a shard rather than samples)."""
        return sum(self._values[reason].value for reason in SKIP_REASONS if reason != "tar_error")

    def start_epoch(self) -> None:
        """Begin an epoch's liveness count (called by the loader before its workers start the epoch)."""
        self._epoch_start.value = self.sample_skips()

    def epoch_skips(self) -> int:
        """Sample skips since the current epoch began."""
        return self.sample_skips() - self._epoch_start.value

    def over_budget(self) -> bool:
        """True when the current epoch skipped more samples than ``budget`` allows (never without a budget)."""
        return self.budget is not None and self.epoch_skips() > self.budget

    def add(self, name: str, n: int = 1, url: str | None = None) -> int:
        """Increment counter ``name`` by ``n`` (and that of shard ``url`` when known); return the new total."""
        shard = self._shard_index.get(url) if url is not None else None
        if shard is not None and name in self.SHARD_FIELDS:
            with self._per_shard.get_lock():
                self._per_shard[shard * len(self.SHARD_FIELDS) + self.SHARD_FIELDS.index(name)] += n
        value = self._values[name]
        with value.get_lock():
            value.value += n
            return value.value

    def per_shard(self) -> dict[str, dict[str, int]]:
        """``{shard file name: {"samples": read, <skip reason>: n, ...}}`` (non-zero counts only)."""
        width = len(self.SHARD_FIELDS)
        with self._per_shard.get_lock():
            values = list(self._per_shard)
        out = {}
        for i, url in enumerate(self.shards):
            counts = {f: values[i * width + j] for j, f in enumerate(self.SHARD_FIELDS) if values[i * width + j]}
            out[Path(url).name] = counts
        return out

    def skip(self, reason: str, message: object, url: str | None = None) -> None:
        """Count one skip for ``reason`` and log it (the first ``MAX_LOGGED_SKIPS`` per reason)."""
        count = self.add(reason, url=url)
        if count <= MAX_LOGGED_SKIPS:
            logger.warning("wfa loader: skipped (%s #%d): %s", reason, count, message)
        if count == MAX_LOGGED_SKIPS:
            logger.warning("wfa loader: further '%s' skips are counted, not logged (see loader.stats)", reason)

    def as_dict(self) -> dict[str, int]:
        """All counters plus ``skipped`` (the sum over the skip reasons)."""
        counts = {name: value.value for name, value in self._values.items()}
        counts["skipped"] = sum(counts[reason] for reason in SKIP_REASONS)
        return counts

    @property
    def skipped(self) -> int:
        """Samples (or, for ``tar_error``, shard read errors) skipped so far."""
        return self.as_dict()["skipped"]


class _SampleError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _CountingHandler:
    """webdataset exception handler: count, log a warning, continue."""

    def __init__(self, stats: LoaderStats, reason: str) -> None:
        self.stats = stats
        self.reason = reason

    def __call__(self, exn: BaseException) -> bool:
        url = exn.args[-1] if exn.args and isinstance(exn.args[-1], str) else None  # webdataset appends the url
        self.stats.skip(self.reason, exn, url=url)
        return True


# ------------------------------------------------------------------------------------- pipeline stages


class _Epoch:
    """The epoch the pipeline stages read when an iteration starts; shared with persistent workers."""

    def __init__(self, value: int) -> None:
        self._value = multiprocessing.Value("q", value)

    @property
    def value(self) -> int:
        """The current epoch."""
        return self._value.value

    @value.setter
    def value(self, epoch: int) -> None:
        self._value.value = epoch


class _ShardShuffle(PipelineStage):
    """Permute the whole shard list with a seed of (seed, epoch): the same order on every rank."""

    def __init__(self, seed: int, epoch: _Epoch) -> None:
        self.seed = seed
        self.epoch = epoch

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        shards = list(src)
        np.random.default_rng([self.seed, self.epoch.value]).shuffle(shards)
        yield from shards


class _SplitByNode(PipelineStage):
    """Keep every ``world_size``-th shard starting at ``rank`` (explicit, unlike ``wds.split_by_node``)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        return islice(src, self.rank, None, self.world_size)


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


class _WorkerSeed:
    """Seed source for ``wds.ResampledShards``: distinct per (rank, worker), changes with the epoch."""

    def __init__(self, rank: int, epoch: _Epoch) -> None:
        self.rank = rank
        self.epoch = epoch

    def __call__(self) -> int:
        return make_seed(self.rank, _worker_id(), self.epoch.value)


class _SampleShuffle(PipelineStage):
    """Buffer shuffle seeded by (seed, epoch, rank, worker)."""

    def __init__(self, bufsize: int, seed: int, epoch: _Epoch, rank: int) -> None:
        self.bufsize = bufsize
        self.seed = seed
        self.epoch = epoch
        self.rank = rank

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        seed = make_seed(self.seed, self.epoch.value, self.rank, _worker_id())
        return wds.shuffle(self.bufsize, self.bufsize, seed=seed)(src)


def _normalised_weights(captions: list[str], weights: Any, max_captions: int, stats: LoaderStats) -> np.ndarray:
    """The kept captions' BLEU weights, renormalised to sum to 1 (recomputed when absent or unusable)."""
    w = None
    if isinstance(weights, list) and len(weights) == len(captions):
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            w = None
    if w is None:
        from wfa.redundancy import bleu_uniqueness  # only needed for shards written without weights

        w = np.asarray(bleu_uniqueness(captions), dtype=np.float64)
        stats.add("weights_recomputed")
    w = w[:max_captions]
    total = w.sum()
    # All kept captions may carry weight 0 (all the weight was on dropped ones): fall back to uniform.
    return w / total if total > 0 else np.full(len(w), 1.0 / len(w))


class _Parse(PipelineStage):
    """Raw tar sample -> record (image bytes, kept captions, weights, id, labels); bad samples counted."""

    def __init__(self, max_captions: int, stats: LoaderStats) -> None:
        self.max_captions = max_captions
        self.stats = stats

    def parse(self, raw: dict) -> dict:
        """Parse one raw sample; raise ``_SampleError`` naming the sample and problem."""
        where = f"sample {raw.get('__key__')!r} in {raw.get('__url__')}"
        image_ext = next((ext for ext in IMAGE_MEMBERS if ext in raw), None)
        if image_ext is None or "json" not in raw:
            raise _SampleError("missing_member", f"{where}: has {sorted(k for k in raw if not k.startswith('__'))}, "
                               f"needs json and one of {IMAGE_MEMBERS}")
        try:
            meta = json.loads(raw["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exn:
            raise _SampleError("bad_json", f"{where}: json member is not valid JSON ({exn})") from exn
        if not isinstance(meta, dict):
            raise _SampleError("bad_json", f"{where}: json member is not an object")
        captions = meta.get("captions")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and not is_blank(c)
                                                                     for c in captions):
            raise _SampleError("no_captions", f"{where}: no captions, or an empty/invisible/non-text caption")
        weights = _normalised_weights(captions, (meta.get("weights") or {}).get("bleu"), self.max_captions, self.stats)
        self.stats.add("samples", url=raw.get("__url__"))
        self.stats.add("captions_read", len(captions))
        if len(captions) > self.max_captions:
            self.stats.add("captions_capped", len(captions) - self.max_captions)
        return {
            "url": raw.get("__url__"),
            "id": str(meta.get("id", raw["__key__"])),
            "where": where,
            "image": raw[image_ext],
            "image_ext": image_ext,
            "captions": captions[: self.max_captions],
            "weights": weights,
            "labels": meta.get("labels"),
        }

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        for raw in src:
            try:
                yield self.parse(raw)
            except _SampleError as exn:
                self.stats.skip(exn.reason, exn, url=raw.get("__url__"))
                if self.stats.over_budget():
                    return  # liveness: the loader raises DataError once this worker's stream ends


def copy_text(caption: str) -> str:
    """What two captions share when they are copies: the text with white space collapsed, lower-cased (the
    copies of the BLEU-uniqueness definition)."""
    return normalize_caption(caption).lower()


def caption_key(caption: str) -> int:
    """A 63-bit integer naming :func:`copy_text` of ``caption``: copies, also of different images, share it (two
    different texts collide with probability 2^-63)."""
    digest = hashlib.blake2b(copy_text(caption).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def distinct_captions(captions: Sequence[str]) -> list[str]:
    """The captions without copies (:func:`copy_text`); the first copy stands for all, order kept."""
    seen: dict[str, str] = {}
    for caption in captions:
        seen.setdefault(copy_text(caption), caption)
    return list(seen.values())


def _expand_pairs(src: Iterable[dict], distinct: bool = False) -> Iterator[dict]:
    """One record per caption, or per distinct caption (the image bytes are shared, decoded once per pair)."""
    for record in src:
        for caption in distinct_captions(record["captions"]) if distinct else record["captions"]:
            yield {**record, "captions": [caption], "weights": np.ones(1)}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread (restored after).

    Per-image ops and the batch copy are too small to gain from threads. DataLoader workers already
    run one thread; in the main process (num_workers=0) the training loop's threads contend with each
    other and with other processes (measured: stacking 32 x 3 x 224 x 224 takes 2.8 ms on one thread,
    21-35 ms on two, on 2 loaded cores).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class _BandGrid:
    """How the index says band members become ``C x H x W`` (``shard_format.decode_bands``)."""

    layout: tuple
    grid: tuple[int, int]
    resample: str
    blob_bytes: int


def _band_grid(index: dict) -> _BandGrid | None:
    if index.get("image_format") != BANDS_MEMBER:
        return None
    return _BandGrid(tuple(index["band_layout"]), tuple(index["image_size"]), index.get("resample") or "bilinear",
                     int(index["bands_bytes"]))


def _decode_image(data: bytes, ext: str, min_size: int, bands: _BandGrid | None = None) -> torch.Tensor | np.ndarray:
    """safetensors.zst (native bands, resampled to the index's grid) or npy (writer version 1) -> float32
    C x H x W array; jpg/png -> uint8 RGB tensor ``[3, H, W]``.

    JPEGs are decoded by libjpeg at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides
    >= ``min_size`` (PIL's draft mode: a DCT-domain downscale, much cheaper than decoding in full).
    """
    if ext == BANDS_MEMBER:
        if bands is None:
            raise ValueError(f"a {BANDS_MEMBER} member in shards whose index has no band_layout")
        return decode_bands(data, bands.layout, bands.grid, bands.resample, bands.blob_bytes)
    if ext == ARRAY_MEMBER:
        return np.load(io.BytesIO(data), allow_pickle=False)
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (min_size, min_size))
        pixels = np.array(image.convert("RGB"))  # a writable copy for torch
    return torch.from_numpy(pixels).permute(2, 0, 1)


class _AugmentSeeds:
    """Seeds of the random augmentation: the n-th sample a worker decodes in an epoch is transformed under
    ``make_seed(seed, epoch, rank, worker, n)``, so the crops and flips are a function of the data position
    alone (not of a process's RNG history): a resumed run, which decodes the batches it skips again,
    transforms every sample as the uninterrupted run did, with or without worker processes."""

    def __init__(self, seed: int, epoch: _Epoch, rank: int) -> None:
        self.seed = seed
        self.epoch = epoch
        self.rank = rank

    def stream(self) -> Iterator[int]:
        """The seeds of one epoch's samples, in order, for the calling worker."""
        base = (self.seed, self.epoch.value, self.rank, _worker_id())
        n = 0
        while True:
            yield make_seed(*base, n)
            n += 1


class _Decode(PipelineStage):
    """Decode image bytes and apply the transform; undecodable samples are counted and skipped.

    With ``seeds`` (training augmentation) every transform runs under its own seed, leaving the process's
    RNG as it was."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], stats: LoaderStats, min_size: int,
                 bands: _BandGrid | None = None, seeds: _AugmentSeeds | None = None) -> None:
        self.transform = transform
        self.stats = stats
        self.min_size = min_size
        self.bands = bands
        self.seeds = seeds

    def decode(self, record: dict, seed: int | None = None) -> Any:
        """The transformed image of one parsed record (under ``seed`` when given); raises on any failure."""
        with one_thread(), torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return self.transform(_decode_image(record["image"], record["image_ext"], self.min_size, self.bands))

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        seeds = self.seeds.stream() if self.seeds is not None else None
        for record in src:
            try:
                image = self.decode(record, next(seeds) if seeds is not None else None)
            except Exception as exn:  # any decoder/transform failure is a bad sample, not a crash
                self.stats.skip("decode_error", f"{record['where']}: {record['image_ext']} member: {exn}",
                                url=record.get("url"))
                if self.stats.over_budget():
                    return  # liveness: the loader raises DataError once this worker's stream ends
                continue
            yield {**record, "image": image}


class Collate:
    """Records -> batch dict; captions tokenised in one call and padded to the batch's largest K.

    Token rows are cached per caption text (up to ``cache_size`` texts per worker; the workers persist
    across epochs), since open_clip's tokenizer costs about as much per image as decoding it.
    """

    def __init__(self, tokenizer: Tokenizer, cache_size: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: dict[str, torch.Tensor] = {}

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """``[N, L]`` long tokens of ``captions``, tokenising only texts not seen before."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        fresh = {}
        if missing:
            fresh = dict(zip(missing, torch.as_tensor(self.tokenizer(missing), dtype=torch.long)))
            room = self.cache_size - len(self._cache)
            self._cache.update(dict(islice(fresh.items(), max(room, 0))))
        return torch.stack([self._cache[c] if c in self._cache else fresh[c] for c in captions])

    def __call__(self, records: Sequence[dict]) -> Batch:
        """Build ``images [B,C,H,W]``, ``tokens [B,K,L]``, ``caption_mask [B,K]``, ``weights [B,K]``,
        ``caption_keys [B,K]`` (:func:`caption_key`; -1 for padding) + lists."""
        with one_thread():
            return self._collate(records)

    def _collate(self, records: Sequence[dict]) -> Batch:
        counts = [len(r["captions"]) for r in records]
        k = max(counts)
        flat = self.tokenize([c for r in records for c in r["captions"]])
        tokens = torch.zeros(len(records), k, flat.shape[-1], dtype=torch.long)
        mask = torch.zeros(len(records), k, dtype=torch.bool)
        weights = torch.zeros(len(records), k, dtype=torch.float32)
        keys = torch.full((len(records), k), -1, dtype=torch.long)
        start = 0
        for b, (record, n) in enumerate(zip(records, counts)):
            tokens[b, :n] = flat[start : start + n]
            mask[b, :n] = True
            weights[b, :n] = torch.from_numpy(record["weights"]).float()
            keys[b, :n] = torch.tensor([caption_key(c) for c in record["captions"]], dtype=torch.long)
            start += n
        return {
            # default_collate stacks straight into shared memory inside a worker (no extra copy on transfer)
            "images": torch.utils.data.default_collate([r["image"] for r in records]),
            "tokens": tokens,
            "caption_mask": mask,
            "weights": weights,
            "caption_keys": keys,
            "image_ids": [r["id"] for r in records],
            "captions": [list(r["captions"]) for r in records],
            "labels": [r["labels"] for r in records],
        }


# ----------------------------------------------------------------------------------------------- probe


def _first_sample(path: str | Path) -> dict | None:
    """The members of the first sample in a shard holding a json and an image member, as webdataset groups
    them (``{"__key__", "__url__", ext: bytes}``); None when there is none. Reads only up to that sample."""
    current: dict[str, Any] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, _, ext = member.name.partition(".")
            if current and key != current["__key__"]:
                if "json" in current and any(e in current for e in IMAGE_MEMBERS):
                    return current
                current = {}
            current.setdefault("__key__", key)
            current["__url__"] = str(path)
            current[ext.lower()] = tar.extractfile(member).read()
    return current if "json" in current and any(e in current for e in IMAGE_MEMBERS) else None


def probe_split(shards_dir: str | Path, split: str, image_size: int, max_captions: int = 5,
                index: dict | None = None) -> list[dict[str, Any]]:
    """Decode the first sample of every shard of ``split`` exactly as the loader would (parse, decode, the
    eval transform at ``image_size``): ``[{"shard", "ok", "problem"}, ...]``, a problem naming what failed.

    The header audit (``wfa.data.audit``) finds shards that are truncated or lack members; this finds shards
    whose samples are all there but do not decode (broken images, a band layout the members contradict)."""
    index = read_index(shards_dir) if index is None else index
    stats = LoaderStats()
    parse = _Parse(max_captions, stats)
    decode = _Decode(build_transform(index.get("modality"), image_size, train=False,
                                     band_stats=index.get("band_stats")), stats, image_size, _band_grid(index))
    results = []
    for path, expected in split_shards(index, shards_dir, split):
        record: dict[str, Any] = {"shard": Path(path).name, "ok": False, "problem": None}
        if expected == 0:
            record["ok"] = True
            results.append(record)
            continue
        raw = None
        try:
            raw = _first_sample(path)
            if raw is None:
                record["problem"] = "no sample with a json and an image member"
            else:
                decode.decode(parse.parse(raw))
                record["ok"] = True
        except _SampleError as error:
            record["problem"] = f"{error.reason}: {error}"
        except (tarfile.TarError, OSError, EOFError) as error:
            record["problem"] = f"unreadable shard ({error})"
        except Exception as error:  # any decoder/transform failure is what the probe is for
            key = raw["__key__"] if raw is not None else "?"
            record["problem"] = f"sample {key!r} does not decode: {type(error).__name__}: {error}"
        results.append(record)
    return results


# ---------------------------------------------------------------------------------------------- loader


class ShardLoader:
    """Iterable of batch dicts over wfa shards; ``len()`` is the number of batches per epoch.

    Each iteration is one epoch and advances the epoch by one (new shard and sample order);
    ``set_epoch(e)`` chooses the epoch of the next iteration. ``stats`` counts parsed/skipped samples.
    """

    def __init__(self, loader: wds.WebLoader, *, num_batches: int, num_samples: int, epoch: int, epoch_state: _Epoch,
                 generator: torch.Generator, seed: int, rank: int, stats: LoaderStats, train: bool) -> None:
        self._loader = loader
        self._epoch_state = epoch_state
        self._next_epoch = epoch
        self._generator = generator
        self._seed = seed
        self._rank = rank
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.stats = stats
        self.train = train

    def __len__(self) -> int:
        return self.num_batches

    def _check_alive(self, epoch: int) -> None:
        """The liveness rule: raise :class:`DataError` once this epoch skipped more than its budget."""
        if self.stats.over_budget():
            per_shard = {name: {k: v for k, v in counts.items() if k != "samples"}
                         for name, counts in self.stats.per_shard().items()
                         if any(counts.get(k) for k in SKIP_REASONS if k != "tar_error")}
            shown = "; ".join(f"{name}: {counts}" for name, counts in list(per_shard.items())[:5])
            more = f" and {len(per_shard) - 5} more shards" if len(per_shard) > 5 else ""
            raise DataError(f"epoch {epoch}: {self.stats.epoch_skips()} samples were unreadable, more than "
                            f"{MAX_MISSING_FRACTION:.0%} of the epoch's {self.num_samples} (per shard: {shown}{more}); "
                            "rewrite the shards with `wfa shards`")

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by the next iteration (shard order, sample order, worker seeds)."""
        self._next_epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._next_epoch
        self._next_epoch = epoch + 1
        self._epoch_state.value = epoch
        # Worker torch seeds come from this generator, reproducible per (seed, epoch, rank); persistent workers
        # draw theirs once, at the first iteration. Augmentation does not use them (_AugmentSeeds).
        self._generator.manual_seed(make_seed(self._seed, epoch, self._rank))
        self.stats.start_epoch()
        produced = 0
        for batch in self._loader:
            produced += 1
            self._check_alive(epoch)
            yield batch
        self._check_alive(epoch)
        if self.train and produced < self.num_batches:
            logger.warning("wfa loader: epoch %d gave %d of %d batches (data unreadable?); stats %s",
                           epoch, produced, self.num_batches, self.stats.as_dict())
        if self.stats.skipped:
            logger.warning("wfa loader: after epoch %d: %s", epoch, self.stats.as_dict())


def _resolve_world(world_size: int | None, rank: int | None) -> tuple[int, int]:
    if world_size is None or rank is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            world_size = dist.get_world_size() if world_size is None else world_size
            rank = dist.get_rank() if rank is None else rank
        world_size = 1 if world_size is None else world_size
        rank = 0 if rank is None else rank
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return world_size, rank


def _shard_sizes(cfg: LoaderConfig, index: dict, shards: list[tuple[str, int]]) -> list[int]:
    """Samples per shard for the configured view (pairs: kept captions — from the index when its shard
    entries carry ``num_captions`` and no sample has more than ``max_captions``, else counted in the shards)."""
    if cfg.view == "images":
        return [n for _, n in shards]
    if cfg.view == "distinct-pairs":
        return [count_captions(path, cfg.max_captions, distinct=True) for path, _ in shards]
    entries = index["splits"][cfg.split]["shards"]
    k_max = (index.get("captions") or {}).get("k_max")
    counted = all(isinstance(e.get("num_captions"), int) and not isinstance(e["num_captions"], bool)
                  and e["num_captions"] >= 0 for e in entries)
    if isinstance(k_max, int) and k_max <= cfg.max_captions and counted:
        return [int(e["num_captions"]) for e in entries]
    return [count_captions(path, cfg.max_captions) for path, _ in shards]


def epoch_size(cfg: LoaderConfig, index: dict | None = None) -> int:
    """Samples in one training epoch of ``cfg.split`` for ``cfg.view`` (``cfg.epoch_samples`` when set): images,
    kept captions or distinct kept captions (see the module docstring)."""
    if cfg.epoch_samples is not None:
        return cfg.epoch_samples
    index = read_index(cfg.shards) if index is None else index
    return sum(_shard_sizes(cfg, index, split_shards(index, cfg.shards, cfg.split)))


def _decode_size(cfg: LoaderConfig, augment: bool) -> int:
    """Smallest image side to decode so the transform never upsamples: the eval resize needs
    ``image_size``; the smallest random crop (area ``crop_scale[0]``, aspect ratio down to 3/4) needs
    ``image_size / sqrt(crop_scale[0] * 3/4)``."""
    if not augment:
        return cfg.image_size
    return math.ceil(cfg.image_size / math.sqrt(cfg.crop_scale[0] * 3 / 4))


def build_loader(
    cfg: LoaderConfig,
    tokenizer: Tokenizer,
    world_size: int | None = None,
    rank: int | None = None,
    epoch: int = 0,
    train: bool = True,
) -> tuple[ShardLoader, int]:
    """Build the streaming loader for ``cfg.split``; return ``(loader, steps_per_epoch)``.

    ``tokenizer(list_of_str) -> LongTensor [N, L]`` (an open_clip tokenizer). ``world_size``/``rank``
    default to ``torch.distributed`` when initialised, else 1/0. ``train=True``: shuffled (or resampled)
    epochs of exactly ``steps_per_epoch`` full batches on every rank. ``train=False``: see
    ``build_eval_loader``.
    """
    world_size, rank = _resolve_world(world_size, rank)
    index = read_index(cfg.shards)
    shards = split_shards(index, cfg.shards, cfg.split)
    urls = [path for path, _ in shards]
    sizes = _shard_sizes(cfg, index, shards)
    modality = index.get("modality")
    augment = train and cfg.augment
    transform = build_transform(modality, cfg.image_size, train=augment,
                                band_stats=index.get("band_stats"), crop_scale=cfg.crop_scale)
    stats = LoaderStats(urls)
    epoch_state = _Epoch(epoch)
    resampled = train and cfg.resampled
    workers = max(1, cfg.num_workers)

    if train and not resampled:
        if len(urls) < world_size:
            raise ValueError(f"split {cfg.split!r} has {len(urls)} shards for {world_size} ranks: rewrite the shards "
                             "with a smaller --shard-size or use resampled=True")
        if len(urls) < world_size * workers:
            logger.warning("wfa loader: %d shards for %d ranks x %d workers: some workers stay idle",
                           len(urls), world_size, workers)

    # Upstream: shards -> parsed (and shuffled) records. In training it repeats endlessly per worker, so
    # batches run across pass boundaries and the loader's with_epoch(steps) alone ends the epoch.
    stages: list[Any] = []
    if resampled:
        stages.append(wds.ResampledShards(urls, seed=cfg.seed, worker_seed=_WorkerSeed(rank, epoch_state),
                                          deterministic=True))
    else:
        stages.append(wds.SimpleShardList(urls))
        if train and cfg.shuffle_shards:
            stages.append(_ShardShuffle(cfg.seed, epoch_state))
        stages += [_SplitByNode(rank, world_size), wds.split_by_worker]
    stages += [wds.tarfile_to_samples(handler=_CountingHandler(stats, "tar_error")), _Parse(cfg.max_captions, stats)]
    if cfg.view != "images":
        stages.append(partial(_expand_pairs, distinct=cfg.view == "distinct-pairs"))
    if train and cfg.shuffle > 1:
        # The buffer counts images. The pairs view has expanded an image into up to max_captions adjacent
        # pairs before it, so it gets max_captions x the slots: with the images' buffer, the pairs of an image
        # would stay close together and a batch would hold several (false negatives for the contrastive loss).
        bufsize = cfg.shuffle * (cfg.max_captions if cfg.view != "images" else 1)
        stages.append(_SampleShuffle(bufsize, cfg.seed, epoch_state, rank))
    records = wds.DataPipeline(*stages)
    if train:
        records = records.repeat()  # stops by itself only if a pass yields nothing (no readable data)
    dataset = wds.DataPipeline(
        records, _Decode(transform, stats, _decode_size(cfg, augment), _band_grid(index),
                         _AugmentSeeds(cfg.seed, epoch_state, rank) if augment else None),
        wds.batched(cfg.batch_size, collation_fn=Collate(tokenizer), partial=not train),
    )

    if train:
        epoch_samples = cfg.epoch_samples if cfg.epoch_samples is not None else sum(sizes)  # = epoch_size(cfg)
        steps = epoch_samples // (cfg.batch_size * world_size)
        if steps < 1:
            raise ValueError(f"split {cfg.split!r}: {epoch_samples} {cfg.view} make no full global batch of "
                             f"{cfg.batch_size} x {world_size} ranks; lower batch_size")
        num_samples = steps * cfg.batch_size
    else:
        ordered = sizes[rank::world_size]
        steps = sum(math.ceil(sum(ordered[w::workers]) / cfg.batch_size) for w in range(workers))
        num_samples = sum(ordered)

    if train:
        stats.budget = math.floor(MAX_MISSING_FRACTION * num_samples)
    generator = torch.Generator()
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                           persistent_workers=cfg.num_workers > 0, generator=generator)
    if train:
        loader = loader.with_epoch(steps)
    wrapped = ShardLoader(loader, num_batches=steps, num_samples=num_samples, epoch=epoch, epoch_state=epoch_state,
                          generator=generator, seed=cfg.seed, rank=rank, stats=stats, train=train)
    return wrapped, steps


def build_eval_loader(
    cfg: LoaderConfig, tokenizer: Tokenizer, world_size: int = 1, rank: int = 0
) -> tuple[ShardLoader, int]:
    """Single ordered pass over ``cfg.split`` (every sample exactly once, partial last batches).

    Ignores ``resampled``, ``shuffle`` and ``augment``. With ``world_size > 1`` each rank reads its own
    shards (``shards[rank::world_size]``). With ``num_workers > 1`` worker batches interleave: align with
    ``batch["image_ids"]``. Returns ``(loader, number_of_batches)``.
    """
    return build_loader(cfg, tokenizer, world_size=world_size, rank=rank, train=False)
