"""Publish an output folder safely: one writer at a time, the old or the new complete result, never neither.

The protocol, for a folder ``OUT`` (``wfa shards --out``; ``wfa train`` uses the lock for its run folder):

1. **Lock.** An exclusive ``fcntl.flock`` on ``.OUT.lock`` next to ``OUT`` (holding the owner's pid). A
   second run on the same folder fails at once with :class:`~wfa.errors.BusyError` naming the lock file and
   the pid that holds it. The kernel drops the lock when its process ends, even on ``kill -9``.
2. **Recover.** Holding the lock, anything a killed earlier run left next to ``OUT`` is cleaned up: its
   staging folders are removed, and a previous dataset parked by an interrupted swap is put back.
3. **Stage.** The run writes everything into a fresh staging folder ``.OUT.staging-XXXX`` next to ``OUT``
   (same file system, so renames are atomic). A failed run removes only its staging folder.
4. **Publish.** The staging folder and ``OUT`` swap places in one ``renameat2(RENAME_EXCHANGE)`` system
   call, then the old data set is removed. Where the file system has no atomic exchange the swap is two
   renames (``OUT`` -> ``.OUT.old-PID``, staging -> ``OUT``); a kill between them leaves the old data set
   complete under ``.OUT.old-PID``, which step 2 of the next run moves back.

What is not guaranteed: several machines writing into one folder over a network file system without
``flock`` support; files other programs put into ``OUT`` (refused up front by :func:`check_out_folder`).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wfa.errors import BusyError, ShardsError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def lock_path(out: str | Path) -> Path:
    """The lock file of ``out``: ``.NAME.lock`` beside it (beside the target when ``out`` is a symlink)."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.lock"


@contextmanager
def folder_lock(out: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of ``out`` for the block; :class:`BusyError` at once if another process has it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise BusyError(f"{out} is in use by another wfa run (pid {holder}, lock {path}); wait for it to "
                            "finish or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.staging-"


def _parked_prefix(out: Path) -> str:
    return f".{out.name}.old-"


def recover(out: str | Path) -> list[str]:
    """Clean up after a killed run (call it holding :func:`folder_lock`); returns what was done.

    Staging folders of earlier runs are removed; a data set parked by an interrupted two-rename swap is
    moved back to ``out`` when ``out`` is missing, else removed.
    """
    out = Path(out).resolve()
    done: list[str] = []
    if not out.parent.is_dir():
        return done
    for entry in sorted(out.parent.iterdir()):
        if entry.name.startswith(_staging_prefix(out)):
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed the staging folder {entry} of an interrupted run")
        elif entry.name.startswith(_parked_prefix(out)):
            if not out.exists():
                os.rename(entry, out)
                done.append(f"restored the previous data set {out} from {entry}")
            else:
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}, left by an interrupted publish")
    return done


def make_staging(out: str | Path) -> Path:
    """A new, empty staging folder beside ``out`` (created with its parent)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))


def check_out_folder(out: str | Path, is_ours: Callable[[Path], bool]) -> None:
    """Refuse an ``out`` that is a file, or a folder holding files ``is_ours`` does not recognise
    (publishing replaces the whole folder, so they would be lost)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShardsError(f"--out {out} is a file, not a folder; choose a folder path").with_exit_code(2)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not is_ours(p))
        if foreign:
            more = ", ..." if len(foreign) > 5 else ""
            raise ShardsError(f"output folder {out} holds files that are not shards ({', '.join(foreign[:5])}{more}); "
                              "choose an empty or new folder").with_exit_code(2)


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); OSError where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, out: str | Path) -> None:
    """Make ``staging`` the new ``out`` (call it holding :func:`folder_lock`); the old ``out`` is removed
    only once the new one is in place. A symlinked ``out`` stays a symlink: its target is replaced."""
    out = Path(out).resolve()
    if not out.exists():
        os.rename(staging, out)
        _fsync_dir(out.parent)
        return
    try:
        _exchange(staging, out)
        old = staging  # after the exchange the staging path holds the old data set
    except OSError as error:
        if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        old = out.parent / f"{_parked_prefix(out)}{os.getpid()}"
        os.rename(out, old)
        os.rename(staging, out)
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
