"""Progress of long data work: a tqdm bar on a terminal, plain log lines everywhere else.

tqdm draws its bar with carriage returns, which a log file, ``nohup`` or a CI console shows as one
ever-growing line (and ``disable=None`` turns the bar off there altogether). :func:`progress` gives a
tqdm bar when stderr is a terminal and otherwise a :class:`LineProgress`, which prints one ordinary
line -- tqdm's own ``format_meter`` text: count, rate, elapsed and remaining time -- at most every
``every_s`` seconds and once at the end, so a 20-minute conversion under ``nohup`` still says how
far it is.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_EVERY_S = 30.0  # seconds between progress lines when stderr is not a terminal


class LineProgress:
    """The part of tqdm's interface the data layer uses (``update``, ``set_postfix``, ``close``, context
    manager), printing a plain line at most every ``every_s`` seconds and when closed."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False,
                 every_s: float = LOG_EVERY_S, file: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.every_s = every_s
        self.file = file
        self.n = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False
        self._printed: int | None = None  # the count of the last line printed

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; print a line when ``every_s`` has passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Text shown after the counts, as tqdm's ``set_postfix`` (``key=value, ...``)."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _print(self, now: float) -> None:
        self._printed = self.n
        line = tqdm.format_meter(self.n, self.total, now - self._start, prefix=self.desc, unit=self.unit,
                                 unit_scale=self.unit_scale, postfix=self.postfix or None, ncols=0)
        print(line, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        """Print the final line (once, and not when the last line already showed the final count)."""
        if not self._closed:
            self._closed = True
            if self._printed != self.n:
                self._print(time.monotonic())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    """No output at all (``enabled=False``)."""

    def _print(self, now: float) -> None:
        pass


def progress(total: int | None = None, desc: str = "", unit: str = "it", unit_scale: bool = False,
             enabled: bool = True, every_s: float = LOG_EVERY_S) -> Any:
    """A progress display for ``total`` units: tqdm on a terminal, :class:`LineProgress` lines otherwise,
    nothing when ``enabled`` is false."""
    if not enabled:
        return _Silent(total, desc, unit, unit_scale)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True)
    return LineProgress(total, desc, unit, unit_scale, every_s)
