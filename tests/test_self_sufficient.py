"""The repository stands alone: no file points at a sibling ``shared`` folder.

A fresh clone has nothing beside it, so a reference to the sibling folder
(by relative path, by the environment variable that used to locate it, or as
the root's parent joined with that name in Python) is a build or test step
that works only on a machine that happens to have it.  Checked over every
file git tracks (or, outside a git checkout, every file of the tree but the
git-ignored kinds: virtualenvs, caches, build output, reports).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT

# Spelled in pieces so that this file does not match itself.
SIBLING = "shared"
PATTERNS = [
    re.compile(re.escape("../" + SIBLING).encode()),
    re.compile(re.escape("..\\" + SIBLING).encode()),
    re.compile(("WSHUB_" + SIBLING.upper()).encode()),
    re.compile(rb"""\.parent\s*/\s*["']""" + SIBLING.encode() + rb"""["']"""),
]
# Folders that a walk of the tree skips (all git-ignored or generated).
SKIP_DIRS = {
    ".git",
    ".venv",
    ".cache",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
    "node_modules",
    "build",
    "dist",
    "site",
    "reports",
}


def git_files(root: Path) -> list[Path] | None:
    """Every file git tracks under ``root``, or None when this is not a git checkout."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"],
            capture_output=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n for n in proc.stdout.decode().split("\0") if n]
    return [root / n for n in names if (root / n).is_file()] or None


def walked_files(root: Path) -> list[Path]:
    """Every file of the tree, less the git-ignored kinds of folders."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(folder) / f for f in files if not (Path(folder) / f).is_symlink()]
    return found


def repository_files(root: Path) -> list[Path]:
    tracked = git_files(root)
    return tracked if tracked is not None else walked_files(root)


def references(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    hits = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if any(p.search(line) for p in PATTERNS):
            hits.append(f"{lineno}: {line.decode(errors='replace').strip()[:160]}")
    return hits


def test_the_tree_walk_finds_what_git_tracks() -> None:
    """The fallback for a copy without .git sees at least the tracked files."""
    walked = set(walked_files(ROOT))
    tracked = git_files(ROOT)
    assert ROOT / "tests" / "test_self_sufficient.py" in walked
    if tracked is not None:
        assert not set(tracked) - walked, sorted(set(tracked) - walked)[:20]


def test_no_file_refers_to_the_sibling_shared_folder() -> None:
    offenders = []
    for path in sorted(repository_files(ROOT)):
        for hit in references(path):
            offenders.append(f"{path.relative_to(ROOT)}:{hit}")
    assert not offenders, (
        f"{len(offenders)} reference(s) to the sibling '{SIBLING}' folder, which a fresh clone"
        " does not have (the repository must install and run everything itself):\n"
        + "\n".join(offenders)
    )
