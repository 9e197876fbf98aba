"""The record types every reader yields: a good ``Sample`` or a ``Rejected`` item.

Readers are iterables of ``Sample | Rejected``. A reader never stops on one bad item: it yields
``Rejected(id, reason)`` and the consumer (the shard writer) decides whether to stop with a
``BadItemError`` or to skip the item and log it.
"""
from __future__ import annotations

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


class BadItemError(ValueError):
    """Raised by a consumer that refuses to skip a rejected item."""

    def __init__(self, item_id: str, reason: str) -> None:
        self.item_id = item_id
        self.reason = reason
        super().__init__(
            f"bad item {item_id!r}: {reason} (fix or remove the item, or pass --skip-bad to skip "
            "bad items and list them in rejects.jsonl)"
        )
