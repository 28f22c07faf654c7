"""The Hugging Face Hub, offline: from_pretrained's keywords reach the Hub client, the real client
reads a model from its local cache, and push_to_hub uploads a model directory to a stand-in.

These tests need huggingface_hub (the ``hub`` extra): they fail, not skip, without it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors
from utils import assert_one_line, run_cli

from densflow import DenseFlow, DenseFlowConfig
from densflow.data import MissingDependencyError
from densflow.io import pretrained as pt
from densflow.io.checkpoint import CheckpointError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DenseFlow(DenseFlowConfig.tiny()).eval()


def same(a: DenseFlow, b: DenseFlow) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def hub_cache(root: Path, repo_id: str, model: DenseFlow) -> Path:
    """The Hugging Face cache layout of one downloaded revision ``main`` of ``repo_id``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    pt.save_pretrained(model, repo / "snapshots" / COMMIT, dataset="cifar10")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo


def test_the_real_client_reads_a_model_from_its_cache_offline(tiny, tmp_path):
    hub_cache(tmp_path / "hf", "someone/densflow-tiny", tiny)
    loaded = DenseFlow.from_pretrained(
        "someone/densflow-tiny", cache_dir=tmp_path / "hf", local_files_only=True
    )
    assert same(loaded, tiny) and not loaded.training
    with pytest.raises(CheckpointError, match="no model 'someone/other' in the local Hugging Face"):
        DenseFlow.from_pretrained("someone/other", cache_dir=tmp_path / "hf", local_files_only=True)


def test_every_keyword_reaches_snapshot_download(tiny, tmp_path, monkeypatch):
    folder = hub_cache(tmp_path, "someone/densflow-tiny", tiny) / "snapshots" / COMMIT
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = DenseFlow.from_pretrained(
        "someone/densflow-tiny", cache_dir=tmp_path / "c", revision="v1", token="hf_x",
        force_download=True, local_files_only=False,
    )  # fmt: skip
    assert same(loaded, tiny)
    assert calls == [
        (
            "someone/densflow-tiny",
            dict(revision="v1", cache_dir=tmp_path / "c", token="hf_x", force_download=True,
                 local_files_only=False, allow_patterns=[pt.CONFIG_NAME, pt.WEIGHTS_NAME]),
        )
    ]  # fmt: skip


def hub_error(cls: type, message: str, status: int) -> Exception:
    """An error of the Hub client as it raises them: with the HTTP response."""
    import httpx2

    request = httpx2.Request("GET", "https://huggingface.co/api/models/someone/nothing")
    return cls(message, response=httpx2.Response(status, request=request))


def test_a_hub_failure_is_one_line_naming_what_was_tried(monkeypatch, tmp_path, capsys):
    def offline(repo_id, **kwargs):
        raise hub_error(
            errors.RepositoryNotFoundError,
            "404 Client Error.\n\nRepository Not",
            404,
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(["sample", "someone/nothing", "--out", "s.png"], capsys)
    assert status == 2
    assert_one_line(
        err,
        r"no file or folder someone/nothing, and no model 'someone/nothing' on the Hugging Face "
        r"Hub \(RepositoryNotFoundError: 404 Client Error\.\); check the path or the repo id",
    )
    assert list(tmp_path.iterdir()) == []


class StandInApi:
    """``HfApi``'s upload calls, onto a folder per repo under ``remote``."""

    remote: Path
    calls: list

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, *, private=None, exist_ok=False):
        type(self).calls.append(("create_repo", repo_id, private, exist_ok, self.token))
        (self.remote / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def create_branch(self, repo_id, *, branch, exist_ok=False):
        type(self).calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, *, repo_id, folder_path, commit_message, revision, create_pr):
        type(self).calls.append(("upload_folder", repo_id, commit_message, revision, create_pr))
        shutil.copytree(folder_path, self.remote / repo_id, dirs_exist_ok=True)
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}",
            commit_message=commit_message, commit_description="", oid=COMMIT,
        )  # fmt: skip


def test_push_to_hub_uploads_a_model_directory_that_loads_back(tiny, tmp_path, monkeypatch):
    StandInApi.remote, StandInApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub, "HfApi", StandInApi)
    url = tiny.push_to_hub("me/tiny", token="hf_x", private=True, branch="dev", dataset="photos")
    assert url == f"https://huggingface.co/me/tiny/commit/{COMMIT}"
    assert StandInApi.calls == [
        ("create_repo", "me/tiny", True, True, "hf_x"),
        ("create_branch", "me/tiny", "dev"),
        ("upload_folder", "me/tiny", "Upload a DenseFlow model with densflow", "dev", False),
    ]
    uploaded = tmp_path / "remote" / "me" / "tiny"
    assert sorted(p.name for p in uploaded.iterdir()) == [pt.CONFIG_NAME, pt.WEIGHTS_NAME]
    assert same(DenseFlow.from_pretrained(uploaded), tiny)
    assert pt.read_pretrained_config(uploaded)[1]["dataset"] == "photos"


def test_a_failed_push_is_one_line(tiny, monkeypatch):
    class Refusing(StandInApi):
        def create_repo(self, repo_id, **kwargs):
            raise hub_error(errors.HfHubHTTPError, "401 Unauthorized\nBad token", 401)

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(CheckpointError, match=r"cannot push .*'me/tiny' \(HfHubHTTPError: 401 Un"):
        tiny.push_to_hub("me/tiny")


def test_without_the_hub_client_the_message_names_the_extra(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[hub\]"'):
        DenseFlow.from_pretrained("someone/densflow-cifar10")
    with pytest.raises(MissingDependencyError, match=r"pushing to the Hugging Face Hub"):
        tiny.push_to_hub("me/tiny")
