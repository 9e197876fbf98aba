"""A run's log: one JSON line per record in ``metrics.jsonl``, numeric fields also as TensorBoard scalars.

This module owns the file's format: writing (:class:`MetricsLog`), reading (:func:`read_metrics`) and cutting it
back to a resumed step (:func:`truncate_metrics`); where the file lives is :class:`wfa.run.Run`'s.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """JSON-lines metrics file plus TensorBoard scalars (main process only)."""

    def __init__(self, path: Path, writer: Any, enabled: bool):
        self.enabled, self.writer = enabled, writer
        self.file = open(path, "a") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with a timestamp); numeric fields also go to TensorBoard under ``train/``."""
        if not self.enabled:
            return
        self.file.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")
        self.file.flush()
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key if "/" in key else f"train/{key}", value, record["step"])

    def close(self) -> None:
        """Flush and close the file and the TensorBoard writer."""
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` in order; a line that is not a JSON object (the torn last line of a
    killed run) is left out. An absent file has no records."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``step`` (and any torn last line); returns how many.

    A resumed run writes the steps after its checkpoint again, so the killed run's records of those steps
    would otherwise appear twice.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        at = record.get("step", record.get("steps", 0)) if isinstance(record, dict) else 0
        if isinstance(at, (int, float)) and at > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped
