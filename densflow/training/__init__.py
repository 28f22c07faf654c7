"""Training DenseFlow with the paper's protocol, with exact resume.

One concern per module:

* :mod:`~densflow.training.config` — :class:`TrainConfig`, every setting of a run;
* :mod:`~densflow.training.presets` — :data:`TRAIN_PRESETS` and :func:`train_preset`, the paper's
  settings per dataset (and smoke and quickstart runs);
* :mod:`~densflow.training.schedule` — the learning rate, data order and seeds of each step;
* :mod:`~densflow.training.batches` — the batch and the noise each step is fed;
* :mod:`~densflow.training.step` — the loss and ``step(x, noise, lr)``: eager, compiled or
  CUDA-graphed, under DistributedDataParallel when run by ``torchrun``;
* :mod:`~densflow.training.optim` — the optimizer, compiled or not;
* :mod:`~densflow.training.trainer` — :class:`Trainer` and :func:`train`: the loop, evaluations,
  checkpoints and resume;
* :mod:`~densflow.training.result` — :class:`TrainResult`, what a run returns;
* :mod:`~densflow.training.state` — what a training checkpoint holds beyond the model: the
  optimizer, the position, the running sums and the generators, checked when read;
* :mod:`~densflow.training.checkpoint_writer` — checkpoints copied to the host and written in the
  background, so that training does not wait for the disk;
* :mod:`~densflow.training.resume` — the checks a checkpoint passes before a run resumes from
  it or starts from its weights (``init_from``);
* :mod:`~densflow.training.divergence` — :class:`TrainingDivergedError`: when non-finite losses
  or parameters stop a run, and the way on from its last good checkpoint;
* :mod:`~densflow.training.metrics` — ``metrics.jsonl``, log lines and progress;
* :mod:`~densflow.training.rundir` — the run folder's lock (one writer) and its clean-up.
* :mod:`~densflow.training.loggers` — live mirrors of ``metrics.jsonl`` (``logger="tensorboard"``:
  event files in ``out_dir/tensorboard``).
"""

from .config import CHECKPOINT_NAME, METRICS_NAME, TrainConfig
from .divergence import TrainingDivergedError
from .metrics import read_metrics
from .optim import compile_optimizer, optimizer_state_dict, set_lr
from .presets import TRAIN_PRESETS, train_preset
from .result import TrainResult
from .rundir import TrainingSetupError
from .schedule import derive_seed, epoch_permutation, learning_rate, shard_indices
from .step import (
    GraphedTrainingStep,
    StepMetrics,
    TrainStep,
    forward_backward,
    make_step,
    training_loss,
)
from .trainer import Trainer, train

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "TRAIN_PRESETS",
    "GraphedTrainingStep",
    "StepMetrics",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "Trainer",
    "TrainingDivergedError",
    "TrainingSetupError",
    "compile_optimizer",
    "derive_seed",
    "epoch_permutation",
    "forward_backward",
    "learning_rate",
    "make_step",
    "optimizer_state_dict",
    "read_metrics",
    "set_lr",
    "shard_indices",
    "train",
    "train_preset",
    "training_loss",
]
