"""BigEarthNet GeoTIFF trees (v1 flat layout and v2.0 layout) as ``Sample`` arrays.

Layouts (``layout="auto"`` tells them apart by looking at the first patch folder):

- **v2.0** (reBEN): ``BigEarthNet-S2/<tile product>/<patch_id>/<patch_id>_<BAND>.tif`` and
  ``BigEarthNet-S1/<product>/<s1_name>/<s1_name>_{VV,VH}.tif``. Labels, splits and the S1<->S2
  pairing come from the official ``metadata.parquet`` (columns ``patch_id``, ``labels``, ``split``,
  ``s1_name``; any subset is used), passed as ``metadata=`` (found automatically as
  ``<root>/metadata.parquet`` when ``root=`` is given). reBEN lists the patches with snow, cloud or
  shadow in a second file, ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``: ``metadata=``
  takes a list of files (both are found under ``root=``), and a patch that none of the given files
  lists is rejected as ``"not in metadata"``, naming the files. A ``labels`` value must be a list of
  label names (a string is refused rather than read letter by letter).
- **v1**: ``<patch>/<patch>_<BAND>.tif`` plus ``<patch>_labels_metadata.json`` (43-class labels).
  The S1 json names its partner in ``corresponding_s2_patch``.

The S1<->S2 pairing for ``mode="s1s2"``, in order of precedence: ``mapping=`` (dict S2 id -> S1 name,
or a csv ``patch_id,s1_name`` / parquet with those columns), the metadata's ``s1_name``, the v1 S1
json files, and finally -- only when the two trees hold exactly one S2 and one S1 patch and nothing
else names a pair -- that single pair (recorded as ``meta["s1_pairing"] = "single pair"``; this is
what the rico-hdl v2 sample holds).

Modes and band order (``.bands``):

- ``"s2"``: the 12 Sentinel-2 L2A bands ``B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12``
  (uint16 reflectance x 10^4, native 120/60/20 px for 10/20/60 m);
- ``"s1"``: ``VV VH`` (float32 backscatter in dB, 120 px);
- ``"s1s2"``: 14 channels, the 12 S2 bands then ``VV VH``.

With ``native=True`` a sample's image is a ``NativeBands`` (``wfa.data.shard_format``): the bands
as read, uint16/float32 at native size, which the shard writer stores exactly and the loader
resamples on load. Otherwise (the default) every band is converted to float32 and resampled to
120 x 120 with ``shard_format.to_grid``: bands already 120 px are copied unchanged; the others go
through ``torch.nn.functional.interpolate`` with ``mode="bilinear", align_corners=False`` (default)
or ``mode="nearest"`` (``resample="nearest"``). A band must have its native size (or already
120 x 120); any other shape is rejected, as are NaN/inf values and missing band files.

Labels are mapped to the 19-class nomenclature (``label_captions.to_v2_labels``) into
``Sample.labels``; the v1 43-class names (from a v1 json, or any non-19-class name given) are kept
in ``meta["labels_v1"]``. BigEarthNet has no text: the captions are
``label_captions(labels, k, seed=stable_seed(id))`` unless ``captions=`` (dict id -> list of
captions) supplies them. The split is looked up in ``splits=`` (dict, or csv ``patch_id,split`` /
parquet with those columns), then in the metadata's ``split``; otherwise it is ``default_split``
("train").

``LMDBReader`` (``wfa.data.lmdb_reader``) shares this module's band stacking and sample assembly.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wfa.data.label_captions import V2_LABELS, label_captions, stable_seed, to_v2_labels
from wfa.data.sample import Rejected, Sample
from wfa.data.shard_format import (  # noqa: F401 - re-exported: the band lists' one owner is shard_format
    MODE_BANDS, NATIVE_SIZE, PATCH_SIZE, RESAMPLE_MODES, S1_BANDS, S2_BANDS, NativeBands, to_grid,
)



class PatchError(Exception):
    """A patch that cannot be turned into an array; ``reason`` is a stable short string."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def checked_bands(
    arrays: Mapping[str, np.ndarray], bands: Sequence[str], size: int = PATCH_SIZE
) -> dict[str, np.ndarray]:
    """Validate ``arrays[band]`` for each of ``bands``; return them in that order, dtype and size unchanged.

    Raises ``PatchError`` with reason ``"missing band"``, ``"wrong band shape"`` or ``"nan values"``
    naming the band. A band must have its native size or already ``size`` px.
    """
    checked: dict[str, np.ndarray] = {}
    for band in bands:
        if band not in arrays:
            raise PatchError("missing band", band)
        array = np.asarray(arrays[band])
        native = NATIVE_SIZE.get(band, size)
        if array.ndim != 2 or array.shape not in ((native, native), (size, size)):
            raise PatchError(
                "wrong band shape", f"{band} has shape {array.shape}, expected ({native}, {native}) or ({size}, {size})"
            )
        bad = int(np.count_nonzero(~np.isfinite(array))) if np.issubdtype(array.dtype, np.floating) else 0
        if bad:
            raise PatchError("nan values", f"{band} has {bad} NaN/inf pixels")
        checked[band] = array
    return checked


def stack_bands(
    arrays: Mapping[str, np.ndarray],
    bands: Sequence[str],
    size: int = PATCH_SIZE,
    resample: str = "bilinear",
) -> np.ndarray:
    """Validate ``arrays[band]`` for each of ``bands`` (``checked_bands``) and stack them into float32
    ``C x size x size`` with ``wfa.data.shard_format.to_grid`` (bands of other sizes resampled)."""
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
    return to_grid(list(checked_bands(arrays, bands, size).values()), size, resample)


def _read_table(path: Path, required: Sequence[str]) -> dict[str, list[Any]]:
    """Read a csv (header row) or parquet file into ``{column: values}``; check ``required`` columns."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row]
        if not rows:
            raise ValueError(f"{path} is empty")
        header, body = rows[0], rows[1:]
        short = next((n for n, row in enumerate(body, start=2) if len(row) < len(header)), None)
        if short is not None:
            raise ValueError(f"{path}: line {short} has fewer fields than the header {header}")
        columns = {name: [row[i] for row in body] for i, name in enumerate(header)}
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} (has {sorted(columns)})")
    return columns


def _as_mapping(value: Mapping[str, Any] | str | os.PathLike | None, key: str, column: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    table = _read_table(Path(value), [key, column])
    return dict(zip(table[key], table[column]))


SNOW_CLOUD_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"


def _label_list(value: Any, where: str) -> list[str]:
    """A labels value as a list of label names; a plain string (which ``list()`` would split into letters) or
    anything else that is not a sequence of strings is an error naming ``where``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)) \
            or not all(isinstance(label, str) for label in value):
        raise ValueError(f"{where}: labels {str(value)[:80]!r} are not a list of label names (the v2 "
                         "metadata.parquet holds a list per patch, e.g. ['Coniferous forest', 'Pastures'])")
    return [str(label) for label in value]


class PatchAnnotations:
    """Labels, captions, splits and S1<->S2 pairs for BigEarthNet patches, from the optional sources
    described in the module docstring. Lookups accept an S2 patch id or an S1 name.

    ``metadata`` is one v2 metadata parquet or several (reBEN puts the patches with snow, cloud or shadow
    in ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``, beside ``metadata.parquet``); ``listed``
    holds every patch id and S1 name they name, so a patch missing from them is reported as such."""

    def __init__(
        self,
        metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        mapping: Mapping[str, str] | str | os.PathLike | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        captions: Mapping[str, Sequence[str]] | None = None,
        splits: Mapping[str, str] | str | os.PathLike | None = None,
        default_split: str = "train",
        k: int = 5,
    ) -> None:
        if metadata is None:
            metadata = []
        elif isinstance(metadata, (str, os.PathLike)):
            metadata = [metadata]
        self.metadata = [Path(path) for path in metadata]
        self.listed: set[str] = set()
        self.s2_to_s1: dict[str, str] = {}
        self.labels: dict[str, list[str]] = {}
        self.splits: dict[str, str] = {}
        for path in self.metadata:
            table = _read_table(path, ["patch_id"])
            s1_names = table.get("s1_name", [None] * len(table["patch_id"]))
            for column, target in (("labels", self.labels), ("split", self.splits)):
                for patch_id, s1_name, value in zip(table["patch_id"], s1_names, table.get(column, [])):
                    target[patch_id] = _label_list(value, f"{path}, patch {patch_id}") if column == "labels" else value
                    if s1_name:
                        target[s1_name] = target[patch_id]
            self.s2_to_s1.update({p: s for p, s in zip(table["patch_id"], s1_names) if s})
            self.listed.update(p for p in table["patch_id"] if p)
            self.listed.update(s for s in s1_names if s)
        self.s2_to_s1.update(_as_mapping(mapping, "patch_id", "s1_name"))
        self.labels.update({key: _label_list(value, f"labels of {key}") for key, value in (labels or {}).items()})
        self.splits.update(_as_mapping(splits, "patch_id", "split"))
        self.captions = {key: list(value) for key, value in (captions or {}).items()}
        self.default_split = default_split
        self.k = k

    def unlisted(self, *ids: str | None) -> PatchError | None:
        """The error for a patch that metadata was given for but that none of the files lists, else None."""
        if not self.metadata or any(item in self.listed for item in ids if item):
            return None
        given = ", ".join(path.name for path in self.metadata)
        hint = ("" if any(path.name == SNOW_CLOUD_METADATA for path in self.metadata) else
                f"; reBEN lists the patches with snow, cloud or shadow in {SNOW_CLOUD_METADATA}: give it as "
                "another --metadata")
        return PatchError("not in metadata", f"the metadata given ({given}) does not list it{hint}, or leave the "
                                             "patch out (--skip-bad)")

    def add_pairs(self, s2_to_s1: Mapping[str, str]) -> None:
        """Add S2 -> S1 pairs found in the data (v1 json files); explicit ones take precedence."""
        for s2_id, s1_name in s2_to_s1.items():
            self.s2_to_s1.setdefault(s2_id, s1_name)

    def split_for(self, *ids: str | None) -> str:
        """The split of the first of ``ids`` that has one, else ``default_split``."""
        for item in ids:
            if item in self.splits:
                return self.splits[item]
        return self.default_split

    def labels_for(self, *ids: str | None) -> list[str] | None:
        """Labels given for the first of ``ids`` that has some, else ``None``."""
        for item in ids:
            if item in self.labels:
                return self.labels[item]
        return None


def _read_band_file(path: Path, band: str) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise PatchError("missing band", f"{band} ({path})")
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # a corrupt GeoTIFF can raise anything from tifffile's decoders
        raise PatchError("unreadable band", f"{band} ({path}): {exc}") from exc
    if array.size == 0:  # tifffile returns an empty array (and logs a warning) for a file with no pages
        raise PatchError("unreadable band", f"{band} ({path}): no image data")
    return array


class PatchReader:
    """Shared iteration for BigEarthNet readers; subclasses provide the patch ids and band arrays.

    Subclasses set ``self.mode``, ``self.resample``, ``self.size``, ``self.annotations`` and
    implement ``_s2_ids``, ``_s1_ids``, ``_read_bands`` and optionally ``_file_annotations``.
    """

    mode: str
    resample: str
    size: int
    annotations: PatchAnnotations
    single_pair: tuple[str, str] | None = None
    # True: samples carry ``NativeBands`` (stored exactly, resampled on load); False: float32 grid arrays
    native: bool = False

    def _s2_ids(self) -> list[str]:
        raise NotImplementedError

    def _s1_ids(self) -> list[str]:
        raise NotImplementedError

    def _read_bands(self, patch_id: str, sensor: str) -> dict[str, np.ndarray]:
        """Band name -> array of one patch; raise ``PatchError`` when the patch is absent."""
        raise NotImplementedError

    def _file_annotations(self, patch_id: str, sensor: str) -> dict[str, Any]:
        """Per-patch metadata stored beside the bands (v1 json); ``{}`` when there is none."""
        return {}

    @property
    def bands(self) -> list[str]:
        """Channel names of the output arrays, in order."""
        return list(MODE_BANDS[self.mode])

    def _check_options(self) -> None:
        if self.mode not in MODE_BANDS:
            raise ValueError(f"mode must be one of {sorted(MODE_BANDS)}, got {self.mode!r}")
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {self.resample!r}")

    def _derive_single_pair(self) -> None:
        s2_ids, s1_ids = self._s2_ids(), self._s1_ids()
        if self.mode == "s1s2" and not self.annotations.s2_to_s1 and len(s2_ids) == 1 and len(s1_ids) == 1:
            self.single_pair = (s2_ids[0], s1_ids[0])

    def unpaired_s1(self) -> int:
        """S1 patches that no S2 patch is paired with in mode ``s1s2`` (not read; counted in ``source``)."""
        if self.mode != "s1s2":
            return 0
        paired = {self.s1_for(s2_id) for s2_id in self._s2_ids()}
        return sum(1 for name in self._s1_ids() if name not in paired)

    def ids(self) -> list[str]:
        """The ids this reader yields, in order: S2 patch ids (modes s2, s1s2) or S1 names (s1)."""
        return self._s1_ids() if self.mode == "s1" else self._s2_ids()

    def __len__(self) -> int:
        return len(self.ids())

    def sample_at(self, index: int) -> Sample | Rejected:
        """The ``index``-th item of the iteration (lets a writer load items in worker processes)."""
        return self._sample(self.ids()[index])

    def s1_for(self, s2_id: str) -> str | None:
        """The S1 name paired with an S2 patch, or ``None``."""
        if self.single_pair is not None and self.single_pair[0] == s2_id:
            return self.single_pair[1]
        return self.annotations.s2_to_s1.get(s2_id)

    def load(self, patch_id: str, s1_name: str | None = None) -> np.ndarray:
        """The float32 ``C x 120 x 120`` array of one patch in this reader's mode (``load_native`` on the grid)."""
        return self.load_native(patch_id, s1_name).to_grid()

    def image(self, patch_id: str, s1_name: str | None = None) -> NativeBands | np.ndarray:
        """What a ``Sample`` of this reader carries: ``load_native`` when ``native`` is set, else ``load``."""
        return self.load_native(patch_id, s1_name) if self.native else self.load(patch_id, s1_name)

    def load_native(self, patch_id: str, s1_name: str | None = None) -> NativeBands:
        """The validated bands of one patch in this reader's mode, in the source's dtype and native size.

        ``patch_id`` is an S2 id (modes s2, s1s2) or an S1 name (mode s1); in mode s1s2 the S1 partner
        is ``s1_name`` when given, else the known pairing. Raises ``PatchError``.
        """
        arrays: dict[str, np.ndarray] = {}
        if self.mode == "s1":
            arrays.update(self._read_bands(patch_id, "s1"))
        else:
            arrays.update(self._read_bands(patch_id, "s2"))
        if self.mode == "s1s2":
            s1_name = s1_name or self.s1_for(patch_id)
            if s1_name is None and self.annotations.unlisted(patch_id) is not None:
                raise self.annotations.unlisted(patch_id)
            if s1_name is None:
                raise PatchError(
                    "missing s1 pair",
                    "no Sentinel-1 patch is paired with it: give an S2->S1 mapping or the v2 metadata.parquet, "
                    "or use mode s2",
                )
            try:
                arrays.update(self._read_bands(s1_name, "s1"))
            except PatchError as exc:
                if exc.reason == "missing image":
                    raise PatchError("missing s1 pair", f"paired S1 patch {s1_name} not found") from exc
                raise
        return NativeBands(checked_bands(arrays, self.bands, self.size), self.size, self.resample)

    def _sample(self, patch_id: str) -> Sample | Rejected:
        s1_name = patch_id if self.mode == "s1" else (self.s1_for(patch_id) if self.mode == "s1s2" else None)
        s2_id = None if self.mode == "s1" else patch_id
        try:
            image = self.image(patch_id)
            file_meta = self._file_annotations(patch_id, "s1" if self.mode == "s1" else "s2")
        except PatchError as exc:
            return Rejected(patch_id, exc.reason, exc.detail)
        meta: dict[str, Any] = {"s2_patch": s2_id, "s1_patch": s1_name}
        if self.single_pair is not None and self.mode == "s1s2":
            meta["s1_pairing"] = "single pair"
        meta.update({key: value for key, value in file_meta.items() if key != "labels"})
        raw_labels = self.annotations.labels_for(s2_id, s1_name)
        from_v1_file = raw_labels is None and "labels" in file_meta
        if from_v1_file:
            raw_labels = file_meta["labels"]
        labels: list[str] | None = None
        if raw_labels is not None:
            try:
                labels = to_v2_labels(raw_labels)
            except ValueError as exc:
                return Rejected(patch_id, "unknown label", str(exc))
            if from_v1_file or any(label not in V2_LABELS for label in raw_labels):
                meta["labels_v1"] = list(raw_labels)
        captions = self.annotations.captions.get(patch_id)
        if captions is not None:
            meta["caption_source"] = "given"
        elif labels:
            captions = label_captions(labels, self.annotations.k, stable_seed(patch_id))
            meta["caption_source"] = "label templates"
        elif labels is not None:
            return Rejected(patch_id, "no labels", f"none of {list(raw_labels)} is in the 19-class nomenclature")
        elif self.annotations.unlisted(s2_id, s1_name) is not None:
            error = self.annotations.unlisted(s2_id, s1_name)
            return Rejected(patch_id, error.reason, error.detail)
        else:
            return Rejected(
                patch_id,
                "no labels",
                "no captions or labels for this patch: give the v2 metadata.parquet, labels or captions",
            )
        return Sample(
            id=patch_id,
            image=image,
            captions=captions,
            split=self.annotations.split_for(s2_id, s1_name),
            labels=labels,
            meta=meta,
            bands=self.bands,
        )

    def __iter__(self) -> Iterator[Sample | Rejected]:
        for patch_id in self.ids():
            yield self._sample(patch_id)


_LAYOUT_PROBES = 32  # folders looked at to tell the layouts apart


def _folders(root: str | os.PathLike) -> list[os.DirEntry]:
    """The sub-folders of ``root``, sorted, without hidden ones (``.ipynb_checkpoints``, ``.git``, ...)."""
    return sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _index_patches(root: Path, layout: str) -> dict[str, Path]:
    """Patch id -> patch folder, for a v1 (one level) or v2 (two levels) tree; hidden folders are skipped."""
    if layout == "v1":
        return {entry.name: Path(entry.path) for entry in _folders(root)}
    found: dict[str, Path] = {}
    for tile in _folders(root):
        found.update({entry.name: Path(entry.path) for entry in _folders(tile.path)})
    return found


def _is_patch(folder: str) -> bool:
    """A patch folder holds ``<folder name>_*`` files."""
    name = os.path.basename(folder)
    return any(entry.is_file() and entry.name.startswith(name + "_") for entry in os.scandir(folder))


def detect_layout(root: Path) -> str:
    """``"v1"`` when the folders under ``root`` are patches (hold ``<folder>_*`` files), ``"v2"`` when they
    are tile product folders of patches. The first :data:`_LAYOUT_PROBES` folders vote, so a stray folder
    (``0_backup/``, a hidden one) does not decide; ``ValueError`` when none looks like either."""
    folders = _folders(root)
    if not folders:
        raise ValueError(f"no patch folders under {root}")
    votes = {"v1": 0, "v2": 0}
    for folder in folders[:_LAYOUT_PROBES]:
        if _is_patch(folder.path):
            votes["v1"] += 1
        elif any(_is_patch(sub.path) for sub in _folders(folder.path)[:2]):
            votes["v2"] += 1
    if not votes["v1"] and not votes["v2"]:
        raise ValueError(f"no BigEarthNet patch folders under {root}: expected <patch>/<patch>_B02.tif (v1) or "
                         "<tile>/<patch>/<patch>_B02.tif (v2)")
    return "v1" if votes["v1"] >= votes["v2"] else "v2"


class BigEarthNetReader(PatchReader):
    """Reads BigEarthNet GeoTIFF trees (see the module docstring) into multispectral ``Sample``s."""

    def __init__(
        self,
        root_s2: str | os.PathLike | None = None,
        root_s1: str | os.PathLike | None = None,
        mode: str = "s1s2",
        layout: str = "auto",
        resample: str = "bilinear",
        *,
        root: str | os.PathLike | None = None,
        metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        mapping: Mapping[str, str] | str | os.PathLike | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        captions: Mapping[str, Sequence[str]] | None = None,
        splits: Mapping[str, str] | str | os.PathLike | None = None,
        default_split: str = "train",
        k: int = 5,
        size: int = PATCH_SIZE,
        native: bool = False,
    ) -> None:
        """``root`` is a dataset folder holding ``BigEarthNet-S2``/``BigEarthNet-S1`` (v2) or ``S2``/``S1``
        (v1) -- an alternative to ``root_s2``/``root_s1``; the other arguments are described in the
        module docstring."""
        self.mode, self.resample, self.size, self.native = mode, resample, size, native
        self._check_options()
        if root is not None:
            root = Path(root)
            for s2_name, s1_name in (("BigEarthNet-S2", "BigEarthNet-S1"), ("S2", "S1")):
                if (root / s2_name).is_dir() or (root / s1_name).is_dir():
                    root_s2 = root_s2 or ((root / s2_name) if (root / s2_name).is_dir() else None)
                    root_s1 = root_s1 or ((root / s1_name) if (root / s1_name).is_dir() else None)
                    break
            else:
                raise ValueError(f"{root} holds neither BigEarthNet-S2/BigEarthNet-S1 (v2) nor S2/S1 (v1) folders")
            if metadata is None:
                metadata = [root / name for name in ("metadata.parquet", SNOW_CLOUD_METADATA)
                            if (root / name).is_file()] or None
        self.root_s2 = Path(root_s2) if root_s2 is not None else None
        self.root_s1 = Path(root_s1) if root_s1 is not None else None
        need_s2, need_s1 = mode in ("s2", "s1s2"), mode in ("s1", "s1s2")
        for needed, folder, name in ((need_s2, self.root_s2, "root_s2"), (need_s1, self.root_s1, "root_s1")):
            if needed and (folder is None or not folder.is_dir()):
                raise ValueError(f"mode {mode!r} needs {name}, a folder of patches; got {folder}")
        reference = self.root_s2 if need_s2 else self.root_s1
        assert reference is not None
        self.layout = detect_layout(reference) if layout == "auto" else layout
        if self.layout not in ("v1", "v2"):
            raise ValueError(f"layout must be 'auto', 'v1' or 'v2', got {layout!r}")
        self._s2 = _index_patches(self.root_s2, self.layout) if self.root_s2 is not None and need_s2 else {}
        self._s1 = _index_patches(self.root_s1, self.layout) if self.root_s1 is not None and need_s1 else {}
        self._s2_sorted, self._s1_sorted = sorted(self._s2), sorted(self._s1)
        self.annotations = PatchAnnotations(metadata, mapping, labels, captions, splits, default_split, k)
        if self.layout == "v1" and mode == "s1s2":
            self.annotations.add_pairs(self._v1_pairs())
        self._derive_single_pair()
        self.source = {
            "type": "bigearthnet",
            "layout": self.layout,
            "mode": mode,
            "root_s2": str(self.root_s2) if self.root_s2 else None,
            "root_s1": str(self.root_s1) if self.root_s1 else None,
            "metadata": [str(path) for path in self.annotations.metadata] or None,
            "resample": resample,
            "size": size,
            "native": native,
            "bands": self.bands,
            "captions": "given" if captions else f"label templates (k={k})",
            "s1_unpaired": self.unpaired_s1(),
        }

    def _v1_pairs(self) -> dict[str, str]:
        pairs = {}
        for s1_name in self._s1_sorted:
            try:
                partner = self._file_annotations(s1_name, "s1").get("corresponding_s2_patch")
            except PatchError:  # its S2 partner is then reported as "missing s1 pair"
                continue
            if partner:
                pairs[partner] = s1_name
        return pairs

    def _s2_ids(self) -> list[str]:
        return self._s2_sorted

    def _s1_ids(self) -> list[str]:
        return self._s1_sorted

    def _read_bands(self, patch_id: str, sensor: str) -> dict[str, np.ndarray]:
        folder = (self._s1 if sensor == "s1" else self._s2).get(patch_id)
        if folder is None:
            root = self.root_s1 if sensor == "s1" else self.root_s2
            raise PatchError("missing image", f"{sensor.upper()} patch {patch_id} not found under {root}")
        names = S1_BANDS if sensor == "s1" else S2_BANDS
        return {band: _read_band_file(folder / f"{patch_id}_{band}.tif", band) for band in names}

    def _file_annotations(self, patch_id: str, sensor: str) -> dict[str, Any]:
        if self.layout != "v1":
            return {}
        folder = (self._s1 if sensor == "s1" else self._s2).get(patch_id)
        path = folder / f"{patch_id}_labels_metadata.json" if folder is not None else None
        if path is None or not path.is_file():
            return {}
        try:
            with path.open(encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise PatchError("unreadable metadata", f"{path}: {exc}") from exc
        keep = (
            "labels", "corresponding_s2_patch", "acquisition_date", "acquisition_time", "tile_source", "scene_source"
        )
        return {key: data[key] for key in keep if key in data}
