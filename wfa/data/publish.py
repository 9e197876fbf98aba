"""Publish an output folder safely: one writer at a time, the old or the new complete result, never neither.

The protocol, for a folder ``OUT`` (``wfa shards --out``; ``wfa train`` uses the lock for its run folder):

1. **Lock.** An exclusive ``fcntl.flock`` on ``.OUT.lock`` next to ``OUT`` (holding the owner's pid). A
   second run on the same folder fails at once with :class:`~wfa.errors.BusyError` naming the lock file and
   the pid that holds it. The kernel drops the lock when its process ends, even on ``kill -9``; a run that
   ends removes the lock file (while still holding the lock, so lock files do not pile up; a run that
   finds its lock file replaced takes the new one).
2. **Recover.** Holding the lock, anything a killed earlier run left next to ``OUT`` is cleaned up: its
   staging folders are removed, and a previous data set parked by an interrupted swap is put back. Only
   folders that carry wfa's ownership marker (a ``.wfa-owned`` file naming ``OUT``) are touched: a
   ``.OUT.staging-*`` or ``.OUT.old-*`` folder someone else made is left alone.
3. **Stage.** The run writes everything into a fresh staging folder ``.OUT.staging-XXXX`` next to ``OUT``
   (same file system, so renames are atomic), marked as wfa's and readable as the umask allows (not
   ``mkdtemp``'s 0700). A failed run removes only its staging folder; ``OUT`` is not created.
4. **Publish.** The old ``OUT`` is marked, the staging folder and ``OUT`` swap places in one
   ``renameat2(RENAME_EXCHANGE)`` system call, the new ``OUT`` loses its marker, then the old data set is
   removed. Where the file system has no atomic exchange the swap is two renames (``OUT`` ->
   ``.OUT.old-PID``, staging -> ``OUT``); a kill between them leaves the old data set complete under
   ``.OUT.old-PID``, which step 2 of the next run moves back.

What is not guaranteed: several machines writing into one folder over a network file system without
``flock`` support; files other programs put into ``OUT`` (refused up front by :func:`check_out_folder`).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
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
    """Hold the exclusive lock of ``out`` for the block; :class:`BusyError` at once if another process has it.

    The lock file is removed when the block ends, still under the lock; a process that locked the file
    just before it was removed sees that its path now names another file (or none) and locks again, so
    two processes never both hold "the" lock."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(f"{out} is in use by another wfa run (pid {holder}, lock {path}); wait for it to "
                            "finish or use another output folder") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the holder removed this lock file as we took it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)  # closing the descriptor releases the lock


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.staging-"


def _parked_prefix(out: Path) -> str:
    return f".{out.name}.old-"


MARKER = ".wfa-owned"  # in a folder wfa made beside OUT (staging, parked): only such folders are removed


def _mark(folder: Path, out: Path, role: str) -> None:
    """Mark ``folder`` as made by wfa for ``out`` (``role``: staging or parked)."""
    record = {"made_by": "wfa", "for": out.name, "role": role, "pid": os.getpid()}
    (folder / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def _is_marked(folder: Path, out: Path) -> bool:
    """Whether ``folder`` carries wfa's marker for ``out`` (a folder of the same name made by someone else
    does not)."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("made_by") == "wfa" and record.get("for") == out.name


def _unmark(folder: Path) -> None:
    try:
        (folder / MARKER).unlink()
    except FileNotFoundError:
        pass


def recover(out: str | Path) -> list[str]:
    """Clean up after a killed run (call it holding :func:`folder_lock`); returns what was done.

    Staging folders of earlier runs are removed; a data set parked by an interrupted two-rename swap is
    moved back to ``out`` when ``out`` is missing, else removed; a marker left inside ``out`` by a kill
    during the swap is removed. Only folders with wfa's marker for ``out`` are touched: others are named
    in the returned list as left alone.
    """
    out = Path(out).resolve()
    done: list[str] = []
    if not out.parent.is_dir():
        return done
    for entry in sorted(out.parent.iterdir()):
        if not entry.name.startswith((_staging_prefix(out), _parked_prefix(out))) or not entry.is_dir():
            continue
        if not _is_marked(entry, out):
            done.append(f"left {entry} alone: wfa did not make it")
        elif entry.name.startswith(_staging_prefix(out)):
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed the staging folder {entry} of an interrupted run")
        elif not out.exists():
            os.rename(entry, out)
            _unmark(out)
            done.append(f"restored the previous data set {out} from {entry}")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}, left by an interrupted publish")
    if out.is_dir() and _is_marked(out, out):
        _unmark(out)
    return done


def make_staging(out: str | Path) -> Path:
    """A new, empty staging folder beside ``out`` (its parent created if needed), marked as wfa's, with the
    permissions a new folder gets under the umask (``mkdtemp`` alone gives 0700, which would make a shared
    data set unreadable to others)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    _mark(staging, out, "staging")
    return staging


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
    only once the new one is in place. A symlinked ``out`` stays a symlink: its target is replaced. The
    old data set is marked before it moves, so a kill at any point leaves only marked folders beside ``out``
    (which :func:`recover` handles) and the new ``out`` without a marker once the swap is done."""
    out = Path(out).resolve()
    if not out.exists():
        os.rename(staging, out)
        _unmark(out)
        _fsync_dir(out.parent)
        return
    _mark(out, out, "parked")
    try:
        _exchange(staging, out)
        old = staging  # after the exchange the staging path holds the old data set
    except OSError as error:
        if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            _unmark(out)
            raise
        old = out.parent / f"{_parked_prefix(out)}{os.getpid()}"
        os.rename(out, old)
        os.rename(staging, out)
    _unmark(out)
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
