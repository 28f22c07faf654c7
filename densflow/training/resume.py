"""Starting from a checkpoint: resuming a run exactly, or a new run from another run's weights.

A run resumes from its own ``out_dir/checkpoint.pt`` only when every setting that changes what is
learned is the checkpoint's (:data:`~densflow.training.config.RESUMABLE_CHANGES` lists the others)
and its weights are finite. ``init_from`` takes only the model weights of any model of the same
architecture (a checkpoint, a model directory, a cached name: :func:`densflow.io.load`): the
optimizer, the schedule and the step count start afresh. Each refusal is one
:class:`~densflow.io.checkpoint.CheckpointError` line that says how to go on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..io.checkpoint import CheckpointError, load_weights, nonfinite_entries
from ..io.resolve import locate
from ..model import DenseFlow
from .config import RESUMABLE_CHANGES, TrainConfig
from .state import TrainingCheckpoint, read_training_checkpoint

__all__ = ["load_init_weights", "load_resumed", "read_resumable"]


def read_resumable(
    path: Path, config: TrainConfig, device: torch.device
) -> TrainingCheckpoint | None:
    """The checkpoint at ``path`` that the run of ``config`` resumes from (``None`` when there is
    none), refused when resume is off, when it was written with other settings or when it holds
    non-finite weights."""
    if not path.exists():
        return None
    if not config.resume:
        raise CheckpointError(
            f"{path} exists and resume is off; choose another out_dir, or resume that run "
            "(--resume)"
        )
    ckpt = read_training_checkpoint(path, map_location=device)
    try:
        saved = TrainConfig.from_dict(ckpt.train_config).to_dict()
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path} records a training configuration this version refuses ({err}); start a new "
            f"run in another out_dir, with --init-from {path} to keep its weights"
        ) from err
    now = config.to_dict()
    changed = [
        f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now"
        for k in now
        if k not in RESUMABLE_CHANGES and saved[k] != now[k]
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume {path} with a different configuration ({'; '.join(changed)}); use "
            "another out_dir"
        )
    bad = nonfinite_entries(ckpt.model)
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights ({', '.join(bad[:3])}) and cannot be resumed; "
            "start a new run in another out_dir with --init-from an earlier, finite checkpoint"
        )
    return ckpt


def load_resumed(
    model: DenseFlow, optimizer: torch.optim.Optimizer, ckpt: TrainingCheckpoint, path: Path
) -> None:
    """Load the model and optimizer state of ``ckpt`` (read from ``path``); what does not fit
    is refused in one line."""
    load_weights(model, ckpt.model, path)
    try:
        optimizer.load_state_dict(ckpt.optimizer)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path} holds an optimizer state that does not fit the model ({err}); start a new "
            "run in another out_dir, with --init-from to keep its weights"
        ) from err


def load_init_weights(model: DenseFlow, spec: str, device: torch.device) -> None:
    """A new run's starting point: load into ``model`` the weights of the model ``spec`` names
    (anything :func:`densflow.io.load` takes: a checkpoint, a model directory, a cached name...),
    which must be ``model``'s architecture and finite."""
    source = locate(spec)
    start = source.load(device).model
    mine, theirs = model.config.to_dict(), start.config.to_dict()
    differ = [f"{k}: {theirs.get(k)!r} there, {v!r} here" for k, v in mine.items()
              if theirs.get(k) != v]  # fmt: skip
    if differ:
        raise CheckpointError(
            f"init_from {spec} holds another model ({'; '.join(differ[:4])}); set --model, "
            "--image-size or --model-config to the checkpoint's"
        )
    bad = nonfinite_entries(start.state_dict())
    if bad:
        raise CheckpointError(
            f"init_from {spec} holds non-finite weights ({', '.join(bad[:3])}); choose an "
            "earlier, finite checkpoint"
        )
    load_weights(model, start.state_dict(), source.path)
