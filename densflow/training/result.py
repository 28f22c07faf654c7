"""What a training run returns: :class:`TrainResult`, the run's folder, its last checkpoint, where
it stopped and its last bits/dim."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model import DenseFlow

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (in eval mode, on the training device).
        out_dir: the run folder.
        checkpoint: path of the last checkpoint written.
        step: global steps done.
        epoch: epochs completed.
        completed: whether all epochs are done (False when stopped by ``max_steps``).
        train_bpd: the last logged train bits/dim (None before the first log point).
        test_bpd: the last single-sample test bits/dim (None when not evaluated).
        test_bpd_iw: the importance-weighted test bits/dim (only with ``iw_samples``).
        elapsed_s: wall time of this call.
    """

    model: DenseFlow
    out_dir: Path
    checkpoint: Path
    step: int
    epoch: int
    completed: bool
    train_bpd: float | None
    test_bpd: float | None
    test_bpd_iw: float | None
    elapsed_s: float
