"""The wfa shard format: names, versions, band lists and the multispectral member (docs/shard-format.md).

This module is the one owner of what a shard holds; the writer (``wfa.data.writer``) and the
loader (``wfa.data.loader``) both import it.

Multispectral samples (writer version 2) are stored as one ``safetensors.zst`` member per sample:
a safetensors blob ``{band name: 2-D array}`` in the source's dtype at the band's native resolution
(BigEarthNet S2: uint16 at 120/60/20 px, S1: float32 dB at 120 px), zstd-compressed (lossless), so
what is stored equals the source values exactly. The index records the per-band layout
(``band_layout``: dtype and every shape a band is stored at), the largest uncompressed blob
(``bands_bytes``, the most the loader decompresses), the grid every band is resampled to on load
(``image_size``) and the resampling mode (``resample``); :func:`check_band_index` refuses an index
that contradicts itself before anything is decoded. On load, :func:`to_grid`
resamples the bands to the grid exactly as writer version 1 did before storing float32 ``npy``
arrays, and the image transform then normalises and resizes to the model's size.

Writer version 1 shards (float32 ``C x 120 x 120`` ``npy`` members) still load: the loader
decodes both members; an index written by a newer major version is refused with a message that
names the version.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = "wfa-shards"
INDEX_NAME = "index.json"
WRITER_VERSION = "2.0"
# Major versions this code reads: 1 (float32 npy arrays on the grid), 2 (native bands in safetensors).
READABLE_MAJOR_VERSIONS = (1, 2)
BANDS_MEMBER = "safetensors.zst"
COMPRESSION = "zstd"  # lossless; level 1 (pyarrow's codec) packs BigEarthNet S1+S2 ~16 % for ~0.3 ms each way
ZSTD_LEVEL = 1
ARRAY_MEMBER = "npy"  # writer version 1 multispectral member, still read

S2_BANDS: list[str] = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S1_BANDS: list[str] = ["VV", "VH"]
MODE_BANDS: dict[str, list[str]] = {"s2": S2_BANDS, "s1": S1_BANDS, "s1s2": S2_BANDS + S1_BANDS}
PATCH_SIZE = 120
NATIVE_SIZE: dict[str, int] = {
    **{band: 120 for band in ("B02", "B03", "B04", "B08", "VV", "VH")},
    **{band: 60 for band in ("B05", "B06", "B07", "B8A", "B11", "B12")},
    **{band: 20 for band in ("B01", "B09")},
}
RESAMPLE_MODES = ("bilinear", "nearest")
MAX_SIDE = 10_000  # px per side of a stored band or of the load grid (BigEarthNet: 120)
MAX_GRID_VALUES = 1 << 28  # C x H x W of one decoded sample (1 GiB of float32): an index asking more is refused


@dataclass
class NativeBands:
    """A multispectral image as its bands at native resolution (what the writer stores).

    ``arrays`` maps band name -> 2-D array in channel order; ``size`` is the square grid the bands
    are resampled to on load, with ``resample`` (``"bilinear"`` or ``"nearest"``).
    """

    arrays: dict[str, np.ndarray]
    size: int
    resample: str = "bilinear"

    @property
    def bands(self) -> list[str]:
        """Band names in channel order."""
        return list(self.arrays)

    def to_grid(self) -> np.ndarray:
        """The float32 ``C x size x size`` array of these bands (see :func:`to_grid`)."""
        return to_grid(list(self.arrays.values()), self.size, self.resample)


def to_grid(arrays: Sequence[np.ndarray], size: int | Sequence[int], resample: str = "bilinear") -> np.ndarray:
    """Stack 2-D bands into a float32 ``C x H x W`` array (``size``: H = W, or ``(H, W)``).

    Bands already ``H x W`` are copied; the others are resampled with
    ``torch.nn.functional.interpolate`` (``align_corners=False`` for bilinear), bands of one shape in
    one call. This is the only resampling of multispectral bands in wfa (readers and loader share it).
    """
    import torch
    import torch.nn.functional as F

    if resample not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
    grid = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    out = np.empty((len(arrays), *grid), dtype=np.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for channel, array in enumerate(arrays):
        if array.shape == grid:
            out[channel] = array
        else:
            by_shape.setdefault(array.shape, []).append(channel)
            out[channel, : array.shape[0], : array.shape[1]] = array
    for (height, width), channels in by_shape.items():
        small = torch.from_numpy(np.ascontiguousarray(out[channels, :height, :width]))[None]
        kwargs = {"align_corners": False} if resample == "bilinear" else {}
        out[channels] = F.interpolate(small, size=grid, mode=resample, **kwargs)[0].numpy()
    return out


def band_layout(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The per-band storage layout of one sample: ``[{"band", "dtype", "shape"}, ...]`` (the index adds, per
    band, ``shapes``: every shape the data set stores it at)."""
    return [{"band": name, "dtype": str(array.dtype), "shape": list(array.shape)} for name, array in arrays.items()]


def encode_bands(arrays: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    """The member of one sample: every band as stored, byte for byte, in a safetensors blob that is
    then zstd-compressed. Returns ``(member bytes, size of the uncompressed blob)``; for one band
    layout the uncompressed size is the same for every sample (the index records the largest)."""
    import pyarrow as pa
    from safetensors.numpy import save

    blob = save({name: np.ascontiguousarray(array) for name, array in arrays.items()})
    return pa.Codec(COMPRESSION, ZSTD_LEVEL).compress(blob, asbytes=True), len(blob)


def band_shapes(entry: Mapping[str, Any]) -> list[list[int]]:
    """The shapes a band of the index's ``band_layout`` may be stored at: ``shapes`` (every shape the writer
    met, e.g. B01 at its native 20 px and, in another patch, at 120 px) or, in older indexes, ``shape``."""
    return [list(shape) for shape in entry.get("shapes") or [entry["shape"]]]


def check_band_index(index: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming the field when a multispectral index contradicts itself or asks for more
    memory than any data set needs: ``bands`` must equal the layout's band names, each band a numeric dtype
    and 2-D shapes of 1..:data:`MAX_SIDE` px, ``image_size`` a grid of at most :data:`MAX_GRID_VALUES`
    values, and ``bands_bytes`` between what the layout's smallest and largest members hold (the loader
    never decompresses more than ``bands_bytes``)."""
    layout, grid, blob_bytes = index.get("band_layout"), index.get("image_size"), index.get("bands_bytes")
    if not isinstance(layout, list) or not layout or not all(isinstance(e, Mapping) for e in layout):
        raise ValueError(f"{where}: band_layout is not a list of bands")
    smallest = largest = 0
    names = []
    for entry in layout:
        name = entry.get("band")
        try:
            itemsize = np.dtype(str(entry.get("dtype"))).itemsize
            shapes = band_shapes(entry)
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{where}: band_layout entry {str(dict(entry))[:120]} has no usable dtype or shape") \
                from None
        if not isinstance(name, str) or np.dtype(str(entry["dtype"])).kind not in "biuf" or not shapes or not all(
                isinstance(shape, list) and len(shape) == 2 and all(_side(v) for v in shape) for shape in shapes):
            raise ValueError(f"{where}: band_layout entry {str(dict(entry))[:120]} is not a named numeric 2-D band "
                             f"of 1..{MAX_SIDE} px")
        sizes = [shape[0] * shape[1] * itemsize for shape in shapes]
        smallest, largest = smallest + min(sizes), largest + max(sizes)
        names.append(name)
    if index.get("bands") is not None and list(index["bands"]) != names:
        raise ValueError(f"{where}: bands {index['bands']} disagree with the band_layout's bands {names}")
    if not (isinstance(grid, list) and len(grid) == 2 and all(_side(v) for v in grid)
            and len(layout) * grid[0] * grid[1] <= MAX_GRID_VALUES):
        raise ValueError(f"{where}: image_size {str(grid)[:60]} is not a grid of 1..{MAX_SIDE} px with at most "
                         f"{MAX_GRID_VALUES:,} values over the {len(layout)} bands")
    header_room = 64 * 1024 + 1024 * len(layout)  # the safetensors header: names, dtypes, shapes, offsets
    if isinstance(blob_bytes, bool) or not isinstance(blob_bytes, int) \
            or not smallest <= blob_bytes <= largest + header_room:
        raise ValueError(f"{where}: bands_bytes {str(blob_bytes)[:40]} does not fit the band_layout (its members hold "
                         f"{smallest:,} to {largest + header_room:,} bytes); rewrite the shards with `wfa shards`")


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIDE


def decode_bands(data: bytes, layout: Sequence[Mapping[str, Any]], grid: Sequence[int], resample: str,
                 blob_bytes: int) -> np.ndarray:
    """A member written by :func:`encode_bands` -> float32 ``C x H x W`` (``grid``) in the layout's band order.

    ``blob_bytes`` is the index's largest uncompressed member: decompression stops there and never
    allocates more. Raises ``ValueError`` naming the band when the member does not match ``layout``
    (each band's dtype, and a shape among :func:`band_shapes`); safetensors holds only raw arrays:
    decoding never runs code from the file.
    """
    import pyarrow as pa
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        blob = pa.CompressedInputStream(pa.BufferReader(data), COMPRESSION).read(blob_bytes + 1)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"the {BANDS_MEMBER} member does not decompress: {error}") from error
    if len(blob) > blob_bytes:
        raise ValueError(f"the {BANDS_MEMBER} member decompresses to more than the index's {blob_bytes} bytes")
    try:
        stored = load(blob)
    except (SafetensorError, ValueError) as error:
        raise ValueError(f"the {BANDS_MEMBER} member is not a safetensors blob ({error})") from error
    arrays = []
    for entry in layout:
        name = entry["band"]
        if name not in stored:
            raise ValueError(f"band {name} missing from the safetensors member (has {sorted(stored)})")
        array = stored[name]
        if list(array.shape) not in band_shapes(entry) or str(array.dtype) != entry["dtype"]:
            raise ValueError(f"band {name} is {array.dtype} {list(array.shape)}, the index says "
                             f"{entry['dtype']} {' or '.join(map(str, band_shapes(entry)))}")
        arrays.append(array)
    return to_grid(arrays, grid, resample)


def check_version(index: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming the writer version when this wfa cannot read the shards."""
    version = str(index.get("writer_version", "1.0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = -1
    if major not in READABLE_MAJOR_VERSIONS:
        raise ValueError(f"{where}: shards written by wfa writer version {version}; this wfa reads writer versions "
                         f"{', '.join(f'{m}.x' for m in READABLE_MAJOR_VERSIONS)} (upgrade wfa, or rewrite the "
                         f"shards with this wfa's `wfa shards`)")
