"""densflow checkpoint files: written atomically, validated on load.

A densflow checkpoint is a ``torch.save``d dict with at least ``format`` (``"densflow"``),
``version``, ``config`` (a :class:`~densflow.model.DenseFlowConfig` as a plain dict) and
``model`` (the state dict). Training checkpoints add optimizer, scheduler and RNG state under
other keys; :func:`load_model` reads the model out of either kind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .model import DenseFlow, DenseFlowConfig

__all__ = [
    "CheckpointError",
    "atomic_save",
    "save_model",
    "load_model",
    "read_checkpoint",
    "model_from_checkpoint",
    "FORMAT",
    "VERSION",
]

FORMAT, VERSION = "densflow", 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: DenseFlow, path: str | os.PathLike, **extra: Any) -> None:
    """Save ``model`` (config + state dict, plus any ``extra`` entries) atomically."""
    atomic_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "config": model.config.to_dict(),
            "model": model.state_dict(),
            **extra,
        },
        path,
    )


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a densflow checkpoint dict (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for torn or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: {err.__class__.__name__}: {err}. The file is corrupt "
            "or "
            "not a densflow checkpoint (official DenseFlow checkpoints load with "
            "densflow.load_official)"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = (
            " It looks like an official DenseFlow checkpoint: use densflow.load_official."
            if (isinstance(ckpt, dict) and "model" in ckpt and "current_epoch" in ckpt)
            else ""
        )
        raise CheckpointError(
            f"{path} is not a densflow checkpoint (no format='{FORMAT}' entry).{hint}"
        )
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')}, expected {VERSION}"
        )
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} has no '{key}' entry")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DenseFlow:
    """Rebuild the model stored in a densflow checkpoint (converted or from training)."""
    return model_from_checkpoint(read_checkpoint(path, map_location), path, map_location)


def model_from_checkpoint(
    ckpt: dict, path: str | os.PathLike = "<checkpoint>", map_location: str | torch.device = "cpu"
) -> DenseFlow:
    """The model of a checkpoint dict already read by :func:`read_checkpoint`."""
    model = DenseFlow(DenseFlowConfig.from_dict(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the state dict does not fit its own config: {err}") from err
    return model.to(map_location)
