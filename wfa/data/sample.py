"""The record types every reader yields: a good ``Sample`` or a ``Rejected`` item.

Readers are iterables of ``Sample | Rejected``. A reader never stops on one bad item: it yields
``Rejected(id, reason)`` and the consumer (the shard writer) decides whether to stop with a
``BadItemError`` or to skip the item and log it.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from wfa.data.shard_format import NativeBands


@dataclass
class Sample:
    """One image with its captions.

    ``image`` is an RGB ``PIL.Image.Image``; for multispectral data a numeric ``np.ndarray`` of shape
    (C, H, W) or a ``wfa.data.shard_format.NativeBands`` (each band at its native size, stored
    exactly by the writer), in which case ``bands`` names the C channels in order.
    """

    id: str
    image: Image.Image | np.ndarray | NativeBands
    captions: list[str]
    split: str
    labels: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    bands: list[str] | None = None


@dataclass
class Rejected:
    """An item a reader could not turn into a ``Sample``.

    ``reason`` is a short stable string (e.g. ``"missing image"``), usable as a key when counting
    rejects; ``detail`` says what exactly was wrong (a path, a caption index, a band name).
    """

    id: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.id}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


MAX_CAPTIONS = 1000  # per image: BLEU uniqueness costs K^2 comparisons; real data sets have 1..~30
MAX_CAPTION_CHARS = 10_000  # the text tower reads 77 tokens; longer text is a broken or hostile file
MAX_ID_CHARS = 255  # an id becomes a tar member name and a file-name-like key: longer is a broken or hostile file
# Unicode categories that show nothing: control, format (zero-width space/joiners, BOM), private use, unassigned,
# and the separators. (A lone surrogate is not invisible but invalid: caption_problem calls it so.)
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp"})


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: empty, or only white space and invisible characters such as
    U+200B ZERO WIDTH SPACE, U+200D ZERO WIDTH JOINER or U+FEFF (``str.strip`` keeps those)."""
    return all(unicodedata.category(ch) in _INVISIBLE for ch in text)


def caption_problem(item_id: str, captions: Any) -> Rejected | None:
    """Why ``captions`` cannot be a sample's captions, or ``None``: not a non-empty list of non-empty
    texts, text that is not valid Unicode (a lone surrogate cannot be written as UTF-8), too many captions
    (:data:`MAX_CAPTIONS`) or a caption longer than :data:`MAX_CAPTION_CHARS`."""
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or len(captions) == 0:
        return Rejected(item_id, "no captions", "the caption list is empty")
    if len(captions) > MAX_CAPTIONS:
        return Rejected(item_id, "too many captions", f"{len(captions)} captions, at most {MAX_CAPTIONS}")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            return Rejected(item_id, "invalid caption", f"caption {i} is a {type(caption).__name__}, not text")
        if is_blank(caption):
            what = "is empty" if not caption.strip() else "holds only invisible characters (zero-width, control)"
            return Rejected(item_id, "empty caption", f"caption {i} {what}")
        if len(caption) > MAX_CAPTION_CHARS:
            return Rejected(item_id, "invalid caption", f"caption {i} has {len(caption)} characters, "
                                                        f"at most {MAX_CAPTION_CHARS}")
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError as error:
            return Rejected(item_id, "invalid caption", f"caption {i} is not valid Unicode ({error.reason} at "
                                                        f"character {error.start})")
    return None


class BadItemError(ValueError):
    """Raised by a consumer that refuses to skip a rejected item."""

    def __init__(self, item_id: str, reason: str) -> None:
        self.item_id = item_id
        self.reason = reason
        super().__init__(
            f"bad item {item_id!r}: {reason} (fix or remove the item, or pass --skip-bad to skip "
            "bad items and list them in rejects.jsonl)"
        )
