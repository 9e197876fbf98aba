"""Checks of the output paths a command was given, made before any work so that a bad path costs nothing."""
from __future__ import annotations

import os
from pathlib import Path


def output_file_problem(path: str | os.PathLike, option: str) -> str | None:
    """Why ``path`` cannot become a file that the command writes (it is a folder, or no folder on its way can
    be created or written), or None. ``option`` names it in the message (``--out``)."""
    path = Path(path)
    if path.is_dir():
        return f"{option} {path} is a folder; give a file path such as {path / 'report.json'}"
    return folder_problem(path.absolute().parent, option, path)


def output_folder_problem(path: str | os.PathLike, option: str) -> str | None:
    """Why ``path`` cannot become (or be) a folder that the command writes into, or None."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file, not a folder; give a folder path"
    return folder_problem(path.absolute(), option, path)


def folder_problem(folder: Path, option: str, given: Path) -> str | None:
    """Why files cannot be created in ``folder`` (or, when it is missing, in its nearest existing parent)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir() or not os.access(candidate, os.W_OK | os.X_OK):
                what = "a file" if not candidate.is_dir() else "not writable"
                return f"{option} {given}: cannot create files under {candidate} ({what})"
            return None
    return None
