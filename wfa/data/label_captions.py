"""Template captions from BigEarthNet CORINE land-cover labels, for patches without text.

BigEarthNet v2.0 (reBEN) uses the 19-class nomenclature of Sumbul et al. (2021), "BigEarthNet-MM:
a large-scale multi-modal multi-label benchmark archive". BigEarthNet v1 patches carry the 43
original CORINE Land Cover level-3 names; ``V1_TO_V2`` maps each of them to its 19-class name, or to
``None`` for the 11 classes the 19-class nomenclature drops (they are hard to recognise at 10 m).
The mapping is the official ``label_conversion`` table of BigEarthNet-19 (as also used by
``bigearthnet_common``), written out here by name.

``label_captions(labels, k, seed)`` turns a label set into ``k`` deliberately varied captions:
different sentence templates, label orderings and synonyms, joined naturally ("a, b and c").
It is deterministic for a given ``seed``; readers use ``stable_seed(patch_id)`` so that a patch
always gets the same captions on every machine and run.
"""
from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

V2_LABELS: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

V1_TO_V2: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}

# Plain-English phrases per 19-class label; the first is the closest to the official name.
_PHRASES: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("urban fabric", "built-up residential areas", "houses and settlements"),
    "Industrial or commercial units": (
        "industrial or commercial units",
        "industrial and commercial buildings",
        "factories and commercial sites",
    ),
    "Arable land": ("arable land", "cropland", "cultivated fields"),
    "Permanent crops": ("permanent crops", "orchards and vineyards", "plantations of permanent crops"),
    "Pastures": ("pastures", "grazing meadows", "pasture land"),
    "Complex cultivation patterns": (
        "complex cultivation patterns",
        "a patchwork of small fields",
        "mixed small-scale farmland",
    ),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "agricultural land with natural vegetation",
        "farmland interspersed with natural vegetation",
        "fields mixed with patches of natural vegetation",
    ),
    "Agro-forestry areas": ("agro-forestry areas", "farmland with scattered trees", "wooded pastures"),
    "Broad-leaved forest": ("broad-leaved forest", "deciduous forest", "broadleaf woodland"),
    "Coniferous forest": ("coniferous forest", "pine and spruce forest", "needle-leaved woodland"),
    "Mixed forest": ("mixed forest", "mixed woodland", "forest of conifers and broadleaf trees"),
    "Natural grassland and sparsely vegetated areas": (
        "natural grassland and sparsely vegetated areas",
        "natural grassland",
        "sparse natural vegetation",
    ),
    "Moors, heathland and sclerophyllous vegetation": (
        "moors, heathland and sclerophyllous vegetation",
        "heathland and moors",
        "scrubby heath vegetation",
    ),
    "Transitional woodland, shrub": ("transitional woodland and shrub", "shrubland", "young woodland and scrub"),
    "Beaches, dunes, sands": ("beaches, dunes and sands", "sandy beaches and dunes", "bare sand"),
    "Inland wetlands": ("inland wetlands", "marshes and peat bogs", "freshwater wetlands"),
    "Coastal wetlands": ("coastal wetlands", "salt marshes", "coastal marshland"),
    "Inland waters": ("inland waters", "rivers and lakes", "inland water bodies"),
    "Marine waters": ("marine waters", "the sea", "coastal sea water"),
}

_TEMPLATES: tuple[str, ...] = (
    "A satellite image of {labels}.",
    "An aerial view showing {labels}.",
    "This Sentinel scene contains {labels}.",
    "Land cover here consists of {labels}.",
    "A remote sensing patch with {labels}.",
    "{Labels} seen from space.",
    "The area is covered by {labels}.",
    "An overhead image where {labels} can be seen.",
    "A landscape of {labels}, seen from orbit.",
    "Earth observation image showing {labels}.",
)


def stable_seed(text: str) -> int:
    """A seed derived from ``text`` that is the same on every run and machine (CRC32)."""
    return zlib.crc32(text.encode("utf-8"))


def to_v2_labels(labels: Sequence[str]) -> list[str]:
    """Map label names to the 19-class nomenclature, in nomenclature order, without duplicates.

    Accepts 19-class names (kept) and v1 43-class names (mapped; the 11 dropped classes vanish).
    Raises ``ValueError`` naming an unknown label.
    """
    mapped: set[str] = set()
    for label in labels:
        if label in _PHRASES:
            mapped.add(label)
        elif label in V1_TO_V2:
            target = V1_TO_V2[label]
            if target is not None:
                mapped.add(target)
        else:
            raise ValueError(
                f"unknown BigEarthNet label {label!r}: expected one of the 19 v2 class names or the 43 v1 names"
            )
    return [name for name in V2_LABELS if name in mapped]


def _join(phrases: Sequence[str], rng: random.Random) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return phrases[0] + rng.choice((" and ", " together with ", " as well as ")) + phrases[1]
    return ", ".join(phrases[:-1]) + rng.choice((" and ", ", and ")) + phrases[-1]


def _one_caption(labels: Sequence[str], rng: random.Random, template: str) -> str:
    order = list(labels)
    rng.shuffle(order)
    text = _join([rng.choice(_PHRASES[label]) for label in order], rng)
    return template.replace("{Labels}", text[0].upper() + text[1:]).replace("{labels}", text)


def label_captions(labels: Sequence[str], k: int = 5, seed: int = 0) -> list[str]:
    """Return ``k`` varied template captions describing a patch's land-cover ``labels``.

    ``labels`` are 19-class or v1 43-class names (mapped with ``to_v2_labels``). Each caption uses
    a different template (cycling through all templates before any repeats), a shuffled label
    order and randomly chosen synonyms; captions are distinct whenever the variation allows.
    Deterministic for a given ``seed``. Raises ``ValueError`` when no label maps to the
    19-class nomenclature (nothing to describe) or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    v2 = to_v2_labels(labels)
    if not v2:
        raise ValueError(f"no label of {list(labels)!r} belongs to the 19-class nomenclature: nothing to caption")
    rng = random.Random(seed)
    templates = list(_TEMPLATES)
    rng.shuffle(templates)
    captions: list[str] = []
    for i in range(k):
        template = templates[i % len(templates)]
        caption = _one_caption(v2, rng, template)
        for _ in range(8):  # re-draw synonyms/order a few times to avoid an exact repeat
            if caption not in captions:
                break
            caption = _one_caption(v2, rng, template)
        captions.append(caption)
    return captions
