"""densflow model directories: the ecosystem's format for a trained DenseFlow.

A model directory holds two files and nothing that can run code:

* ``config.json`` — the :class:`~densflow.model.DenseFlowConfig` fields, plus ``model_type``
  (``"densflow"``), ``format_version``, the ``provenance`` of the code that wrote it
  (:func:`~densflow.utils.provenance.provenance`) and, when known, the ``dataset`` the model was
  trained on and its ``source``;
* ``model.safetensors`` — the state dict in the `safetensors <https://huggingface.co/docs/
  safetensors>`_ format, written and read by the ``safetensors`` package (memory-mapped: loading
  a model does not read the file into memory first).

It is the layout ``huggingface_hub``'s ``PyTorchModelHubMixin`` writes, so a directory uploads to
the Hugging Face Hub as it is (:mod:`densflow.io.hub`). As there, :func:`save_pretrained` writes its
two files into a folder, new or existing, and leaves every other file in it alone (a cloned Hub
repository keeps its ``README.md``). Each file is replaced atomically, the weights first: a crash in
between leaves the new weights beside the previous ``config.json``, which loads only when it fits
them. Training checkpoints (:mod:`densflow.io.checkpoint`) stay ``torch.save`` files: they carry
the optimizer state.

Names resolve against a cache, ``$DENSFLOW_CACHE`` or else ``~/.cache/densflow``: the model
``"cifar10"`` is the directory ``<cache>/models/cifar10``, which ``densflow download weights``
(:mod:`densflow.io.weights`) fills with the authors' released models.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..config import DenseFlowConfig
from ..model import DenseFlow
from ..utils.provenance import provenance
from .checkpoint import CheckpointError, config_from, load_weights
from .files import atomic_write_bytes, atomic_write_text, write_error

__all__ = [
    "CACHE_ENV",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "cache_dir",
    "cached_models",
    "is_model_dir",
    "models_dir",
    "read_model_dir",
    "read_pretrained_config",
    "save_pretrained",
]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_TYPE, FORMAT_VERSION = "densflow", 1
CACHE_ENV = "DENSFLOW_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/densflow``)."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""What a model name in the cache looks like."""
_INFO_KEYS = ("model_type", "format_version", "dataset", "source", "provenance")
_MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes
# The dtypes a DenseFlow computes in: its weights are stored in one of them (its buffers in their
# own integer types). Others the safetensors format holds (float8, complex, unsigned) are refused.
_FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_INTEGERS = {"I64", "I32", "I16", "I8", "U8", "BOOL"}


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
    return sorted(p.name for p in folder.iterdir() if NAME.fullmatch(p.name) and is_model_dir(p))


# ----------------------------------------------------------------------------- save
def _weights(model: DenseFlow) -> bytes:
    """The model's state dict in the safetensors format (tensors that share memory are stored
    once each, as the format requires)."""
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        state[name] = t.clone() if key in seen and t.numel() else t
        seen.add(key)
    return safetensors.torch.save(state, metadata={"format": "pt"})


def save_pretrained(
    model: DenseFlow,
    directory: str | os.PathLike,
    *,
    dataset: str | None = None,
    source: str | None = None,
    staging: str | os.PathLike | None = None,
) -> None:
    """Write ``model`` into the folder ``directory`` as ``config.json`` + ``model.safetensors``.

    The folder is created if needed; other files in it are left alone. Each file is replaced
    atomically (see the module), with the mode of the file it replaces.

    Arguments:
        model: the model to save (its buffers, e.g. ActNorm's ``initialized``, are saved too).
        directory: the model directory.
        dataset: the dataset the model was trained on, recorded in ``config.json``.
        source: where the weights came from (free text), recorded in ``config.json``.
        staging: the folder of the temporaries (default: ``directory``), see
            :func:`~densflow.io.files.atomic_write`.
    """
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} is a file; a model directory is a folder: give its path")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(target, err, action="create") from err
    config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION}
    config.update(model.config.to_dict())
    config.update({k: v for k, v in (("dataset", dataset), ("source", source)) if v is not None})
    config["provenance"] = provenance()
    atomic_write_bytes(target / WEIGHTS_NAME, _weights(model), staging=staging)
    atomic_write_text(target / CONFIG_NAME, json.dumps(config, indent=2) + "\n", staging=staging)


# ----------------------------------------------------------------------------- load
def read_pretrained_config(directory: str | os.PathLike) -> tuple[DenseFlowConfig, dict]:
    """The model config of a model directory, and its other entries (``dataset``, ``source``…)."""
    path = Path(directory) / CONFIG_NAME
    try:
        size = path.stat().st_size
        if size > _MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{path} is {size:,} bytes, not a densflow config.json (a few hundred bytes)"
            )
        raw = json.loads(path.read_text())
    except (OSError, UnicodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise CheckpointError(f"cannot read {path}: {reason}") from err
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
    return config_from(raw, path), info


def _read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, memory-mapped; a malformed file (bad JSON header,
    offsets past the end or overlapping, …) or a dtype a model cannot use is refused."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            dtypes = {name: f.get_slice(name).get_dtype() for name in names}
            odd = sorted(f"{n} ({d})" for n, d in dtypes.items() if d not in {*_FLOATS, *_INTEGERS})
            if odd:
                raise CheckpointError(
                    f"{path} stores {', '.join(odd[:3])}: a DenseFlow computes in float64, "
                    "float32, float16 or bfloat16 (and keeps integer buffers); save it again "
                    "with save_pretrained"
                )
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, KeyError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a valid safetensors file: {reason}") from err


def read_model_dir(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DenseFlow, dict]:
    """The model of a model directory, in eval mode, in the floating-point dtype it was saved
    in, on ``map_location``; and its ``config.json``'s other entries (``dataset``, ``source``)."""
    directory = Path(directory)
    config, info = read_pretrained_config(directory)
    weights = directory / WEIGHTS_NAME
    state = _read_weights(weights)
    model = DenseFlow(config)
    mine = model.state_dict()
    kinds = sorted(
        f"{k} ({state[k].dtype})" for k in set(state) & set(mine)
        if state[k].is_floating_point() != mine[k].is_floating_point()
    )  # fmt: skip
    if kinds:
        raise CheckpointError(
            f"{weights}: {', '.join(kinds[:3])} should hold the other kind of numbers (floating "
            "point for weights, integers for counters); save the model again"
        )
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(floats) == 1:  # the saved precision, whatever the default dtype
        model.to(floats.pop())
    load_weights(model, state, weights)
    return model.eval().to(map_location), info
