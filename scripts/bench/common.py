"""What every benchmark script of ``scripts/bench/`` shares: paths, the machine record and the result writer.

Every result JSON under ``benchmarks/`` carries the command that made it and the machine and date it ran
on: :func:`write_result` adds both. The scripts are not a package; each one imports this module
after putting its own folder on ``sys.path`` (``python scripts/bench/x.py`` already does; a test or the
notebook loading a script with ``importlib`` does not)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import REPO, SHARED_DATA, write_result
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("WFA_SHARED_DATA", REPO.parent / "shared" / "data"))

if str(REPO) not in sys.path:  # the scripts also run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(REPO))


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran (:func:`wfa.study.records.machine_info`, with this checkout's git commit)."""
    from wfa.study.records import machine_info as library_machine_info

    return library_machine_info(REPO)


def command_line(argv: Sequence[str] | None = None, script: str | os.PathLike | None = None) -> str:
    """The command as run, ``python scripts/bench/x.py ARGS``, shell-quoted.

    ``script`` defaults to ``sys.argv[0]`` and ``argv`` to ``sys.argv[1:]``; a script whose ``main(argv)`` is
    called from Python (tests, the notebook) passes both, or the command would name the caller.
    """
    path = Path(script if script is not None else sys.argv[0]).resolve()
    shown = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
    return shlex.join(["python", shown, *(sys.argv[1:] if argv is None else argv)])


def portable_paths(obj: Any, repo: str | os.PathLike = REPO, data: str | os.PathLike = SHARED_DATA) -> Any:
    """``obj`` with machine paths made portable (:func:`wfa.study.records.portable_paths`): under ``data``
    ``$WFA_SHARED_DATA/...``, under ``repo`` relative to it, under the home folder ``~/...``."""
    from wfa.study.records import portable_paths as library_portable_paths

    return library_portable_paths(obj, root=repo, data=data)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically with portable paths relative to the repository; returns the path."""
    from wfa.study.records import write_json as library_write_json

    return library_write_json(path, obj, root=REPO, data=SHARED_DATA, indent=indent)


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
