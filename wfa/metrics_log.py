"""A run's log: one JSON line per record in ``metrics.jsonl``, numeric fields also as TensorBoard scalars."""
from __future__ import annotations

import json
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
