"""Check a split's shards against ``index.json`` before training: what each shard can give, and why not.

:func:`audit_split` reads the tar headers of every shard of a split (no image is decoded; a header read
and a seek per member) and counts the complete samples (a ``json`` member and an image member whose
bytes are all in the file). A shard that is truncated, is not a tar file, or lacks samples the index
promises is named with its reason. Training stops before the first step when more than
:data:`MAX_MISSING_FRACTION` of the split's samples are missing (:func:`check_loss`), and records the
per-shard counts in ``metrics.jsonl`` either way. :func:`check_probes` judges the decoding probe
(:func:`wfa.data.loader.probe_split`: one sample per shard decoded): more than
:data:`MAX_MISSING_FRACTION` of the shards whose probe sample does not decode stops the run too.
"""
from __future__ import annotations

import os
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from wfa.data.loader import IMAGE_MEMBERS, MAX_MISSING_FRACTION

__all__ = ["MAX_MISSING_FRACTION", "audit_shard", "audit_split", "check_loss", "check_probes"]


def audit_shard(path: str | Path, expected: int) -> dict[str, Any]:
    """``{"shard", "expected", "complete", "problem"}`` for one shard; ``problem`` is None when all is there."""
    path = Path(path)
    record: dict[str, Any] = {"shard": path.name, "expected": expected, "complete": 0, "problem": None}
    if not path.is_file():
        record["problem"] = "missing file"
        return record
    size = os.path.getsize(path)
    members: dict[str, set[str]] = defaultdict(set)
    truncated = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if member.offset_data + member.size > size:
                    truncated = f"truncated: member {member.name} ends past the end of the file ({size} bytes)"
                    break
                key, _, ext = member.name.partition(".")
                members[key].add(ext.lower())
    except tarfile.ReadError as error:
        if not members:
            record["problem"] = f"not a tar file ({error})" if size else "empty file (0 bytes)"
            return record
        truncated = f"truncated: unreadable after {len(members)} samples ({error})"
    except (OSError, EOFError) as error:
        truncated = f"read error after {len(members)} samples ({error})"
    record["complete"] = sum(1 for exts in members.values() if "json" in exts and exts & set(IMAGE_MEMBERS))
    if truncated:
        record["problem"] = truncated
    elif record["complete"] < expected:
        record["problem"] = f"{expected - record['complete']} samples lack their json or image member"
    return record


def audit_split(shards: list[tuple[str, int]]) -> dict[str, Any]:
    """Audit ``[(path, num_samples)]`` (from :func:`wfa.data.loader.split_shards`); totals plus per-shard records."""
    records = [audit_shard(path, expected) for path, expected in shards]
    expected = sum(r["expected"] for r in records)
    complete = sum(min(r["complete"], r["expected"]) for r in records)
    return {"expected": expected, "readable": complete, "missing": expected - complete, "shards": records}


def check_loss(audit: dict[str, Any], split: str, max_fraction: float = MAX_MISSING_FRACTION) -> str | None:
    """A one-line reason to stop when more than ``max_fraction`` of the split is missing, else ``None``."""
    if audit["expected"] == 0 or audit["missing"] <= max_fraction * audit["expected"]:
        return None
    bad = [f"{r['shard']} ({r['complete']}/{r['expected']}: {r['problem']})" for r in audit["shards"] if r["problem"]]
    return (f"split {split!r}: {audit['missing']} of {audit['expected']} samples unreadable "
            f"(more than {max_fraction:.0%}): {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; "
            "rewrite the shards with `wfa shards`")


def check_probes(probes: list[dict[str, Any]], split: str, max_fraction: float = MAX_MISSING_FRACTION) -> str | None:
    """A one-line reason to stop when the probe sample of more than ``max_fraction`` of the split's shards does
    not decode (:func:`wfa.data.loader.probe_split`), else ``None``."""
    bad = [p for p in probes if not p["ok"]]
    if not probes or len(bad) <= max_fraction * len(probes):
        return None
    shown = "; ".join(f"{p['shard']}: {p['problem']}" for p in bad[:3])
    return (f"split {split!r}: the first sample of {len(bad)} of {len(probes)} shards does not decode "
            f"(more than {max_fraction:.0%}): {shown}{' ...' if len(bad) > 3 else ''}; rewrite the shards with "
            "`wfa shards`")
