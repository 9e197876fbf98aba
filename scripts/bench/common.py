"""What every benchmark script of ``scripts/bench/`` shares: paths, the machine record and the result writer.

Every result JSON under ``benchmarks/`` carries the command that made it and the machine and date it ran
on: :func:`write_result` adds both. The scripts are not a package; each one imports this module
after putting its own folder on ``sys.path`` (``python scripts/bench/x.py`` already does; a test or the
notebook loading a script with ``importlib`` does not)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import REPO, SHARED_DATA, write_result
"""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("WFA_SHARED_DATA", REPO.parent / "shared" / "data"))

if str(REPO) not in sys.path:  # the scripts also run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(REPO))


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran: date (UTC), platform, CPUs, load average now, library versions, GPU."""
    import numpy

    try:
        import torch
    except ImportError:
        torch = None
    gpu = bool(torch is not None and torch.cuda.is_available())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "gpu": gpu,
        "gpu_name": torch.cuda.get_device_name(0) if gpu else None,
        "git_commit": commit,
    }


def command_line(argv: Sequence[str] | None = None, script: str | os.PathLike | None = None) -> str:
    """The command as run, ``python scripts/bench/x.py ARGS``, shell-quoted.

    ``script`` defaults to ``sys.argv[0]`` and ``argv`` to ``sys.argv[1:]``; a script whose ``main(argv)`` is
    called from Python (tests, the notebook) passes both, or the command would name the caller.
    """
    path = Path(script if script is not None else sys.argv[0]).resolve()
    shown = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
    return shlex.join(["python", shown, *(sys.argv[1:] if argv is None else argv)])


def portable_paths(obj: Any, repo: str | os.PathLike = REPO, data: str | os.PathLike = SHARED_DATA) -> Any:
    """``obj`` with machine paths inside every string made portable, for results that get committed.

    A path under the data folder becomes ``$WFA_SHARED_DATA/...``, one under the repository becomes
    relative to the repository root (the root itself ``.``), one under the home folder ``~/...``.
    Other paths (e.g. temporary folders) are kept. Dict keys, lists and tuples are walked.
    """
    prefixes = [(str(Path(data).resolve()), "$WFA_SHARED_DATA"), (str(Path(repo).resolve()), ".")]
    home = str(Path.home())
    if home not in ("/", ""):
        prefixes.append((home, "~"))

    def fix(text: str) -> str:
        for prefix, label in prefixes:
            text = text.replace(prefix + "/", "" if label == "." else label + "/")
            text = re.sub(re.escape(prefix) + r"(?![\w.-])", label, text)
        return text

    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, dict):
        return {fix(k) if isinstance(k, str) else k: portable_paths(v, repo, data) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, repo, data) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (temporary file, then rename); returns the path.

    Paths inside ``obj`` are written portable (:func:`portable_paths`): results are committed and shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(portable_paths(obj), indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_result(path: str | os.PathLike, payload: dict[str, Any], *, argv: Sequence[str] | None = None,
                 script: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write a benchmark result with its ``command`` and ``machine`` first; returns what was written.

    A ``command`` in ``payload`` is kept; otherwise it is :func:`command_line` of ``argv``/``script``. The
    ``machine`` record is :func:`machine_info` updated with the script's own ``payload["machine"]`` fields
    (a load average measured at the start, a pinned CPU, ...), which win on a clash.
    """
    record = {"command": payload.get("command") or command_line(argv, script),
              "machine": {**machine_info(), **payload.get("machine", {})},
              **{k: v for k, v in payload.items() if k not in ("command", "machine")}}
    write_json(path, record)
    return record
