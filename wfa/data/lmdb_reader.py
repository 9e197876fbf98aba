"""BigEarthNet patches from an LMDB database in the rico-hdl encoding.

Layout: one LMDB environment (a folder holding ``data.mdb``); key = patch name (utf-8), value = a
safetensors blob ``{band name: array}`` -- S2 bands uint16 at native size (120/60/20 px), S1 ``VV``
and ``VH`` float32 120 px. Keys starting with ``S2`` are Sentinel-2 patches, keys starting with
``S1`` Sentinel-1 patches.

Arrays are built by ``wfa.data.bigearthnet.stack_bands`` -- the same band order, validation and
resampling as the GeoTIFF reader -- so a patch gives identical arrays from either source. Labels,
captions, splits and the S1<->S2 pairing come from the same optional sources as
``BigEarthNetReader`` (``metadata=``, ``mapping=``, ``labels=``, ``captions=``, ``splits=``; see
``wfa.data.bigearthnet``), including the single-pair rule.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wfa.data.bigearthnet import PATCH_SIZE, PatchAnnotations, PatchError, PatchReader

_ENVIRONMENTS: dict[tuple[str, int], object] = {}


def _environment(path: Path):  # noqa: ANN202 - lmdb.Environment
    """One read-only environment per folder and process: lmdb refuses to open a folder twice in a
    process, and an environment must not be used across fork."""
    import lmdb

    key = (str(path.resolve()), os.getpid())
    if key not in _ENVIRONMENTS:
        _ENVIRONMENTS[key] = lmdb.open(key[0], readonly=True, lock=False, readahead=False, subdir=True)
    return _ENVIRONMENTS[key]


class LMDBReader(PatchReader):
    """Reads rico-hdl LMDB patches into multispectral ``Sample``s (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str = "s1s2",
        resample: str = "bilinear",
        *,
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
        """Open the LMDB folder ``path`` read-only and list its keys."""
        self.mode, self.resample, self.size, self.native = mode, resample, size, native
        self._check_options()
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise ValueError(f"{self.path} is not an LMDB folder (no data.mdb): pass the folder holding data.mdb")
        import lmdb

        try:
            with self._open().begin() as txn:
                # a key that is not UTF-8 keeps its bytes visible and is then rejected as a missing patch
                keys = [key.decode("utf-8", "backslashreplace")
                        for key in txn.cursor().iternext(keys=True, values=False)]
        except lmdb.Error as exc:
            raise ValueError(f"{self.path} is not a readable LMDB ({exc})") from exc
        self._s2 = sorted(key for key in keys if key.startswith("S2"))
        self._s1 = sorted(key for key in keys if key.startswith("S1"))
        self.annotations = PatchAnnotations(metadata, mapping, labels, captions, splits, default_split, k)
        self._derive_single_pair()
        self.source = {
            "type": "bigearthnet-lmdb",
            "path": str(self.path),
            "mode": mode,
            "metadata": [str(path) for path in self.annotations.metadata] or None,
            "resample": resample,
            "size": size,
            "native": native,
            "bands": self.bands,
            "captions": "given" if captions else f"label templates (k={k})",
            "s1_unpaired": self.unpaired_s1(),
        }

    def _open(self):  # noqa: ANN202 - lmdb.Environment
        return _environment(self.path)

    def _s2_ids(self) -> list[str]:
        return self._s2

    def _s1_ids(self) -> list[str]:
        return self._s1

    def _read_bands(self, patch_id: str, sensor: str) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        with self._open().begin() as txn:
            blob = txn.get(patch_id.encode("utf-8"))
        if blob is None:
            raise PatchError("missing image", f"{sensor.upper()} patch {patch_id} not in {self.path}")
        try:
            return load(bytes(blob))
        except Exception as exc:  # safetensors raises its own error types for corrupt blobs
            raise PatchError("unreadable image", f"safetensors blob of {patch_id}: {exc}") from exc
