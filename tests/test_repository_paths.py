"""The repository stands on its own: no committed file points outside it or at one machine's folders.

Only the test fixtures' data-path default (``tests/conftest.py``) and CI (``.ci/run``) may name the
sibling data folder; the docs live in ``docs/``; results and notebook outputs carry no absolute path of
the machine they were made on (``scripts/bench/common.py`` writes them portable).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("wfa", "scripts", "notebooks", "benchmarks", "docs", "configs", "README.md", "BENCHMARKS.md")
SKIPPED_DIRS = {".git", ".venv", "__pycache__", "runs", "shards", ".ipynb_checkpoints"}
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".pt", ".tar", ".npy", ".gz", ".zip", ".pyc"}
FORBIDDEN = {
    "names the sibling ../shared folder": re.compile(r"\.\./shared"),
    "points at the design brief outside the repository": re.compile(r"shared/docs|DESIGN §"),
    "carries an absolute home or work path": re.compile(r"(?<![\w.~$])/(?:work|root|home)/"),
}


def committed_files() -> list[Path]:
    """The files under ``CHECKED``: git's tracked files in a checkout, else every file on disk."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *CHECKED], cwd=REPO, capture_output=True,
                                check=True, timeout=60).stdout.decode().split("\0")
        files = [REPO / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        files = []
        for name in CHECKED:
            root = REPO / name
            candidates = [root] if root.is_file() else root.rglob("*")
            files += [p for p in candidates
                      if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(REPO).parts)]
    return [p for p in files if p.is_file() and p.suffix.lower() not in BINARY_SUFFIXES]


def problems_in(text: str) -> list[str]:
    """One line per forbidden pattern found in ``text``: what it is and the first match in context."""
    found = []
    for what, pattern in FORBIDDEN.items():
        match = pattern.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            context = text[max(0, match.start() - 30):match.end() + 40].replace("\n", " ")
            found.append(f"line {line} {what}: ...{context}...")
    return found


def test_the_patterns_catch_what_they_should():
    assert problems_in("data in ../shared/data") and problems_in("see shared/docs/DESIGN.md")
    assert problems_in('"run_dir": "/work/main/runs/x"') and problems_in("cd /root/x") and problems_in("/home/u/")
    for fine in ("runs/study/x", "$WFA_SHARED_DATA/ucm-captions", "~/data", "shared/data beside the repository",
                 "/tmp/wfa-bench", "a/work/b"):
        assert not problems_in(fine), fine


def test_no_committed_file_points_outside_the_repository():
    files = committed_files()
    assert any(p.name == "README.md" for p in files), "no files found to check"
    bad = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found = problems_in(text)
        if found:
            bad[path.relative_to(REPO).as_posix()] = found
    assert not bad, "files that point outside the repository or at a machine's folders:\n" + "\n".join(
        f"  {name}: {'; '.join(found)}" for name, found in sorted(bad.items()))


def test_benchmark_results_are_written_with_portable_paths(tmp_path):
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    try:
        import common
    finally:
        sys.path.pop(0)
    data = tmp_path / "data"
    record = {"run_dir": str(REPO / "runs" / "x"), "source": f"UCM ({data / 'ucm-captions'})",
              "command": f"python a.py --out {REPO}/benchmarks/x.json", "repo": str(REPO),
              "other": [str(tmp_path / "keep"), str(Path.home() / "f")], "n": 3}
    out = common.portable_paths(record, repo=REPO, data=data)
    assert out["run_dir"] == "runs/x" and out["repo"] == "."
    assert out["source"] == "UCM ($WFA_SHARED_DATA/ucm-captions)"
    assert out["command"] == "python a.py --out benchmarks/x.json"
    assert out["n"] == 3
    if not tmp_path.is_relative_to(Path.home()):
        assert out["other"][0] == str(tmp_path / "keep")  # other absolute paths (temporary folders) stay
    assert out["other"][1] in ("~/f", str(Path.home() / "f"))  # "~" unless home is "/"
    written = common.write_json(tmp_path / "r.json", {"run_dir": str(REPO / "runs" / "y")})
    assert '"runs/y"' in written.read_text()


@pytest.mark.parametrize("page", ["README.md", "method.md", "metrics.md", "configs.md", "datasets.md", "studies.md"])
def test_docs_pages_exist_and_their_links_resolve(page):
    path = REPO / "docs" / page
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        if target == "shard-format.md" and not (path.parent / target).exists():
            continue  # written with the compact shard format, in another branch
        assert (path.parent / target).exists(), f"docs/{page} links to {target}, which does not exist"
