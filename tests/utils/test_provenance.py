"""densflow's version and git commit, recorded beside torch's in every result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densflow.utils.provenance import provenance, version

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_checkout_records_its_commit_and_whether_it_has_changes():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    record = provenance()
    assert record["git_commit"] == _git("rev-parse", "HEAD")
    assert record["git_dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert record["torch"] == torch.__version__ and record["densflow"] == version()


@pytest.mark.slow
def test_a_copy_outside_any_checkout_records_no_commit(tmp_path):
    shutil.copytree(ROOT / "densflow", tmp_path / "densflow")
    code = "import json, densflow.utils.provenance as p; print(json.dumps(p.provenance()))"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), GIT_CEILING_DIRECTORIES=str(tmp_path.parent))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    record = json.loads(out.stdout)
    assert record["git_commit"] is None and record["git_dirty"] is None
    assert record["torch"] == torch.__version__
