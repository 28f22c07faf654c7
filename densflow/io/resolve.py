"""One way to name a model: :func:`load` (``DenseFlow.from_pretrained``) and :func:`locate`.

A *spec* is what a user types to name a model, tried in this order:

1. a **path that exists**: a model directory (``config.json`` + ``model.safetensors``, or one of
   the two files), a densflow checkpoint (``.pt``, converted or from training) or a run folder
   holding one (``checkpoint.pt``), an official run folder (``args.pickle`` +
   ``check/checkpoint.pt``) or its checkpoint file; a checkpoint file is told apart by content;
   (a folder that holds no model, such as a dataset folder ``cifar10``, gives way to the cached
   model of that name, if there is one);
2. a spec that **looks like a path** (it starts with ``/``, ``.`` or ``~``, has a file suffix such
   as ``.pt``, or its first folder exists here) but names nothing: "no such file or folder";
3. a **name** without a slash: the model directory ``<cache>/models/NAME`` of the weights cache
   (:mod:`densflow.io.weights`); ``"official"`` is the authors' model of the given ``dataset``;
4. ``owner/name``: a Hugging Face Hub repo (:mod:`densflow.io.hub`).

:func:`locate` finds what a spec names and the files loading it reads, without loading it, so that
a command can check its outputs against them first (:mod:`densflow.io.outputs`);
:meth:`ModelSource.load` then builds the model. When nothing matches, one line says what was tried.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..model import DenseFlow
from .checkpoint import FORMAT, CheckpointError, model_from_checkpoint, read_torch_file, validated
from .hub import download
from .official import locate_official, model_from_official, read_official_args
from .pretrained import (
    CACHE_ENV,
    CONFIG_NAME,
    NAME,
    WEIGHTS_NAME,
    cached_models,
    is_model_dir,
    models_dir,
    read_model_dir,
)

__all__ = ["LoadedModel", "ModelSource", "from_pretrained", "load", "locate"]

CHECKPOINT_NAME = "checkpoint.pt"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json", ".pickle", ".pkl",
                  ".zip", ".tar", ".gz", ".tgz")  # fmt: skip


class LoadedModel(NamedTuple):
    """A loaded model (eval mode) and the dataset it was trained on (``None`` if unrecorded)."""

    model: DenseFlow
    dataset: str | None


@dataclass(frozen=True)
class ModelSource:
    """What a spec names (:func:`locate`).

    Attributes:
        spec: the spec as given.
        kind: ``"model directory"``, ``"checkpoint"`` (a densflow or official checkpoint file,
            told apart by content) or ``"official run"`` (an official run folder).
        path: the folder or file.
        files: every file and folder loading it reads: no output may replace one of them.
        dataset: the dataset the model must have been trained on (``None``: any).
    """

    spec: str
    kind: str
    path: Path
    files: tuple[Path, ...]
    dataset: str | None = None

    def load(self, map_location: str | torch.device = "cpu") -> LoadedModel:
        """Build the model, on ``map_location``; refused if it records another dataset."""
        if self.kind == "model directory":
            model, info = read_model_dir(self.path, map_location)
            trained_on = info.get("dataset")
        else:
            model, trained_on = self._checkpoint(map_location)
        if self.dataset is not None and trained_on is not None and trained_on != self.dataset:
            raise CheckpointError(f"{self.spec} was trained on {trained_on}, not {self.dataset}")
        return LoadedModel(model.eval(), trained_on)

    def _checkpoint(self, map_location: str | torch.device) -> tuple[DenseFlow, str | None]:
        ckpt_file, args_file = locate_official(self.path)
        raw = read_torch_file(ckpt_file, map_location)
        if isinstance(raw, dict) and raw.get("format") == FORMAT:  # ours, by content
            ckpt = validated(raw, ckpt_file)
            train_config = ckpt.get("train_config")
            dataset = train_config.get("dataset") if isinstance(train_config, dict) else None
            return model_from_checkpoint(ckpt, ckpt_file, map_location), dataset
        model = model_from_official(raw, ckpt_file, args_file).to(map_location)
        return model, read_official_args(args_file).dataset if args_file is not None else None


def _looks_like_path(text: str) -> bool:
    if text.startswith(("/", ".", "~")) or "\\" in text or text.lower().endswith(_FILE_SUFFIXES):
        return True
    if "/" not in text:
        return not NAME.fullmatch(text)
    return not _HUB_ID.fullmatch(text) or Path(text.split("/")[0]).exists()


def _is_model_path(path: Path) -> bool:
    """Whether an existing ``path`` holds a model of one of the kinds :func:`_local` takes."""
    if path.is_file():
        return True
    return is_model_dir(path) or any(
        (path / name).is_file() for name in (CHECKPOINT_NAME, f"check/{CHECKPOINT_NAME}")
    )


def _local(spec: str, path: Path, dataset: str | None) -> ModelSource:
    """The source of an existing path."""
    if path.is_dir():
        if is_model_dir(path):
            files = (path, path / CONFIG_NAME, path / WEIGHTS_NAME)
            return ModelSource(spec, "model directory", path, files, dataset)
        if (path / "check" / CHECKPOINT_NAME).is_file() or (path / CHECKPOINT_NAME).is_file():
            ckpt, args = locate_official(path)
            files = (path, ckpt, *([args] if args is not None else []))
            kind = "official run" if args is not None else "checkpoint"
            return ModelSource(spec, kind, path, files, dataset)
        held = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            f"{path} is a folder but not a model: expected a model directory ({CONFIG_NAME} + "
            f"{WEIGHTS_NAME}), a run folder ({CHECKPOINT_NAME}) or an official run folder "
            f"(args.pickle + check/{CHECKPOINT_NAME}); it holds {held[:6] or 'nothing'}"
        )
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give a checkpoint or a model folder")
    if path.name in (CONFIG_NAME, WEIGHTS_NAME) and is_model_dir(path.parent):
        return _local(spec, path.parent, dataset)
    _, args = locate_official(path)
    files = (path, *([args] if args is not None else []))
    return ModelSource(spec, "checkpoint", path, files, dataset)


def locate(
    spec: str | os.PathLike,
    *,
    dataset: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> ModelSource:
    """What ``spec`` names (see the module), without loading it.

    Arguments:
        spec: the path, name or repo id.
        dataset: the dataset the model is for: needed by ``"official"``, and a model that records
            another dataset is refused by :meth:`ModelSource.load`.
        cache_dir: the weights cache for names (default ``$DENSFLOW_CACHE``, else
            ``~/.cache/densflow``), and the Hugging Face cache for repo ids (default the Hub
            client's own).
        revision, token, force_download, local_files_only: for a Hub repo id, passed to
            ``huggingface_hub.snapshot_download``.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    name = dataset if text == "official" and dataset else text
    cached = models_dir(cache_dir) / name if NAME.fullmatch(name) else None
    in_cache = cached is not None and is_model_dir(cached)
    if path.exists() and not (in_cache and not _is_model_path(path)):
        return _local(str(spec), path, dataset)  # a path wins, but not a data folder "cifar10"
    if text == "official" and dataset is None:
        raise CheckpointError(
            "the model 'official' needs its dataset: pass one of cifar10, imagenet32, "
            "imagenet64, celeba"
        )
    if text != "official" and _looks_like_path(text):
        raise CheckpointError(f"{text}: no such file or folder")
    if cached is not None:
        if in_cache:
            files = (cached, cached / CONFIG_NAME, cached / WEIGHTS_NAME)
            return ModelSource(str(spec), "model directory", cached, files, dataset)
        have = cached_models(cache_dir)
        raise CheckpointError(
            f"no file or folder {text}, and no model {name!r} in the cache "
            f"{models_dir(cache_dir)} (it holds {have or 'none'}): run densflow download weights "
            f"for the authors' models, or name the cache that has it (--cache-dir, ${CACHE_ENV})"
        )
    folder = download(
        text, revision=revision, cache_dir=cache_dir, token=token,
        force_download=force_download, local_files_only=local_files_only,
    )  # fmt: skip
    files = (folder, folder / CONFIG_NAME, folder / WEIGHTS_NAME)
    return ModelSource(str(spec), "model directory", folder, files, dataset)


def load(
    spec: str | os.PathLike,
    *,
    dataset: str | None = None,
    map_location: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> DenseFlow:
    """The model ``spec`` names (see the module), in eval mode on ``map_location``; the other
    keywords are :func:`locate`'s.

    Example:
        >>> import tempfile
        >>> from densflow import DenseFlow, DenseFlowConfig
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     DenseFlow(DenseFlowConfig.tiny()).save_pretrained(folder)
        ...     load(folder).config == DenseFlowConfig.tiny()
        True
    """
    source = locate(
        spec, dataset=dataset, cache_dir=cache_dir, revision=revision, token=token,
        force_download=force_download, local_files_only=local_files_only,
    )  # fmt: skip
    return source.load(map_location).model


def from_pretrained(
    cls: type[DenseFlow],
    id_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    map_location: str | torch.device = "cpu",
) -> DenseFlow:
    """``DenseFlow.from_pretrained``: :func:`load` with the Hugging Face keywords.

    ``id_or_path`` is a model directory, a checkpoint or run folder, a cached name
    (``"cifar10"``… after ``densflow download weights``) or a Hub repo id ``"owner/name"``
    (needs the ``hub`` extra); ``cache_dir`` … ``local_files_only`` are passed to the Hub client
    (``cache_dir`` is also the weights cache of names). Returns the model in eval mode, in the
    dtype it was saved in, on ``map_location``.
    """
    return load(
        id_or_path, map_location=map_location, cache_dir=cache_dir, revision=revision,
        token=token, force_download=force_download, local_files_only=local_files_only,
    )  # fmt: skip
