"""What produced a result: densflow's version and git commit, beside torch's.

Every file that records a result — ``results.json``, checkpoints, model directories — carries
:func:`provenance`, so a number can be traced to the code that computed it. The git commit is read
only where densflow runs from a git checkout (an editable install); an installed wheel has its
version and no commit. ``git_dirty`` says whether the checkout had uncommitted changes, in which
case the commit alone does not name the code.

>>> sorted(provenance())
['densflow', 'git_commit', 'git_dirty', 'torch']
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["provenance", "version"]


def version() -> str:
    """densflow's version, from the installed package's metadata (written once, in
    ``pyproject.toml``)."""
    try:
        return metadata.version("densflow")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _git(*args: str) -> str | None:
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):  # no git, or a hung file system
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    # The checkout must be densflow's own: an installed copy inside some other repository has
    # no commit of ours.
    top = _git("rev-parse", "--show-toplevel")
    if top is None or not (Path(top) / "densflow" / "utils" / "provenance.py").is_file():
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def provenance() -> dict[str, str | bool | None]:
    """``{"densflow": version, "git_commit": sha or None, "git_dirty": bool or None,
    "torch": torch's version}``."""
    commit, dirty = _git_state()
    return {
        "densflow": version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses
    }
