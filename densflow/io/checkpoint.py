"""densflow checkpoint files: the one place that writes and reads them, atomically and
validated.

A densflow checkpoint is a ``torch.save``d dict (tensors and plain values only, so that it loads
with ``weights_only=True``):

* every checkpoint: ``format`` (``"densflow"``), ``version``, ``config`` (a
  :class:`~densflow.model.DenseFlowConfig` as a plain dict) and ``model`` (the state dict);
* a training checkpoint (:func:`save_training_checkpoint`) adds ``train_config`` (the run's
  ``TrainConfig`` as a dict), ``optimizer`` (its state dict), ``progress`` (the position and the
  running sums of :class:`TrainingState`), ``data_order`` (``world_size``: the sharding of the
  epoch's order) and ``rng`` (the global torch and CUDA generator states).

:func:`load_model` reads the model out of either kind, :func:`read_training_checkpoint` the state
a run resumes from, and :func:`load_any_checkpoint` also an official DenseFlow run.
"""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model import DenseFlow, DenseFlowConfig
from ..utils.errors import InputError

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "TrainingCheckpoint",
    "TrainingState",
    "atomic_save",
    "check_torch_file",
    "save_model",
    "load_model",
    "load_any_checkpoint",
    "nonfinite_entries",
    "read_checkpoint",
    "read_training_checkpoint",
    "refuse_nonfinite",
    "restore_rng",
    "save_training_checkpoint",
    "training_checkpoint",
    "temporaries_of",
    "model_from_checkpoint",
    "FORMAT",
    "VERSION",
]

FORMAT, VERSION = "densflow", 1


class CheckpointError(InputError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint the system could not write (a full disk, a folder without write access);
    the file it would have replaced is left as it was. ``errno`` is the system's."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return str(self.args[0]) if self.args else ""


TEMP_SUFFIX = ".tmp"
"""The ending of :func:`atomic_save`'s temporaries, named ``.NAME.<random>.tmp`` beside NAME."""


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporaries that :func:`atomic_save` of ``path`` leaves behind only when its process
    is killed mid-write (any other failure removes its own)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))


def nonfinite_entries(state: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [
        name
        for name, t in state.items()
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    A system error (a full disk, no write access) raises :class:`CheckpointWriteError`, after
    removing the temporary.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, CheckpointError):
            reason = err.strerror or str(err)
            kept = f"{path} is left as it was" if path.exists() else "nothing was written"
            error = CheckpointWriteError(
                f"cannot write {path}: {reason}; {kept}. Free disk space or fix the folder's "
                "permissions, then run the same command again"
            )
            error.errno = err.errno
            raise error from err
        raise


def _checkpoint_dict(model: DenseFlow, **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        **extra,
    }


def save_model(model: DenseFlow, path: str | os.PathLike, **extra: Any) -> None:
    """Save ``model`` (config + state dict, plus any ``extra`` entries) atomically."""
    atomic_save(_checkpoint_dict(model, **extra), path)


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for torn or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: {err.__class__.__name__}: {err}. The file is corrupt "
            "or not a densflow checkpoint (official DenseFlow checkpoints load with "
            "densflow.load_official)"
        ) from err


def _validate(ckpt: Any, path: Path) -> dict:
    """``ckpt`` if it is a densflow checkpoint dict this version reads, else why not."""
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
        newer = isinstance(ckpt.get("version"), int) and ckpt["version"] > VERSION
        raise CheckpointError(
            f"{path} has densflow checkpoint version {ckpt.get('version')!r}, this densflow "
            f"reads version {VERSION}" + ("; update densflow to read it" if newer else "")
        )
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} has no '{key}' entry")
    return ckpt


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a densflow checkpoint dict (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return _validate(_torch_load(path, map_location), path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DenseFlow:
    """Rebuild the model stored in a densflow checkpoint (converted or from training)."""
    return model_from_checkpoint(read_checkpoint(path, map_location), path, map_location)


def model_from_checkpoint(
    ckpt: dict, path: str | os.PathLike = "<checkpoint>", map_location: str | torch.device = "cpu"
) -> DenseFlow:
    """The model of a checkpoint dict already read by :func:`read_checkpoint`."""
    try:
        config = DenseFlowConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config is not a valid DenseFlowConfig: {err}") from err
    model = DenseFlow(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the state dict does not fit its own config: {err}") from err
    return model.to(map_location)


# ----------------------------------------------------------------------------- training checkpoints


@dataclass
class TrainingState:
    """Where a run stands after ``step`` steps: enough, with the model and the optimizer, to go
    on exactly as if it had not stopped.

    Attributes:
        step: global steps done.
        epoch, step_in_epoch: the position of the next step.
        nonfinite_run: consecutive skipped (non-finite) steps up to now.
        epoch_sum, epoch_count: the running sum of the epoch's losses (0-dim float64) and its
            count.
        metrics_bytes: the size of ``metrics.jsonl`` at this point.
        world_size: processes that trained (the sharding of the epoch's data order).
    """

    step: int
    epoch: int
    step_in_epoch: int
    nonfinite_run: int
    epoch_sum: Tensor
    epoch_count: int
    metrics_bytes: int
    world_size: int


@dataclass
class TrainingCheckpoint:
    """A training checkpoint as read by :func:`read_training_checkpoint`."""

    model: dict[str, Tensor]
    train_config: dict[str, Any]
    optimizer: dict[str, Any]
    state: TrainingState
    rng: dict[str, Any]


def training_checkpoint(
    model: DenseFlow,
    *,
    train_config: dict[str, Any],
    optimizer: dict[str, Any],
    state: TrainingState,
) -> dict[str, Any]:
    """The dict :func:`save_training_checkpoint` writes. It holds the live tensors of ``model``,
    ``optimizer`` and ``state`` (the generators' states are copies): to write it while training
    goes on, write a copy (:class:`~densflow.training.checkpoint_writer.CheckpointWriter`)."""
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    progress = {
        "step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
        "nonfinite_run": state.nonfinite_run, "epoch_sum": state.epoch_sum.detach().cpu(),
        "epoch_count": state.epoch_count, "metrics_bytes": state.metrics_bytes,
    }  # fmt: skip
    return _checkpoint_dict(
        model,
        train_config=train_config,
        optimizer=optimizer,
        progress=progress,
        data_order={"world_size": state.world_size},
        rng={"torch": torch.get_rng_state(), "cuda": cuda_rng},
    )


def refuse_nonfinite(model_state: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` when a tensor of ``model_state`` is not finite: a run
    resumed from such a checkpoint could never recover, and it would replace the last good one
    at ``path``."""
    bad = nonfinite_entries(model_state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        kept = f"{path} is left as it was" if Path(path).exists() else "no checkpoint was written"
        raise CheckpointError(
            f"refusing to write {path}: non-finite values in {shown}; {kept}. Start a new run "
            "from the last good checkpoint with a lower lr (--init-from CHECKPOINT)"
        )


def save_training_checkpoint(
    path: str | os.PathLike,
    model: DenseFlow,
    *,
    train_config: dict[str, Any],
    optimizer: dict[str, Any],
    state: TrainingState,
) -> None:
    """Write a training checkpoint atomically: a crash leaves the previous one intact.

    Model tensors that are not finite raise :class:`CheckpointError` and nothing is written
    (:func:`refuse_nonfinite`).
    """
    ckpt = training_checkpoint(model, train_config=train_config, optimizer=optimizer, state=state)
    refuse_nonfinite(ckpt["model"], path)
    atomic_save(ckpt, path)


def read_training_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> TrainingCheckpoint:
    """The state a run resumes from (also from checkpoints of earlier versions, which stored a
    few entries more)."""
    ckpt = read_checkpoint(path, map_location)
    missing = [k for k in ("train_config", "optimizer", "progress", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {', '.join(missing)}); a converted model "
            "cannot be resumed, start a new run in another out_dir"
        )
    p, world_size = ckpt["progress"], ckpt.get("data_order", {}).get("world_size", 1)
    state = TrainingState(
        step=p["step"], epoch=p["epoch"], step_in_epoch=p["step_in_epoch"],
        nonfinite_run=p["nonfinite_run"], epoch_sum=p["epoch_sum"], epoch_count=p["epoch_count"],
        metrics_bytes=p["metrics_bytes"], world_size=world_size,
    )  # fmt: skip
    return TrainingCheckpoint(
        ckpt["model"], ckpt["train_config"], ckpt["optimizer"], state, ckpt["rng"]
    )


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the global torch (and CUDA, where recorded and present) generators to a checkpoint's."""
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def check_torch_file(path: str | os.PathLike) -> None:
    """Refuse a file that ``torch.save`` cannot have written, from its first bytes: a zip
    archive (or, before torch 1.6, a pickle stream of protocol 2 or later)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is not a checkpoint (neither a zip archive nor a pickle, which torch.save "
            "writes); expected a densflow checkpoint (.pt) or an official DenseFlow run folder "
            "or checkpoint: check the path"
        )


def load_any_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DenseFlow, str | None]:
    """A model from a densflow checkpoint or an official run folder / checkpoint file, and the
    dataset it was trained on when the files record it.

    The kind is decided by content: a file that ``torch.load`` reads as a dict with
    ``format="densflow"`` is ours (and any failure to use it is reported as such), a folder or
    any other ``torch.save`` file goes to :func:`~densflow.io.official.load_official`, and a file
    that is neither a zip archive nor a pickle is not a checkpoint."""
    from .official import load_official, locate_official, read_official_args

    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: expected a densflow checkpoint (.pt) or an "
            "official DenseFlow run folder (args.pickle + check/checkpoint.pt)"
        )
    if path.is_file():
        check_torch_file(path)
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            ckpt = None  # objects beyond tensors: not ours, the official loader explains
        except Exception as err:  # the real reason: a device, a torn file...
            raise CheckpointError(
                f"cannot read checkpoint {path}: {err.__class__.__name__}: {err}"
            ) from err
        # Ours by content: a dict with the densflow format marker; its own errors are reported.
        if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
            ckpt = _validate(ckpt, path)
            dataset = (ckpt.get("train_config") or {}).get("dataset")
            return model_from_checkpoint(ckpt, path, device), dataset
    model = load_official(path, map_location=device)
    _, args_file = locate_official(path)
    return model, read_official_args(args_file).dataset if args_file is not None else None
