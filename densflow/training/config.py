"""The settings of a training run: one frozen dataclass, from which the command line's ``train``
options are generated (field, type, ``help`` metadata), so notebooks and the CLI share one config.

The defaults train the ``small`` model on the built-in ``photos`` in minutes on a CPU (the
``quickstart`` settings) with the paper's optimizer settings, read from their one home, the data
registry's :class:`~densflow.data.TrainingProtocol`; the evaluation fields' defaults are read from
:class:`~densflow.evaluation.EvalConfig`. :func:`densflow.training.train_preset` gives the paper's
settings per dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import data
from ..config import MODEL_SIZES, DenseFlowConfig
from ..evaluation import eval_default
from ..performance import AMP_MODES, Speed
from ..utils.errors import InputError
from ..utils.ranges import RANGES, check_range
from ..utils.validate import field_default, field_kind

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "OPTIMIZERS", "SCHEDULES", "TrainConfig"]

CHECKPOINT_NAME = "checkpoint.pt"
"""The training checkpoint inside ``out_dir``; :func:`densflow.io.load` reads
it."""
METRICS_NAME = "metrics.jsonl"
"""The metrics log inside ``out_dir``: one JSON object per line (see ``read_metrics``)."""

SCHEDULES = ("paper", "official_constant")
OPTIMIZERS = ("adamax", "adam")
LOGGERS = ("none", "tensorboard")

# Changing these between a run and its resumption does not change what is learned (or, for
# epochs and max_steps, only how long it goes on); every other field must match the checkpoint.
RESUMABLE_CHANGES = frozenset({
    "data_dir", "device", "num_workers", "out_dir", "resume", "checkpoint_every", "log_every",
    "eval_every", "eval_limit", "eval_batch_size", "iw_samples", "chunk_size", "max_steps",
    "max_nonfinite", "progress", "epochs", "finetune_epochs", "amp", "channels_last", "compile",
    "cuda_graphs", "logger",
})  # fmt: skip


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _protocol(name: str) -> Any:
    """The paper's setting ``name`` shared by every dataset (Appendix C), whose one home is the
    data registry's :class:`~densflow.data.TrainingProtocol`."""
    return field_default(data.TrainingProtocol, name)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Use :func:`~densflow.training.train_preset` for the paper's settings per dataset.
    """

    # ---- data and model
    dataset: str = field(
        default="photos", metadata=_help("dataset name", choices=tuple(data.DATASETS))
    )
    data_dir: str | None = field(
        default=None, metadata=_help("folder holding the dataset files (not needed for photos)")
    )
    celeba_crop: str = field(
        default="official",
        metadata=_help(
            "CelebA crop: 'official' resizes the whole image, 'center148' crops 148x148 first",
            choices=data.CELEBA_CROPS,
        ),
    )
    model: str = field(
        default="small",
        metadata=_help(
            "model size: denseflow-74-10 (the paper's), small (CPU-trainable) or tiny (tests)",
            choices=MODEL_SIZES,
        ),
    )
    image_size: int | None = field(
        default=None, metadata=_help("image side of the model (default: the training images')")
    )
    model_config: DenseFlowConfig | None = field(
        default=None,
        metadata=_help(
            "a full DenseFlowConfig as a JSON object or a .json file; overrides model and "
            "image_size",
            metavar="JSON",
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_help(
            "start a new run from the weights of this model (a checkpoint, e.g. the last good "
            "one of a diverged run, a model directory or a cached name), with this run's "
            "optimizer settings; the architecture must be the model's. To resume a run, run the "
            "same command on its --out-dir",
            metavar="CHECKPOINT",
        ),
    )
    # ---- length and optimisation
    batch_size: int = field(default=16, metadata=_help("images per optimizer step (per GPU)"))
    epochs: int = field(default=4, metadata=_help("epochs of the main phase"))
    finetune_epochs: int = field(
        default=0,
        metadata=_help("epochs of the fine-tuning phase after the main one, at finetune_lr"),
    )
    steps_per_epoch: int | None = field(
        default=None,
        metadata=_help("cap on steps per epoch (default: the whole train split; for smoke runs)"),
    )
    max_steps: int | None = field(
        default=None,
        metadata=_help(
            "stop (with a checkpoint) after this many steps in total; run again with a larger "
            "value to continue"
        ),
    )
    lr: float = field(
        default=_protocol("lr"), metadata=_help("peak learning rate of the main phase")
    )
    finetune_lr: float = field(
        default=_protocol("finetune_lr"),
        metadata=_help("constant learning rate of the fine-tuning phase"),
    )
    warmup_steps: int = field(
        default=200,
        metadata=_help(
            "linear warm-up length in steps (the paper: 5000; it says epochs, the official code "
            "counts steps)"
        ),
    )
    gamma: float = field(
        default=_protocol("gamma"),
        metadata=_help("exponential lr decay per epoch (paper: 0.95; 0.9975 for CIFAR-10)"),
    )
    schedule: str = field(
        default="paper",
        metadata=_help(
            "'paper': warm-up, then decay by gamma per epoch; 'official_constant': as the official "
            "code runs, where the warm-up overwrites the decay and the lr stays at lr",
            choices=SCHEDULES,
        ),
    )
    optimizer: str = field(
        default=_protocol("optimizer"),
        metadata=_help("optimizer (the paper: adamax; betas 0.9, 0.999)", choices=OPTIMIZERS),
    )
    grad_clip: float | None = field(
        default=None,
        metadata=_help("clip the gradient norm to this value (the official runs use none)"),
    )
    augmentation: bool = field(
        default=True,
        metadata=_help(
            "random flips and shifts of the paper (per dataset, see densflow.data.augmentation_for)"
        ),
    )
    # ---- speed switches (grouped as TrainConfig.speed)
    amp: str = field(
        default="none",
        metadata=_help(
            "mixed precision: 'bf16' runs the coupling networks under bfloat16 autocast; the "
            "invertible path and the loss stay float32 (on the CPU it pays together with compile)",
            choices=AMP_MODES,
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=_help(
            "channels-last memory format for the model and inputs (can speed up GPU convolutions)"
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_help(
            "torch.compile the whole flow and the optimizer step: faster steps after minutes of "
            "compilation, paid again for each new batch size; for long runs"
        ),
    )
    cuda_graphs: bool = field(
        default=False,
        metadata=_help(
            "capture the training step (forward and backward pass, then the optimizer update) and "
            "the evaluation passes in CUDA graphs and replay them: on a GPU the eager step is "
            "bound by the host issuing ~70,000 operator calls; not with compile or several "
            "processes; eager on a CPU"
        ),
    )
    # ---- where and how
    device: str = field(
        default="auto",
        metadata=_help("'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."),
    )
    num_workers: int = field(
        default=0,
        metadata=_help(
            "DataLoader worker processes (useful for CelebA, whose JPEGs are decoded on the fly)"
        ),
    )
    seed: int = field(
        default=0,
        metadata=_help("seed of the model initialisation, data order, augmentation and noise"),
    )
    out_dir: str = field(
        default="runs/densflow",
        metadata=_help(f"run folder: {CHECKPOINT_NAME} and {METRICS_NAME} are written there"),
    )
    resume: bool = field(
        default=True,
        metadata=_help(
            f"continue from out_dir/{CHECKPOINT_NAME} when it exists; with --no-resume an existing "
            "checkpoint is an error instead"
        ),
    )
    checkpoint_every: int = field(
        default=100,
        metadata=_help(
            "write the checkpoint every this many steps (0: only at epoch ends and at the end)"
        ),
    )
    log_every: int = field(
        default=25,
        metadata=_help(
            "steps between train log lines (and the only points where the loss is read back)"
        ),
    )
    # ---- evaluation
    eval_every: int = field(
        default=1,
        metadata=_help(
            "epochs between test-set evaluations (0: never; the last epoch is always evaluated)"
        ),
    )
    eval_limit: int | None = field(
        default=eval_default("limit"),
        metadata=_help("evaluate on the first N test images only (default: the whole test split)"),
    )
    eval_batch_size: int | None = field(
        default=None, metadata=_help("batch size of evaluations (default: batch_size)")
    )
    iw_samples: int | None = field(
        default=eval_default("iw_samples"),
        metadata=_help(
            "after the last epoch, also the importance-weighted bound with this many samples "
            "(paper: 1000 for CIFAR-10, 200 otherwise; costs that many forward passes per image)"
        ),
    )
    chunk_size: int = field(
        default=eval_default("chunk_size"),
        metadata=_help("samples of the importance-weighted bound evaluated per forward pass"),
    )
    max_nonfinite: int = field(
        default=20,
        metadata=_help("stop after this many consecutive non-finite losses (each is skipped)"),
    )
    progress: bool | None = field(
        default=None,
        metadata=_help(
            "progress bar (default: on a terminal and in notebooks; elsewhere log lines only)"
        ),
    )
    logger: str = field(
        default="none",
        metadata=_help(
            "also mirror the metrics log to 'tensorboard' (event files in out_dir/tensorboard: "
            "scalars, a sample grid per evaluation, the config; needs the tensorboard extra)",
            choices=LOGGERS,
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.model_config, dict):  # from JSON or a checkpoint
            object.__setattr__(self, "model_config", DenseFlowConfig.from_dict(self.model_config))
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value not in choices:
                raise InputError(f"{f.name} must be one of {choices}, got {value!r}")
            kind, optional = field_kind(TrainConfig, f.name)
            if kind is bool and not isinstance(value, bool) and not (optional and value is None):
                # a notebook's resume="no" is a string, and every non-empty string is true
                flag = "--" + f.name.replace("_", "-")
                raise InputError(
                    f"{f.name} must be True or False, got {value!r}; set {flag} or "
                    f"--no-{flag[2:]} (TrainConfig.{f.name})"
                )
        for name in RANGES["TrainConfig"]:
            check_range("TrainConfig", name, getattr(self, name))
        if self.epochs + self.finetune_epochs == 0:
            raise InputError(
                "epochs + finetune_epochs must be at least 1, got 0 (--epochs, --finetune-epochs): "
                "set epochs=1 or more"
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise InputError(
                    f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device "
                    f"name, got {self.device!r}; set --device auto to pick one"
                ) from err
        if self.init_from is not None and not str(self.init_from).strip():
            raise InputError("init_from must be a checkpoint path, got ''; set --init-from PATH")
        self.speed  # noqa: B018 (validates the switches together)

    @property
    def speed(self) -> Speed:
        """The speed switches, as the training step takes them."""
        return Speed(self.amp, self.channels_last, self.compile, self.cuda_graphs)

    def architecture(self, image_size: int) -> DenseFlowConfig:
        """The model: ``model_config``, or the ``model`` preset at ``self.image_size`` (default:
        ``image_size``, the side of the training images)."""
        if self.model_config is not None:
            return self.model_config
        return DenseFlowConfig.preset(self.model, self.image_size or image_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (for JSON and ``weights_only`` checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config of :meth:`to_dict`; one stored by an earlier version is brought up to date
        by the checkpoint reader (:func:`~densflow.training.state.read_training_checkpoint`)."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
