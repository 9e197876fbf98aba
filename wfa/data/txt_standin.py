"""A full-size BigEarthNet.txt stand-in: the parquet schema at the real counts, and procedural imagery.

BigEarthNet.txt itself (467 MB of text) and its 60 GB of imagery are not available everywhere, yet
the conversion's cost at full size must be measurable. :func:`write_standin` writes a parquet in
the exact schema (``wfa.data.bigearthnet_txt.COLUMNS``) with the published counts by default:
464,044 patches, 9,604,044 rows -- binary 3.64M, MCQ 3.26M, bounding box 2.24M, captioning one per
patch -- in the splits train / validation / test / bench (bench: 1,082 patches with 15,029 rows).
Ids look like BigEarthNet v2.0's (``S2A_MSIL2A_<date>T<time>_N9999_R<orbit>_T<tile>_<row>_<col>``,
S1 partners ``S1A_IW_GRDH_1SDV_<date>T<time>_<tile>_<row>_<col>``); texts follow the shapes of the
four row types (captions of 30-70 words, yes/no questions with ``<ref>`` tags, lettered options,
``[x1 y1, x2 y2]`` boxes in [0, 1]) and name the 19 CORINE classes of the patch. The rows are
written type by type (all binary rows, then MCQ, ...), not grouped by patch: the harder order for
a reader. The same ``seed`` gives the same file.

:class:`ProceduralImages` supplies imagery for those ids: ``image(patch_id, s1_name)`` returns
``NativeBands`` with S2 uint16 at native 120/60/20 px and S1 float32 dB at 120 px, drawn from a
generator seeded by the ids, so the conversion runs without the real archive. ``scale`` divides
every band's side (scale 10: 12/6/2 px) for runs whose shards would not fit on the disk.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wfa.data.label_captions import V2_LABELS
from wfa.data.shard_format import MODE_BANDS, NATIVE_SIZE, PATCH_SIZE, S2_BANDS, NativeBands

FULL_PATCHES = 464_044
# rows per type at full size; captioning is one row per patch
FULL_ROWS = {"binary": 3_640_000, "mcq": 3_260_000, "bounding box": 2_240_000}
BENCH_PATCHES, BENCH_ROWS = 1_082, 15_029
SPLIT_SHARES = {"train": 0.4956, "validation": 0.2522, "test": 0.2499}  # of the non-bench patches
CATEGORIES = {"binary": "land cover presence", "mcq": "land cover classification",
              "bounding box": "referring expression", "captioning": "image captioning"}
COUNTRIES = ("Austria", "Belgium", "Finland", "Ireland", "Kosovo", "Lithuania", "Luxembourg", "Portugal", "Serbia",
             "Switzerland")
SEASONS = ("Spring", "Summer", "Autumn", "Winter")
CLIMATES = ("Cfb", "Dfb", "Csa", "Csb", "Dfc", "Cfa", "Dfa")
_ROW_GROUP = 250_000
_CHUNK = 20_000  # patches generated at a time
_CLASSES = [name.lower() for name in V2_LABELS]
_REGIONS = ("upper left", "upper right", "lower left", "lower right", "center", "left side", "right side", "top",
            "bottom")
_OPENERS = ("This Sentinel-2 image shows", "The satellite image depicts", "This multispectral patch captures",
            "The image presents", "In this scene we see")
_LINKS = ("a landscape dominated by", "an area mostly covered by", "a region characterised by", "a mosaic of")
_DETAILS = ("Patches of {b} appear in the {r}, separated by narrow boundaries.",
            "Towards the {r}, {b} becomes more visible.",
            "Small areas of {b} are scattered across the {r} of the patch.",
            "The {r} holds {b}, with a sharp transition to the surrounding cover.")
_CLOSERS = ("The overall texture is fairly homogeneous.", "No clouds or shadows obscure the surface.",
            "The scene was acquired in {s} over {c}.", "Field boundaries and tracks are faintly visible.",
            "The colours suggest a {s} acquisition in a {z} climate zone.")


def _tile_products(rng: np.random.Generator, count: int) -> list[tuple[str, str, str]]:
    """(S2 product name, S1 product prefix, tile) triples that look like BigEarthNet v2.0's."""
    products = []
    for n in range(count):
        month, day, hour = 1 + n % 12, 1 + int(rng.integers(0, 28)), int(rng.integers(9, 12))
        tile = f"{int(rng.integers(29, 36))}{'TUVW'[int(rng.integers(0, 4))]}{''.join(rng.choice(list('KLMNPQ'), 2))}"
        date = f"2017{month:02d}{day:02d}"
        minute, orbit = int(rng.integers(0, 60)), int(rng.integers(1, 143))
        s2 = f"S2{'AB'[n % 2]}_MSIL2A_{date}T{hour:02d}{minute:02d}31_N9999_R{orbit:03d}_T{tile}"
        s1 = f"S1{'AB'[n % 2]}_IW_GRDH_1SDV_{date}T{hour + 6:02d}{int(rng.integers(0, 60)):02d}43"
        products.append((s2, s1, tile))
    return products


def _patch_table(num_patches: int, seed: int) -> dict[str, np.ndarray]:
    """Per patch: ids, split, place, labels (as a bit mask over the 19 classes), rows per type."""
    rng = np.random.default_rng([seed, 0])
    products = _tile_products(rng, max(1, num_patches // 3700))
    product = rng.integers(0, len(products), num_patches)
    cells = np.empty(num_patches, dtype=np.int64)  # unique (row, col) cell per product
    for p in range(len(products)):
        members = np.flatnonzero(product == p)
        cells[members] = rng.choice(100 * 100, size=len(members), replace=False)
    patch_ids = np.array([f"{products[p][0]}_{c // 100}_{c % 100}" for p, c in zip(product, cells)])
    s1_names = np.array([f"{products[p][1]}_{products[p][2]}_{c // 100 + 3}_{c % 100 + 1}"
                         for p, c in zip(product, cells)])
    bench = max(1, round(BENCH_PATCHES * num_patches / FULL_PATCHES))
    rest = num_patches - bench
    split_counts = [round(rest * SPLIT_SHARES["train"]), round(rest * SPLIT_SHARES["validation"])]
    split_counts.append(rest - sum(split_counts))
    splits = np.array(["train"] * split_counts[0] + ["validation"] * split_counts[1] + ["test"] * split_counts[2]
                      + ["bench"] * bench)[rng.permutation(num_patches)]
    labels = rng.random((num_patches, len(_CLASSES))) < 0.12
    labels[np.arange(num_patches), rng.integers(0, len(_CLASSES), num_patches)] = True  # at least one class
    return {"patch_id": patch_ids, "s1_name": s1_names, "split": splits, "labels": labels,
            "latitude": 38.0 + 30.0 * rng.random(num_patches), "longitude": -9.0 + 33.0 * rng.random(num_patches),
            "country": rng.integers(0, len(COUNTRIES), num_patches),
            "season": rng.integers(0, len(SEASONS), num_patches),
            "climate": rng.integers(0, len(CLIMATES), num_patches)}


def _rows_per_patch(num_patches: int, splits: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Rows per type per patch, summing to the scaled full-size totals (bench to its own total)."""
    rng = np.random.default_rng([seed, 1])
    scale = num_patches / FULL_PATCHES
    is_bench = splits == "bench"
    bench_rows = round(BENCH_ROWS * is_bench.sum() / BENCH_PATCHES) - int(is_bench.sum())
    total_other = sum(FULL_ROWS.values())
    counts = {}
    for kind, full in FULL_ROWS.items():
        in_bench = round(bench_rows * full / total_other)
        per_kind = np.zeros(num_patches, dtype=np.int64)
        for group, total in ((is_bench, in_bench), (~is_bench, round(full * scale) - in_bench)):
            n = int(group.sum())
            if n:
                per_kind[group] = rng.multinomial(max(total, 0), np.full(n, 1.0 / n))
        counts[kind] = per_kind
    # the bench's rounding remainder goes to its binary rows so that the bench total is exact
    if is_bench.any():
        missing = bench_rows - sum(int(c[is_bench].sum()) for c in counts.values())
        counts["binary"][np.flatnonzero(is_bench)[: abs(missing)]] += int(np.sign(missing))
    counts["captioning"] = np.ones(num_patches, dtype=np.int64)
    return counts


def _texts(kind: str, classes: list[str], rng: np.random.Generator, place: dict[str, str]) -> tuple[str, str]:
    """(input, output) of one row of ``kind`` about a patch showing ``classes``."""
    if kind == "captioning":
        first, others = classes[0], classes[1:]
        body = [f"{_OPENERS[rng.integers(len(_OPENERS))]} {_LINKS[rng.integers(len(_LINKS))]} {first}."]
        for other in others[:3]:
            body.append(_DETAILS[rng.integers(len(_DETAILS))].format(b=other, r=_REGIONS[rng.integers(len(_REGIONS))]))
        for closer in rng.choice(len(_CLOSERS), 2, replace=False):
            body.append(_CLOSERS[closer].format(**place))
        return "<image>Describe this image in detail.", " ".join(body)
    if kind == "binary":
        present = rng.random() < 0.5
        name = classes[rng.integers(len(classes))] if present else _CLASSES[rng.integers(len(_CLASSES))]
        answer = "Yes" if name in classes else "No"
        if rng.random() < 0.5:
            return f"<image>Is there any <ref>{name}</ref> in this image?", answer
        return f"<image>Does the image contain <ref>{name}</ref>?", answer
    if kind == "mcq":
        options = [classes[rng.integers(len(classes))]]
        while len(options) < 4:
            other = _CLASSES[rng.integers(len(_CLASSES))]
            if other not in classes and other not in options:
                options.append(other)
        order = rng.permutation(4)
        letters = "ABCD"
        text = " ".join(f"{letters[i]}) {options[j]}" for i, j in enumerate(order))
        answer = letters[int(np.flatnonzero(order == 0)[0])]
        return f"<image>Which land cover class is present in the image? {text}", f"{answer}) {options[0]}"
    name = classes[rng.integers(len(classes))]
    boxes = []
    for _ in range(1 + int(rng.random() < 0.3)):
        x1, y1 = rng.random(2) * 0.7
        w, h = 0.05 + rng.random(2) * 0.3
        boxes.append(f"[{x1:.2f} {y1:.2f}, {min(x1 + w, 1):.2f} {min(y1 + h, 1):.2f}]")
    return f"<image>Give the bounding box of <ref>the {name}</ref>.", f"<ref>the {name}</ref> " + " ".join(boxes)


def _batches(num_patches: int, seed: int) -> Iterator[dict[str, list[Any]]]:
    """Column batches of the stand-in, type by type, patches in a fixed shuffled order."""
    patches = _patch_table(num_patches, seed)
    counts = _rows_per_patch(num_patches, patches["split"], seed)
    order = np.random.default_rng([seed, 2]).permutation(num_patches)
    next_id = 0
    for kind_no, kind in enumerate(("binary", "mcq", "bounding box", "captioning")):
        for start in range(0, num_patches, _CHUNK):
            rng = np.random.default_rng([seed, 3, kind_no, start])
            columns: dict[str, list[Any]] = {name: [] for name in (
                "ID", "s1_name", "patch_id", "input", "output", "type", "category", "split", "latitude", "longitude",
                "country", "season", "climate_zone")}
            for p in order[start:start + _CHUNK]:
                n = int(counts[kind][p])
                if not n:
                    continue
                classes = [_CLASSES[c] for c in np.flatnonzero(patches["labels"][p])]
                place = {"s": SEASONS[patches["season"][p]].lower(), "c": COUNTRIES[patches["country"][p]],
                         "z": CLIMATES[patches["climate"][p]]}
                for _ in range(n):
                    question, answer = _texts(kind, classes, rng, place)
                    columns["input"].append(question)
                    columns["output"].append(answer)
                columns["ID"].extend(range(next_id, next_id + n))
                next_id += n
                for name, value in (("s1_name", patches["s1_name"][p]), ("patch_id", patches["patch_id"][p]),
                                    ("type", kind), ("category", CATEGORIES[kind]), ("split", patches["split"][p]),
                                    ("latitude", float(patches["latitude"][p])),
                                    ("longitude", float(patches["longitude"][p])),
                                    ("country", COUNTRIES[patches["country"][p]]),
                                    ("season", SEASONS[patches["season"][p]]),
                                    ("climate_zone", CLIMATES[patches["climate"][p]])):
                    columns[name].extend([str(value) if isinstance(value, np.str_) else value] * n)
            yield columns


def write_standin(path: str | os.PathLike, num_patches: int = FULL_PATCHES, seed: int = 0,
                  progress: bool = True) -> dict[str, Any]:
    """Write the stand-in parquet (module docstring) to ``path``; return its row counts.

    ``num_patches`` below the full 464,044 scales every count down in proportion (the bench keeps
    its ~13.9 rows per patch). Written in row groups of 250,000 rows with pyarrow.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from wfa.data.bigearthnet_txt import COLUMNS

    if num_patches < 4:
        raise ValueError(f"num_patches must be at least 4 (one per split), got {num_patches}")
    schema = pa.schema([("ID", pa.int64()), ("s1_name", pa.string()), ("patch_id", pa.string()),
                        ("input", pa.string()), ("output", pa.string()), ("type", pa.string()),
                        ("category", pa.string()), ("split", pa.string()), ("latitude", pa.float64()),
                        ("longitude", pa.float64()), ("country", pa.string()), ("season", pa.string()),
                        ("climate_zone", pa.string())])
    assert tuple(schema.names) == COLUMNS
    rows_by_type: dict[str, int] = {}
    rows_by_split: dict[str, int] = {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="zstd") as sink, \
            tqdm(total=4 * -(-num_patches // _CHUNK), unit="chunk", desc="stand-in parquet",
                 disable=None if progress else True) as bar:
        for columns in _batches(num_patches, seed):
            table = pa.table(columns, schema=schema)
            for kind in set(columns["type"]):
                rows_by_type[kind] = rows_by_type.get(kind, 0) + columns["type"].count(kind)
            for split in set(columns["split"]):
                rows_by_split[split] = rows_by_split.get(split, 0) + columns["split"].count(split)
            sink.write_table(table, row_group_size=_ROW_GROUP)
            bar.update()
    return {"path": str(path), "patches": num_patches, "rows": sum(rows_by_type.values()), "seed": seed,
            "rows_by_type": dict(sorted(rows_by_type.items())), "rows_by_split": dict(sorted(rows_by_split.items()))}


class ProceduralImages:
    """Imagery for stand-in ids: ``image(patch_id, s1_name)`` -> ``NativeBands`` (module docstring).

    S2 bands are uint16 reflectance x 10^4 (a noise texture, subsampled to each band's native size,
    plus a per-band level), S1 ``VV``/``VH`` float32 dB around -12 / -19 dB; each patch's values come
    from a generator seeded by its ids and ``seed``.
    """

    def __init__(self, mode: str = "s1s2", seed: int = 0, scale: int = 1) -> None:
        if mode not in MODE_BANDS:
            raise ValueError(f"mode must be one of {sorted(MODE_BANDS)}, got {mode!r}")
        if scale < 1 or any(size % scale for size in NATIVE_SIZE.values()):
            raise ValueError(f"scale must divide 120, 60 and 20 (1, 2, 4, 5, 10 or 20), got {scale}")
        self.mode, self.seed, self.scale = mode, seed, scale
        self.native = True
        self.bands = list(MODE_BANDS[mode])
        self.source = {"type": "procedural", "mode": mode, "seed": seed, "scale": scale}

    def image(self, patch_id: str, s1_name: str | None = None) -> NativeBands:
        """The bands of one patch (``patch_id`` is the S1 name in mode ``s1``)."""
        key = f"{patch_id}|{s1_name}" if self.mode == "s1s2" else patch_id
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode("utf-8"))])
        side = PATCH_SIZE // self.scale
        # one noise field per sensor, offset per band: cheap enough that the conversion, not the
        # stand-in imagery, dominates a full-size run
        texture = rng.integers(0, 1500, (side, side), dtype=np.uint16)
        backscatter = rng.standard_normal((side, side), dtype=np.float32) * np.float32(3.0)
        arrays: dict[str, np.ndarray] = {}
        for number, band in enumerate(self.bands):
            step = PATCH_SIZE // NATIVE_SIZE[band]
            if band in S2_BANDS:
                arrays[band] = texture[::step, ::step] + np.uint16(400 + 250 * number)
            else:
                arrays[band] = backscatter + np.float32(-12.0 if band == "VV" else -19.0)
        return NativeBands(arrays, PATCH_SIZE // self.scale, "bilinear")
