"""The state a training run resumes from, as stored in its checkpoint.

A training checkpoint is a densflow checkpoint (:mod:`densflow.io.checkpoint`: ``format``,
``version``, ``config``, ``model``) with the entries of the run added: ``train_config`` (the run's
:class:`~densflow.training.TrainConfig` as a dict), ``optimizer`` (its state dict), ``progress``
(the position and the running sums of :class:`TrainingState`), ``data_order`` (``world_size``: the
sharding of the epoch's data order) and ``rng`` (the global torch and CUDA generator states).

:func:`read_training_checkpoint` checks every one of them, so that a damaged or edited checkpoint
is refused in one line before the run changes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.checkpoint import CheckpointError, checkpoint_dict, nonfinite_entries, read_checkpoint
from ..io.files import atomic_save
from ..model import DenseFlow

__all__ = [
    "TrainingCheckpoint",
    "TrainingState",
    "read_training_checkpoint",
    "refuse_nonfinite",
    "restore_rng",
    "save_training_checkpoint",
    "training_checkpoint",
]

_COUNTS = ("step", "epoch", "step_in_epoch", "nonfinite_run", "epoch_count", "metrics_bytes")


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
    return checkpoint_dict(
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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rng_state(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _check(ckpt: dict, path: str | os.PathLike) -> None:
    """Every entry of a training checkpoint, of the type and shape the run uses."""
    missing = [k for k in ("train_config", "optimizer", "progress", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {', '.join(missing)}); a converted model "
            "cannot be resumed, start a new run in another out_dir"
        )
    progress, rng = ckpt["progress"], ckpt["rng"]
    problems = []
    if not isinstance(progress, dict):
        problems.append(f"its progress is a {type(progress).__name__}, not a dict")
    else:
        problems += [f"progress has no {k}" for k in _COUNTS if k not in progress]
        problems += [
            f"progress {k} is {progress[k]!r}, not a count"
            for k in _COUNTS
            if k in progress and not _is_count(progress[k])
        ]
        total = progress.get("epoch_sum")
        if not (isinstance(total, Tensor) and total.numel() == 1 and total.is_floating_point()):
            problems.append("progress epoch_sum is not a number")
    expected = torch.get_rng_state().shape
    if not isinstance(rng, dict) or not _rng_state(rng.get("torch")):
        problems.append("its rng has no torch generator state")
    elif rng["torch"].shape != expected:
        problems.append(f"its torch generator state has shape {tuple(rng['torch'].shape)}")
    elif rng.get("cuda") is not None and not (
        isinstance(rng["cuda"], (list, tuple)) and all(_rng_state(s) for s in rng["cuda"])
    ):
        problems.append("its CUDA generator states are not byte tensors")
    for key in ("train_config", "optimizer"):
        if not isinstance(ckpt[key], dict):
            problems.append(f"its {key} is a {type(ckpt[key]).__name__}, not a dict")
    order = ckpt.get("data_order", {})
    if not isinstance(order, dict) or not _is_count(order.get("world_size", 1)):
        problems.append("its data_order has no world size")
    if problems:
        raise CheckpointError(
            f"{path} is damaged: {'; '.join(problems[:3])}; it cannot be resumed: start a new run "
            f"in another out_dir, with --init-from {path} to keep its weights"
        )


def read_training_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> TrainingCheckpoint:
    """The state a run resumes from (also from checkpoints of earlier versions, which stored a
    few entries more), every entry checked."""
    ckpt = read_checkpoint(path, map_location)
    _check(ckpt, path)
    p, world_size = ckpt["progress"], ckpt.get("data_order", {}).get("world_size", 1)
    state = TrainingState(
        step=p["step"], epoch=p["epoch"], step_in_epoch=p["step_in_epoch"],
        nonfinite_run=p["nonfinite_run"], epoch_sum=p["epoch_sum"], epoch_count=p["epoch_count"],
        metrics_bytes=p["metrics_bytes"], world_size=world_size,
    )  # fmt: skip
    return TrainingCheckpoint(
        ckpt["model"], current_train_config(ckpt["train_config"]), ckpt["optimizer"], state,
        ckpt["rng"],
    )  # fmt: skip


# What earlier versions stored under other names: a training config's renamed or removed fields
# (old -> new; None: dropped) and the model presets' old names.
_RENAMED_FIELDS = {"iw_chunk_size": "chunk_size", "pin_memory": None}
_RENAMED_MODELS = {"paper": "denseflow-74-10"}


def current_train_config(stored: Any) -> Any:
    """A checkpoint's stored training config in this version's field and preset names."""
    if not isinstance(stored, dict):
        return stored  # refused, with the reason, where it is read
    current = dict(stored)
    for old, new in _RENAMED_FIELDS.items():
        if old in current:
            value = current.pop(old)
            if new is not None:
                current.setdefault(new, value)
    if current.get("model") in _RENAMED_MODELS:
        current["model"] = _RENAMED_MODELS[current["model"]]
    return current


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the global torch (and CUDA, where recorded and present) generators to a checkpoint's."""
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
