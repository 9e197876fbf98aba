"""Synthetic aerial-like scenes with redundant captions: the embedded default dataset (no download).

Every image is drawn procedurally with numpy from a per-image random generator seeded by
``(seed, index)``, so any image can be produced on its own (workers can split the work) and the
same seed always gives the same pixels and captions. A scene is first painted as a *material map*
(water, grass, asphalt, roof, sand, ...) plus a shading field; RGB pixels come from each
material's colour, multispectral pixels (12 Sentinel-2-like bands, BigEarthNet order) from each
material's spectral signature, both with a little noise.

Ten scene classes, each with a dominant colour and layout (so a tiny model learns them in a few
CPU minutes), carry instance attributes -- how many buildings, whether a road is present, where
the water is, the colour tone, the orientation of stripes -- that the captions mention, so
text-to-image retrieval has signal beyond the class. Captions are paraphrases from several
templates, and, like UCM-Captions, some images get exact repeats and case/space variants of a
caption.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from wfa.data.readers import ReaderArg, register_reader
from wfa.data.sample import Sample
from wfa.data.shard_format import S2_BANDS

CLASSES: tuple[str, ...] = (
    "farmland", "forest", "lake", "beach", "desert",
    "residential", "industrial", "highway", "parking lot", "golf course",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")

# name: (RGB colour, Sentinel-2 surface reflectance in S2_BANDS order)
_MATERIALS: dict[str, tuple[tuple[int, int, int], tuple[float, ...]]] = {
    "water": ((28, 72, 140), (.08, .07, .06, .04, .03, .02, .02, .015, .012, .01, .005, .003)),
    "sea": ((18, 96, 158), (.09, .08, .07, .035, .025, .02, .018, .014, .012, .01, .005, .003)),
    "foam": ((236, 242, 248), (.40, .42, .43, .42, .38, .30, .26, .22, .20, .18, .05, .03)),
    "forest": ((28, 72, 34), (.03, .03, .05, .03, .08, .25, .30, .32, .33, .33, .16, .07)),
    "grass": ((96, 152, 66), (.04, .04, .08, .05, .12, .30, .36, .38, .39, .38, .22, .11)),
    "fairway": ((128, 196, 92), (.04, .05, .10, .05, .14, .36, .44, .47, .48, .47, .23, .10)),
    "crop_green": ((66, 138, 44), (.04, .04, .09, .05, .13, .35, .42, .45, .46, .45, .22, .10)),
    "crop_yellow": ((206, 184, 82), (.08, .09, .13, .16, .20, .24, .26, .28, .29, .28, .32, .22)),
    "soil": ((138, 98, 60), (.10, .11, .14, .18, .21, .23, .25, .26, .27, .27, .33, .28)),
    "sand": ((226, 206, 150), (.18, .20, .26, .32, .35, .37, .39, .40, .41, .41, .45, .38)),
    "sand_white": ((240, 234, 214), (.28, .31, .35, .38, .40, .41, .42, .43, .43, .43, .44, .36)),
    "dune_pale": ((222, 190, 140), (.16, .18, .23, .30, .34, .37, .39, .41, .42, .42, .50, .44)),
    "dune_orange": ((206, 128, 62), (.10, .11, .15, .27, .32, .35, .37, .39, .40, .40, .52, .46)),
    "asphalt": ((66, 66, 72), (.08, .08, .09, .10, .10, .11, .11, .12, .12, .12, .13, .12)),
    "concrete": ((172, 170, 164), (.22, .24, .27, .29, .30, .31, .32, .32, .33, .33, .36, .32)),
    "paint": ((250, 250, 250), (.55, .58, .60, .61, .61, .61, .62, .62, .62, .62, .58, .52)),
    "roof_red": ((176, 60, 48), (.08, .08, .09, .22, .25, .27, .28, .29, .30, .30, .35, .30)),
    "roof_grey": ((120, 122, 128), (.14, .15, .16, .17, .18, .18, .19, .19, .19, .19, .21, .19)),
    "roof_white": ((226, 228, 230), (.45, .48, .50, .52, .52, .53, .53, .54, .54, .54, .50, .45)),
    "car_blue": ((40, 70, 190), (.12, .16, .10, .07, .07, .07, .08, .08, .08, .08, .08, .07)),
    "car_yellow": ((230, 200, 40), (.10, .10, .30, .40, .42, .43, .44, .45, .45, .45, .40, .35)),
}
_MATERIAL_NAMES = list(_MATERIALS)
_MAT = {name: i for i, name in enumerate(_MATERIAL_NAMES)}
_RGB = np.array([_MATERIALS[m][0] for m in _MATERIAL_NAMES], dtype=np.float32)
_SPECTRA = np.array([_MATERIALS[m][1] for m in _MATERIAL_NAMES], dtype=np.float32) * 10000.0

_SIDES = ("north", "south", "east", "west")
_SIDE_CENTRE = {"north": (0.5, 0.0), "south": (0.5, 1.0), "east": (1.0, 0.5), "west": (0.0, 0.5), "centre": (0.5, 0.5)}
_ORIENT_PHRASES = {
    "horizontal": ["running east to west", "in horizontal strips"],
    "vertical": ["running north to south", "in vertical strips"],
    "diagonal": ["running diagonally", "in diagonal strips"],
}


class _Canvas:
    """A material map plus a relative shading field on the unit square (x to the east, y to the south)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(grid, grid, indexing="ij")
        self.mat = np.zeros((size, size), dtype=np.int16)
        self.shade = np.zeros((size, size), dtype=np.float32)

    def fill(self, material: str, mask: np.ndarray | None = None) -> None:
        if mask is None:
            self.mat[:] = _MAT[material]
        else:
            self.mat[mask] = _MAT[material]

    def noise(self, cells: int) -> np.ndarray:
        """Smooth noise of unit scale: a (cells+1)^2 Gaussian grid bilinearly upsampled."""
        grid = self.rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        t = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size * cells
        i0 = np.minimum(t.astype(np.int64), cells - 1)
        f = t - i0
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
        return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]

    def texture(self, amount: float, cells: int, mask: np.ndarray | None = None) -> None:
        field = amount * self.noise(cells)
        if mask is None:
            self.shade += field
        else:
            self.shade[mask] += field[mask]

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)

    def disc(self, cx: float, cy: float, r: float, roughness: float = 0.0) -> np.ndarray:
        d = np.hypot(self.x - cx, self.y - cy)
        if roughness:
            d = d * (1 + roughness * self.noise(4))
        return d < r

    def line(self, p0: tuple[float, float], p1: tuple[float, float], width: float) -> np.ndarray:
        """Pixels within ``width / 2`` of the segment p0-p1."""
        (ax, ay), (bx, by) = p0, p1
        dx, dy = bx - ax, by - ay
        t = np.clip(((self.x - ax) * dx + (self.y - ay) * dy) / (dx * dx + dy * dy), 0, 1)
        return np.hypot(self.x - (ax + t * dx), self.y - (ay + t * dy)) < max(width / 2, 0.5 / self.size)

    def coordinate(self, orientation: str) -> np.ndarray:
        """The coordinate across stripes of the given orientation, in [0, 1]."""
        if orientation == "horizontal":
            return self.y
        if orientation == "vertical":
            return self.x
        return (self.x + self.y) / 2

    def side_mask(self, side: str, depth: float, wobble: float = 0.0) -> np.ndarray:
        """The band of the image within ``depth`` of one edge, with an optionally wavy border."""
        along = self.x if side in ("north", "south") else self.y
        across = {"north": self.y, "south": 1 - self.y, "west": self.x, "east": 1 - self.x}[side]
        return across < depth + wobble * np.sin(2 * np.pi * (along * 1.5 + self.rng.uniform()))


def _road_through(c: _Canvas, rng: np.random.Generator, width: float, material: str = "asphalt") -> str:
    """Draw a straight road across the image; returns its orientation."""
    orientation = str(rng.choice(["horizontal", "vertical", "diagonal"]))
    p = rng.uniform(0.3, 0.7)
    ends = {"horizontal": ((0.0, p), (1.0, p)), "vertical": ((p, 0.0), (p, 1.0)),
            "diagonal": ((0.0, p - 0.3), (1.0, p + 0.3))}[orientation]
    c.fill(material, c.line(*ends, width))
    return orientation


def _houses(c: _Canvas, rng: np.random.Generator, count: int, region: np.ndarray, roofs: list[str],
            size: tuple[float, float] = (0.05, 0.09)) -> int:
    """Place up to ``count`` small rectangular buildings whose centre lies in ``region``; returns how many."""
    ys, xs = np.nonzero(region)
    placed = 0
    if len(ys) == 0:
        return 0
    for _ in range(count):
        k = rng.integers(len(ys))
        cx, cy = (xs[k] + 0.5) / c.size, (ys[k] + 0.5) / c.size
        w, h = rng.uniform(*size, 2)
        c.fill(str(rng.choice(roofs)), c.rect(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        placed += 1
    return placed


Facts = list[list[str]]  # each fact: alternative noun phrases that say the same thing


def _farmland(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    orientation = str(rng.choice(list(_ORIENT_PHRASES)))
    tone = str(rng.choice(["green", "yellow", "brown", "mixed"]))
    materials = {"green": ["crop_green", "grass"], "yellow": ["crop_yellow"], "brown": ["soil"],
                 "mixed": ["crop_green", "crop_yellow", "soil"]}[tone]
    u = c.coordinate(orientation)
    edges = np.cumsum(rng.uniform(0.08, 0.16, 16))
    stripe = np.searchsorted(edges, u)
    for s in range(len(edges) + 1):
        mask = stripe == s
        c.fill(materials[s % len(materials)] if tone == "mixed" else str(rng.choice(materials)), mask)
        c.shade[mask] += rng.uniform(-0.12, 0.12)
    c.shade += 0.06 * np.sin(2 * np.pi * u * c.size / 3)  # crop rows
    road = bool(rng.random() < 0.5)
    if road:
        _road_through(c, rng, 0.05, "soil" if tone != "brown" else "asphalt")
    houses = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
    _houses(c, rng, houses, c.rect(0.1, 0.1, 0.9, 0.9), ["roof_red", "roof_grey"], (0.04, 0.07))
    facts = [{"green": ["green fields", "green crops"], "yellow": ["yellow fields", "ripe yellow crops"],
              "brown": ["bare brown fields", "brown ploughed soil"],
              "mixed": ["fields of different colours", "green, yellow and brown fields"]}[tone],
             ["fields " + p for p in _ORIENT_PHRASES[orientation]]]
    if road:
        facts.append(["a dirt road", "a track crossing the fields"])
    if houses:
        facts.append(["a few farmhouses", "some small houses"])
    return {"tone": tone, "orientation": orientation, "road": road, "buildings": houses}, facts


def _forest(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    dense = bool(rng.random() < 0.6)
    if dense:
        c.fill("forest")
    else:
        c.fill("grass")
        c.texture(0.08, 4)
        for _ in range(int(rng.integers(14, 24))):
            c.fill("forest", c.disc(rng.uniform(), rng.uniform(), rng.uniform(0.05, 0.1)))
    c.texture(0.25, max(4, c.size // 4), c.mat == _MAT["forest"])
    pond = str(rng.choice(_SIDES)) if rng.random() < 0.35 else None
    if pond:
        cx, cy = _SIDE_CENTRE[pond]
        c.fill("water", c.disc(0.5 + (cx - 0.5) * 0.6, 0.5 + (cy - 0.5) * 0.6, 0.13, 0.3))
    road = bool(rng.random() < 0.4)
    if road:
        _road_through(c, rng, 0.04, "soil")
    facts = [["dense trees", "a dense green canopy", "thick woods"] if dense
             else ["scattered trees on grassland", "sparse trees", "patches of trees"]]
    if pond:
        facts.append([f"a small pond in the {pond}", f"a pond on the {pond} side"])
    if road:
        facts.append(["a path through the trees", "a dirt road"])
    return {"dense": dense, "water": pond, "road": road}, facts


def _lake(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    shore = str(rng.choice(["grass", "forest"]))
    c.fill(shore)
    c.texture(0.12 if shore == "grass" else 0.25, 6)
    side = str(rng.choice(list(_SIDE_CENTRE)))
    cx, cy = _SIDE_CENTRE[side]
    c.fill("water", c.disc(cx, cy, 0.55 if side != "centre" else 0.35, 0.25))
    c.texture(0.05, 8, c.mat == _MAT["water"])
    houses = int(rng.integers(2, 5)) if rng.random() < 0.4 else 0
    _houses(c, rng, houses, c.mat != _MAT["water"], ["roof_red", "roof_white"], (0.05, 0.08))
    road = bool(rng.random() < 0.4)
    if road:
        land = {"north": "south", "south": "north", "east": "west", "west": "east", "centre": "south"}[side]
        p = 0.85
        ends = {"south": ((0, p), (1, p)), "north": ((0, 1 - p), (1, 1 - p)),
                "west": ((1 - p, 0), (1 - p, 1)), "east": ((p, 0), (p, 1))}[land]
        c.fill("asphalt", c.line(*ends, 0.05))
    where = "in the middle" if side == "centre" else f"in the {side}"
    facts = [[f"water {where}", f"blue water {where}", f"a large pond {where}"],
             ["green meadows around it", "grass on the shore"] if shore == "grass"
             else ["trees around the shore", "a forest around the water"]]
    if houses:
        facts.append(["a few houses near the water", "some buildings on the shore"])
    if road:
        facts.append(["a road along the shore", "a road"])
    return {"water": side, "shore": shore, "buildings": houses, "road": road}, facts


def _beach(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    side = str(rng.choice(_SIDES))
    white = bool(rng.random() < 0.5)
    c.fill("grass")
    c.texture(0.1, 5)
    c.fill("sand_white" if white else "sand", c.side_mask(side, 0.7, 0.03))
    c.fill("foam", c.side_mask(side, 0.47, 0.02))
    c.fill("sea", c.side_mask(side, 0.44, 0.02))
    c.texture(0.06, 6, c.mat == _MAT["sea"])
    buildings = str(rng.choice(["none", "few", "many"]))
    count = {"none": 0, "few": 3, "many": 10}[buildings]
    land = {"north": "south", "south": "north", "east": "west", "west": "east"}[side]
    _houses(c, rng, count, c.side_mask(land, 0.25), ["roof_red", "roof_white"], (0.05, 0.08))
    facts = [[f"the sea in the {side}", f"blue sea on the {side} side", f"water to the {side}"],
             ["a white sandy beach", "white sand"] if white else ["a yellow sandy beach", "yellow sand"],
             ["waves breaking on the shore", "a line of white surf"]]
    if count:
        facts.append(["a few houses behind the beach", "some buildings"] if buildings == "few"
                     else ["many buildings behind the beach", "lots of houses"])
    return {"water": side, "sand": "white" if white else "yellow", "buildings": count}, facts


def _desert(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    orange = bool(rng.random() < 0.5)
    c.fill("dune_orange" if orange else "dune_pale")
    orientation = str(rng.choice(list(_ORIENT_PHRASES)))
    u = c.coordinate(orientation) + 0.03 * c.noise(3)
    c.shade += 0.18 * np.sin(2 * np.pi * u * rng.uniform(5, 8)) + 0.05 * c.noise(8)
    road = bool(rng.random() < 0.4)
    if road:
        _road_through(c, rng, 0.035)
    facts = [["orange sand dunes", "reddish sand"] if orange else ["pale sand dunes", "light desert sand"],
             ["ridges " + p for p in _ORIENT_PHRASES[orientation]]]
    if road:
        facts.append(["a road across the sand", "a straight road"])
    return {"tone": "orange" if orange else "pale", "orientation": orientation, "road": road}, facts


def _residential(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    dense = bool(rng.random() < 0.5)
    roofs = str(rng.choice(["red", "grey", "mixed"]))
    roof_mats = {"red": ["roof_red"], "grey": ["roof_grey"], "mixed": ["roof_red", "roof_grey", "roof_white"]}[roofs]
    c.fill("grass")
    c.texture(0.1, 6)
    spacing = rng.uniform(0.3, 0.4)
    offset = rng.uniform(0, spacing)
    for k in range(4):
        p = offset + k * spacing
        c.fill("asphalt", c.line((0, p), (1, p), 0.045))
        c.fill("asphalt", c.line((p, 0), (p, 1), 0.045))
    road = c.mat == _MAT["asphalt"]
    lots = ~road & ~np.roll(road, 3, 0) & ~np.roll(road, -3, 0) & ~np.roll(road, 3, 1) & ~np.roll(road, -3, 1)
    count = 26 if dense else 7
    placed = _houses(c, rng, count, lots, roof_mats, (0.06, 0.09))
    trees = bool(rng.random() < 0.5)
    if trees:
        for _ in range(5):
            c.fill("forest", c.disc(rng.uniform(), rng.uniform(), 0.035) & ~road)
    facts = [["many houses", "densely packed buildings", "lots of buildings"] if dense
             else ["a few houses", "sparse houses", "some scattered buildings"],
             {"red": ["red roofs", "houses with red roofs"], "grey": ["grey roofs", "houses with grey roofs"],
              "mixed": ["roofs of different colours", "red, grey and white roofs"]}[roofs],
             ["a grid of roads", "streets crossing each other"]]
    if trees:
        facts.append(["some green trees", "a few trees"])
    return {"buildings": placed, "dense": dense, "roofs": roofs, "trees": trees, "road": True}, facts


def _industrial(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    c.fill("concrete")
    c.texture(0.08, 5)
    white = bool(rng.random() < 0.5)
    many = bool(rng.random() < 0.5)
    count = int(rng.integers(6, 10)) if many else int(rng.integers(1, 3))
    size = (0.12, 0.22) if many else (0.3, 0.45)
    _houses(c, rng, count, c.rect(0.15, 0.15, 0.85, 0.85), ["roof_white" if white else "roof_grey"], size)
    road = bool(rng.random() < 0.6)
    if road:
        _road_through(c, rng, 0.06)
    facts = [["many large buildings", "several warehouses", "lots of factory buildings"] if many
             else ["one or two huge buildings", "a few very large warehouses"],
             ["white roofs", "buildings with white roofs"] if white else ["grey roofs", "buildings with grey roofs"],
             ["grey concrete ground", "paved ground"]]
    if road:
        facts.append(["a road", "a wide road passing by"])
    return {"buildings": count, "roofs": "white" if white else "grey", "road": road}, facts


def _highway(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    green = bool(rng.random() < 0.5)
    c.fill("grass" if green else "soil")
    c.texture(0.12, 6)
    orientation = str(rng.choice(list(_ORIENT_PHRASES)))
    u = c.coordinate(orientation)
    centre = rng.uniform(0.4, 0.6)
    c.fill("asphalt", np.abs(u - centre) < 0.14)
    along = {"horizontal": c.x, "vertical": c.y, "diagonal": c.x - c.y}[orientation]
    c.fill("paint", (np.abs(u - centre) < 0.006 + 0.5 / c.size) & (np.sin(2 * np.pi * along * 6) > 0.2))
    many = bool(rng.random() < 0.5)
    lane = np.abs(u - centre) < 0.11
    _houses(c, rng, 14 if many else 3, lane & (np.abs(u - centre) > 0.03),
            ["car_blue", "car_yellow", "roof_red", "roof_white"], (0.03, 0.05))
    facts = [["a wide highway", "a multi-lane road", "a motorway"],
             ["lanes " + p for p in _ORIENT_PHRASES[orientation]],
             ["green fields beside it", "grass on both sides"] if green
             else ["bare brown land beside it", "brown soil on both sides"],
             ["many cars", "heavy traffic"] if many else ["a few cars", "light traffic"]]
    attributes = {"orientation": orientation, "background": "green" if green else "brown",
                  "cars": "many" if many else "few"}
    return attributes, facts


def _parking(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    c.fill("asphalt")
    c.texture(0.05, 6)
    orientation = str(rng.choice(["horizontal", "vertical"]))
    u = c.coordinate(orientation)
    v = c.coordinate("vertical" if orientation == "horizontal" else "horizontal")
    row = np.floor(u * 4)
    c.fill("paint", (np.abs(u * 4 - row - 0.5) < 0.45) & (np.abs((v * 12) % 1 - 0.5) > 0.45))
    many = bool(rng.random() < 0.5)
    occupancy = 0.8 if many else 0.25
    colours = ["car_blue", "car_yellow", "roof_red", "roof_white", "roof_grey"]
    for r in range(4):
        for s in range(12):
            if rng.random() < occupancy:
                lo_u, lo_v = (r + 0.1) / 4, (s + 0.15) / 12
                if orientation == "horizontal":
                    box = c.rect(lo_v, lo_u, lo_v + 0.7 / 12, lo_u + 0.3 / 4)
                else:
                    box = c.rect(lo_u, lo_v, lo_u + 0.3 / 4, lo_v + 0.7 / 12)
                c.fill(str(rng.choice(colours)), box)
    trees = bool(rng.random() < 0.5)
    if trees:
        edge = str(rng.choice(_SIDES))
        c.fill("forest", c.side_mask(edge, 0.1, 0.02))
    facts = [["many cars parked in rows", "a full car park", "lots of parked cars"] if many
             else ["a few parked cars", "mostly empty spaces", "some cars"],
             ["rows " + p for p in _ORIENT_PHRASES[orientation]]]
    if trees:
        facts.append([f"trees along the {edge} edge", f"a line of trees in the {edge}"])
    return {"cars": "many" if many else "few", "orientation": orientation, "trees": edge if trees else None}, facts


def _golf(c: _Canvas, rng: np.random.Generator) -> tuple[dict, Facts]:
    c.fill("grass")
    c.texture(0.1, 5)
    start, end = (rng.uniform(0.1, 0.3), rng.uniform(0.2, 0.8)), (rng.uniform(0.7, 0.9), rng.uniform(0.2, 0.8))
    c.fill("fairway", c.line(start, end, 0.3))
    c.shade[c.mat == _MAT["fairway"]] += 0.06 * np.sin(2 * np.pi * c.x * 10)[c.mat == _MAT["fairway"]]
    bunkers = int(rng.integers(1, 3)) if rng.random() < 0.5 else int(rng.integers(4, 7))
    for _ in range(bunkers):
        c.fill("sand_white", c.disc(rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.06), 0.2))
    pond = str(rng.choice(_SIDES)) if rng.random() < 0.5 else None
    if pond:
        cx, cy = _SIDE_CENTRE[pond]
        c.fill("water", c.disc(0.5 + (cx - 0.5) * 0.7, 0.5 + (cy - 0.5) * 0.7, 0.14, 0.3))
    trees = int(rng.integers(3, 9))
    for _ in range(trees):
        c.fill("forest", c.disc(rng.uniform(), rng.uniform(), 0.04))
    facts = [["smooth green lawns", "a bright green fairway"],
             ["a few sand bunkers", "one or two bunkers"] if bunkers < 4
             else ["many sand bunkers", "lots of white bunkers"]]
    if pond:
        facts.append([f"a pond in the {pond}", f"a water hazard on the {pond} side"])
    facts.append(["some trees", "scattered trees"])
    return {"bunkers": bunkers, "water": pond}, facts


_SCENES: dict[str, Callable[[_Canvas, np.random.Generator], tuple[dict, Facts]]] = {
    "farmland": _farmland, "forest": _forest, "lake": _lake, "beach": _beach, "desert": _desert,
    "residential": _residential, "industrial": _industrial, "highway": _highway,
    "parking lot": _parking, "golf course": _golf,
}
_SUBJECTS: dict[str, list[str]] = {
    "farmland": ["farmland", "a piece of farmland", "an agricultural area", "cultivated land"],
    "forest": ["a forest", "a wooded area", "a piece of woodland"],
    "lake": ["a lake", "a lakeside area", "a lake landscape"],
    "beach": ["a beach", "a coastline", "a seaside beach"],
    "desert": ["a desert", "a sandy desert", "an arid area"],
    "residential": ["a residential area", "a neighbourhood", "a housing area"],
    "industrial": ["an industrial area", "an industrial zone", "a factory site"],
    "highway": ["a highway", "a freeway section", "a road scene"],
    "parking lot": ["a parking lot", "a car park", "a parking area"],
    "golf course": ["a golf course", "a golf field", "a golf club course"],
}
# (template, number of facts it names)
_TEMPLATES: list[tuple[str, int]] = [
    ("This is {s}.", 0), ("It is {s}.", 0),
    ("{S} with {a}.", 1), ("There is {s} with {a}.", 1), ("We can see {s} with {a}.", 1),
    ("{S} with {a} and {b}.", 2), ("There is {s} with {a} and {b}.", 2),
    ("An aerial image of {s} with {a} and {b}.", 2), ("{S} with {a}, {b} and {c}.", 3),
]
_TEMPLATE_WEIGHTS = np.array([0.5, 0.5, 1.0, 1.0, 1.0, 1.5, 1.5, 1.0, 1.0])


def _captions(rng: np.random.Generator, scene: str, facts: Facts, k: int) -> list[str]:
    """K captions from the facts: paraphrases, plus UCM-like exact repeats and case/space variants."""
    usable = [i for i, (_, n) in enumerate(_TEMPLATES) if n <= len(facts)]
    weights = _TEMPLATE_WEIGHTS[usable] / _TEMPLATE_WEIGHTS[usable].sum()
    out = []
    for _ in range(k):
        template, n = _TEMPLATES[usable[rng.choice(len(usable), p=weights)]]
        chosen = sorted(rng.choice(len(facts), size=n, replace=False)) if n else []
        parts = [str(rng.choice(facts[i])) for i in chosen] + ["", "", ""]
        subject = str(rng.choice(_SUBJECTS[scene]))
        text = template.format(s=subject, S=subject[0].upper() + subject[1:], a=parts[0], b=parts[1], c=parts[2])
        out.append(text)
    if k >= 2 and rng.random() < 0.35:  # an exact repeat
        i, j = rng.choice(k, size=2, replace=False)
        out[j] = out[i]
    if k >= 2 and rng.random() < 0.2:  # a case or whitespace variant of another caption
        i, j = rng.choice(k, size=2, replace=False)
        variant = int(rng.integers(3))
        out[j] = (out[i].lower(), out[i].replace(" ", "  ", 1), out[i].rstrip(".") + " .")[variant]
    return out


@dataclass(frozen=True)
class SyntheticScene:
    """One drawn scene: class, instance attributes and material map (before colouring)."""

    scene: str
    attributes: dict[str, Any]
    facts: Facts
    materials: np.ndarray
    shade: np.ndarray


def draw_scene(seed: int, index: int, image_size: int = 64) -> tuple[SyntheticScene, np.random.Generator]:
    """Draw the scene of image ``index`` for ``seed``; returns it with the generator to continue from."""
    rng = np.random.default_rng([seed, index])
    scene = CLASSES[index % len(CLASSES)]
    canvas = _Canvas(image_size, rng)
    attributes, facts = _SCENES[scene](canvas, rng)
    return SyntheticScene(scene, attributes, facts, canvas.mat, canvas.shade), rng


@register_reader(
    "synthetic",
    ReaderArg("num_images", "images to draw", type=int),
    ReaderArg("seed", "seed: the same seed gives the same data", type=int),
    ReaderArg("image_size", "image side in pixels", type=int),
    ReaderArg("captions_per_image", "captions per image", type=int),
    ReaderArg("multispectral", "12 Sentinel-2-like bands instead of RGB", switch=True),
    help="the embedded synthetic data set (no download)",
)
class SyntheticReader:
    """The embedded synthetic dataset: an iterable of :class:`Sample` (never rejects anything).

    Image ``i`` has class ``CLASSES[i % 10]`` (balanced) and its split comes from a seeded
    permutation of all indices cut by ``splits``. ``sample_at(i)`` draws any single image on its own.
    """

    def __init__(self, num_images: int = 1000, seed: int = 0, image_size: int = 64, multispectral: bool = False,
                 splits: tuple[float, float, float] = (0.8, 0.1, 0.1), captions_per_image: int = 5) -> None:
        if num_images < 1 or image_size < 16 or captions_per_image < 1:
            raise ValueError("need num_images >= 1, image_size >= 16 and captions_per_image >= 1")
        if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
            raise ValueError(f"splits must be three non-negative fractions summing to 1, got {splits}")
        self.num_images = num_images
        self.seed = seed
        self.image_size = image_size
        self.multispectral = multispectral
        self.captions_per_image = captions_per_image
        self.bands: list[str] | None = list(S2_BANDS) if multispectral else None
        order = np.random.default_rng([seed, 2**31]).permutation(num_images)
        n_train = int(round(splits[0] * num_images))
        n_val = int(round(splits[1] * num_images))
        rank = np.empty(num_images, dtype=np.int64)
        rank[order] = np.arange(num_images)
        self._split = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2))
        self.source = {"type": "synthetic", "num_images": num_images, "seed": seed, "image_size": image_size,
                       "multispectral": multispectral, "splits": list(splits), "captions_per_image": captions_per_image,
                       "classes": list(CLASSES)}

    def __len__(self) -> int:
        return self.num_images

    def __iter__(self) -> Iterator[Sample]:
        for index in range(self.num_images):
            yield self.sample_at(index)

    def sample_at(self, index: int) -> Sample:
        """Draw image ``index`` (independently of every other image)."""
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        drawn, rng = draw_scene(self.seed, index, self.image_size)
        captions = _captions(rng, drawn.scene, drawn.facts, self.captions_per_image)
        noise = rng.standard_normal((self.image_size, self.image_size, 3 if not self.multispectral else len(S2_BANDS)),
                                    dtype=np.float32)
        gain = (1.0 + drawn.shade)[..., None]
        if self.multispectral:
            pixels = np.clip(_SPECTRA[drawn.materials] * gain + 40.0 * noise, 0, None)
            image: Image.Image | np.ndarray = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        else:
            pixels = np.clip(np.rint(_RGB[drawn.materials] * gain + 4.0 * noise), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        return Sample(id=f"synthetic-{index:06d}", image=image, captions=captions, split=SPLITS[self._split[index]],
                      labels=[drawn.scene], meta={"scene": drawn.scene, "attributes": drawn.attributes, "index": index},
                      bands=self.bands)
