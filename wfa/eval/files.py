"""Writing a result file so that it is either the old one or the complete new one (no torch, no numpy).

:func:`write_atomic` writes into a temporary file beside the target (created with ``open``, so its mode
follows the umask like any other file the user writes), then renames it over the target: a run that fails
half-way leaves the previous file. The benchmark's reports and its feature cache write through it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary path beside ``path``, then rename it to ``path``; returns ``path``.

    The temporary file keeps ``path``'s suffix (writers that choose a format by suffix still see it) and is
    removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of UTF-8 ``text``."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
