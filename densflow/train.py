"""The training API under its earlier module name: everything here lives in
:mod:`densflow.training` (this module only re-exports it, so that ``from densflow.train import
train, train_preset`` keeps working)."""

from .checkpoint import read_checkpoint
from .training import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TRAIN_PRESETS,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    TrainResult,
    derive_seed,
    epoch_permutation,
    learning_rate,
    read_metrics,
    shard_indices,
    train,
    train_preset,
)

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDivergedError",
    "derive_seed",
    "epoch_permutation",
    "learning_rate",
    "read_checkpoint",
    "read_metrics",
    "shard_indices",
    "train",
    "train_preset",
]
