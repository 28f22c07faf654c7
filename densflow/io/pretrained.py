"""densflow model directories: the ecosystem's format for a trained DenseFlow.

A model directory holds two files and nothing that can run code:

* ``config.json`` — the :class:`~densflow.model.DenseFlowConfig` fields, plus ``model_type``
  (``"densflow"``), ``format_version`` and, when known, the ``dataset`` the model was trained on
  and its ``source``;
* ``model.safetensors`` — the state dict in the `safetensors <https://huggingface.co/docs/
  safetensors>`_ format (a little-endian u64 header length, a JSON header naming each tensor's
  dtype, shape and byte range, then the raw bytes: no pickle).

It is the layout of ``huggingface_hub``'s ``PyTorchModelHubMixin`` (``config.json`` +
``model.safetensors``), so a directory uploads to the Hugging Face Hub as it is and
:func:`from_pretrained` reads it back from a Hub repo id. Training checkpoints
(:mod:`densflow.io.checkpoint`) stay ``torch.save`` files: they carry the optimizer state.

The safetensors codec (:mod:`densflow.io.safetensors_codec`) is a few dozen lines of plain Python
over ``torch``; files it writes load with ``safetensors.torch.load_file`` and the reverse (tests
check both), so loading a model needs no compiled package beside torch.

Names resolve against a cache, ``$DENSFLOW_CACHE`` or else ``~/.cache/densflow``: the model
``"cifar10"`` is the directory ``<cache>/models/cifar10``, which ``python -m densflow download
weights`` (:mod:`densflow.io.weights`) fills with the authors' released models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

from ..model import DenseFlow, DenseFlowConfig
from .checkpoint import CheckpointError, load_any_checkpoint
from .safetensors_codec import load_safetensors, save_safetensors

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "CACHE_ENV",
    "cache_dir",
    "models_dir",
    "cached_models",
    "save_pretrained",
    "from_pretrained",
    "read_pretrained_config",
    "is_model_dir",
    "resolve_model",
    "save_safetensors",
    "load_safetensors",
]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_TYPE, FORMAT_VERSION = "densflow", 1
CACHE_ENV = "DENSFLOW_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/densflow``)."""
_INFO_KEYS = ("model_type", "format_version", "dataset", "source")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ----------------------------------------------------------------------------- cache
def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The densflow cache: ``root``, else ``$DENSFLOW_CACHE``, else ``~/.cache/densflow``."""
    if root is None:
        root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "densflow"
    return Path(root).expanduser()


def models_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of the cached model directories (``<cache>/models``)."""
    return cache_dir(root) / "models"


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def cached_models(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the complete model directories in the cache."""
    folder = models_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _NAME.fullmatch(p.name) and is_model_dir(p))


# ----------------------------------------------------------------------------- save
def _commit_dir(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` folder onto ``target``; the rename is the commit point."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_pretrained(
    model: DenseFlow,
    directory: str | os.PathLike,
    *,
    dataset: str | None = None,
    source: str | None = None,
) -> Path:
    """Write ``model`` as a model directory (``config.json`` + ``model.safetensors``).

    Both files are written into a hidden folder beside ``directory``, flushed to disk, and the
    folder is then renamed onto ``directory``: a crash leaves the previous directory or the new
    one, never half of one. An existing ``directory`` is replaced only when it holds nothing but a
    model directory's two files.

    Arguments:
        model: the model to save (its buffers, e.g. ActNorm's ``initialized``, are saved too).
        directory: where the model directory goes.
        dataset: the dataset the model was trained on, recorded in ``config.json``.
        source: where the weights came from (free text), recorded in ``config.json``.

    Returns ``directory`` as a :class:`~pathlib.Path`.
    """
    target = Path(directory).expanduser()
    if target.exists():
        extra = (
            sorted(p.name for p in target.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME))
            if target.is_dir()
            else [target.name]
        )
        if extra:
            raise CheckpointError(
                f"{target} exists and holds {extra[:5]} besides a model directory's files; "
                "save_pretrained replaces only a model directory: choose an empty or new path"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION}
        config.update(model.config.to_dict())
        if dataset is not None:
            config["dataset"] = dataset
        if source is not None:
            config["source"] = source
        with open(tmp / CONFIG_NAME, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        save_safetensors(model.state_dict(), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        _commit_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ----------------------------------------------------------------------------- load
def read_pretrained_config(directory: str | os.PathLike) -> tuple[DenseFlowConfig, dict]:
    """The model config of a model directory, and its other entries (``dataset``, ``source``…)."""
    path = Path(directory) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"{path} is not a densflow config (model_type is "
            f"{raw.get('model_type') if isinstance(raw, dict) else None!r}, expected "
            f"{MODEL_TYPE!r})"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {raw.get('format_version')!r}; this densflow reads "
            f"version {FORMAT_VERSION}: upgrade densflow"
        )
    info = {k: raw.pop(k) for k in _INFO_KEYS if k in raw}
    try:
        return DenseFlowConfig.from_dict(raw), info
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} does not describe a DenseFlowConfig: {err}") from err


def _load_dir(directory: Path, map_location: str | torch.device) -> DenseFlow:
    config, _ = read_pretrained_config(directory)
    state_dict, _ = load_safetensors(directory / WEIGHTS_NAME)
    model = DenseFlow(config)
    floats = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    if len(floats) == 1:  # the saved precision, whatever the default dtype
        model.to(floats.pop())
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME} does not fit its own {CONFIG_NAME}: {first}"
        ) from err
    return model.eval().to(map_location)


def _kind(spec: str | os.PathLike) -> str:
    """What a user's ``spec`` names: ``"model_dir"``, ``"folder"`` (a folder that is not a model
    directory), ``"file"``, ``"name"`` (in the cache), ``"hub"`` (a Hub repo id) or ``"missing"``
    (a path where nothing is)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return "model_dir" if is_model_dir(path) else "folder"
    if path.is_file():
        return "file"
    text = str(spec)
    if _NAME.fullmatch(text):
        return "name"
    # a Hub repo id is "owner/name": one slash, no backslash, not starting like a path
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text:
        return "missing"
    return "hub"


def _from_hub(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise CheckpointError(
            f"{repo_id!r} is neither a local directory nor a cached name, and loading it from "
            'the Hugging Face Hub needs huggingface_hub: pip install -e ".[hub]" (or pip '
            "install huggingface_hub)"
        ) from err
    try:
        folder = snapshot_download(
            repo_id=repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]
        )
    except Exception as err:  # the Hub raises a different class for each failure
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {first}); "
            "check the repo id and the connection"
        ) from err
    if not is_model_dir(folder):
        raise CheckpointError(
            f"the Hugging Face Hub repo {repo_id!r} has no {CONFIG_NAME} + {WEIGHTS_NAME}: it is "
            "not a densflow model"
        )
    return Path(folder)


def _locate(
    name_or_dir: str | os.PathLike, root: str | os.PathLike | None, revision: str | None
) -> Path:
    kind, path, spec = _kind(name_or_dir), Path(name_or_dir).expanduser(), str(name_or_dir)
    if kind == "model_dir":
        return path
    if kind == "folder":
        raise CheckpointError(
            f"{path} is a folder without {CONFIG_NAME} and {WEIGHTS_NAME}: not a densflow "
            "model directory (an official run folder loads with densflow.load_official)"
        )
    if kind == "file":
        raise CheckpointError(
            f"{path} is a file; from_pretrained takes a model directory ({CONFIG_NAME} + "
            f"{WEIGHTS_NAME}), a cached name or a Hub repo id (a .pt checkpoint loads with "
            "densflow.load_model)"
        )
    if kind == "name":
        cached = models_dir(root) / spec
        if is_model_dir(cached):
            return cached
        have = cached_models(root)
        raise CheckpointError(
            f"no model {spec!r} in the cache {models_dir(root)} (it holds "
            f"{have if have else 'none'}): run `python -m densflow download weights` to fetch "
            f"the authors' models, or set ${CACHE_ENV} to the cache that has them"
        )
    if kind == "missing":
        raise CheckpointError(f"no model directory at {path}")
    return _from_hub(spec, revision)


def from_pretrained(
    name_or_dir: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    cache: str | os.PathLike | None = None,
    revision: str | None = None,
) -> DenseFlow:
    """Load a DenseFlow from a model directory, a cached name or a Hugging Face Hub repo.

    Arguments:
        name_or_dir: a model directory (``config.json`` + ``model.safetensors``); a name in the
            cache (``"cifar10"``, ``"imagenet32"``, ``"imagenet64"``, ``"celeba"`` after
            ``python -m densflow download weights``); or a Hub repo id ``"owner/name"``
            (needs ``huggingface_hub``).
        map_location: device of the returned model.
        cache: the cache folder (default: ``$DENSFLOW_CACHE`` or ``~/.cache/densflow``).
        revision: the Hub revision (branch, tag or commit) of a repo id.

    Returns the model in eval mode, in the dtype it was saved in, on ``map_location``.
    """
    return _load_dir(_locate(name_or_dir, cache, revision), map_location)


# ----------------------------------------------------------------------------- resolve
def resolve_model(
    spec: str | os.PathLike | DenseFlow,
    dataset: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
    cache: str | os.PathLike | None = None,
) -> tuple[DenseFlow, str | None]:
    """The model a user names, and the dataset it was trained on (``None`` when unrecorded).

    ``spec`` may be:

    * ``"official"``: the authors' model for ``dataset``, from the cache;
    * a cached name (``"cifar10"``…) or a model directory;
    * a densflow checkpoint file (``.pt``, converted or from training);
    * an official run folder (``args.pickle`` + ``check/checkpoint.pt``) or its checkpoint file;
    * a Hugging Face Hub repo id;
    * a :class:`~densflow.DenseFlow`, returned as it is.

    A model that records its dataset and disagrees with ``dataset`` is an error. Models are
    returned in eval mode, on ``map_location``.
    """
    if isinstance(spec, DenseFlow):
        return spec, dataset
    if str(spec) == "official":
        if dataset is None:
            raise CheckpointError(
                "checkpoint='official' needs the dataset: pass one of cifar10, imagenet32, "
                "imagenet64, celeba"
            )
        spec = dataset
    path, kind = Path(spec).expanduser(), _kind(spec)
    trained_on: str | None
    if kind in ("file", "folder"):  # a checkpoint file or an official run folder
        model, trained_on = load_any_checkpoint(path, map_location)
    elif kind == "missing":
        raise CheckpointError(
            f"no checkpoint at {path}: expected a densflow checkpoint (.pt), an official run "
            "folder (args.pickle + check/checkpoint.pt), a model directory, a cached name "
            "(cifar10, imagenet32, imagenet64, celeba) or a Hub repo id"
        )
    else:
        folder = _locate(spec, cache, None)
        model = _load_dir(folder, map_location)
        trained_on = read_pretrained_config(folder)[1].get("dataset")
    if dataset is not None and trained_on is not None and trained_on != dataset:
        raise CheckpointError(f"{spec} was trained on {trained_on}, not {dataset}")
    return model.eval(), trained_on
