"""Model directories on the Hugging Face Hub, through ``huggingface_hub`` (the ``hub`` extra).

:func:`download` fetches a repo's ``config.json`` and ``model.safetensors`` with
``snapshot_download`` (its cache, revisions, tokens, offline mode and forced downloads, passed
through as they are); :func:`push_to_hub` uploads a model as a model directory.

**Why not ``huggingface_hub.PyTorchModelHubMixin``.** The mixin would give ``DenseFlow`` the same
three methods from a base class, but it would make the Hub client a dependency of the model itself
(``densflow.model`` imports neither the Hub nor storage, and loading a model must work without the
optional extra), its ``from_pretrained`` knows only folders and repo ids (not densflow checkpoints,
official run folders or the names of the weights cache), and it writes files in place, where
densflow writes each atomically and checks every tensor and dtype it reads. densflow keeps the
mixin's file layout (``config.json`` + ``model.safetensors``) and keyword names instead, so a
directory written by one is a directory for the other, and ``DenseFlow.from_pretrained`` /
``save_pretrained`` / ``push_to_hub`` read as they do for any Hub model
(:func:`densflow.io.resolve.from_pretrained`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..data import require
from ..model import DenseFlow
from ..utils.errors import first_line
from .checkpoint import CheckpointError
from .pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_dir, save_pretrained

__all__ = ["download", "push_to_hub"]


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """The local folder of the Hub repo ``repo_id``'s model directory (``snapshot_download`` of
    its two files; the keywords are its own)."""
    hub = require("huggingface_hub", "hub", f"loading {repo_id!r} from the Hugging Face Hub")
    try:
        folder = hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        )
    except Exception as err:  # the Hub client raises a class per failure (and the network more)
        where = "in the local Hugging Face cache" if local_files_only else "on the Hugging Face Hub"
        raise CheckpointError(
            f"no file or folder {repo_id}, and no model {repo_id!r} {where} ({first_line(err)}); "
            "check the path or the repo id, the revision, your token and the connection"
        ) from err
    if not is_model_dir(folder):
        raise CheckpointError(
            f"the Hugging Face Hub repo {repo_id!r} has no {CONFIG_NAME} + {WEIGHTS_NAME}: it is "
            "not a densflow model"
        )
    return Path(folder)


def push_to_hub(
    model: DenseFlow,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    branch: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload a DenseFlow model with densflow",
    dataset: str | None = None,
) -> str:
    """Upload ``model`` as a model directory to the Hub repo ``repo_id`` (created if missing);
    returns the commit's URL. The keywords are those of ``PyTorchModelHubMixin.push_to_hub``;
    ``dataset`` is recorded in ``config.json``."""
    hub = require("huggingface_hub", "hub", "pushing to the Hugging Face Hub")
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, dataset=dataset)
        try:
            api = hub.HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True)
            if branch is not None:
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message,
                revision=branch,
                create_pr=create_pr,
            )
        except Exception as err:  # as in download: one class per failure
            raise CheckpointError(
                f"cannot push to the Hugging Face Hub repo {repo_id!r} ({first_line(err)}); check "
                "the repo id, your token (hf auth login) and the connection"
            ) from err
    return str(getattr(commit, "commit_url", commit))
