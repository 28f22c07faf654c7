r"""Training DenseFlow: the paper's protocol, with exact resume.

The objective is the single-sample lower bound in bits per dimension (Sec. 3 and eq. 5/9),

.. math:: \mathcal{L} = -\frac{1}{B}\sum_{b=1}^{B}\frac{\ln \hat p(x_b)}{D \ln 2},

minimised with Adamax (lr 1e-3), a linear warm-up over the first 5000 steps and an exponential
decay per epoch, then a fine-tuning phase at lr 2e-5 (see :func:`learning_rate` and
:data:`TRAIN_PRESETS`).

**Exact resume.** Every random draw of a step comes from generators re-seeded from
``(seed, step, rank)``: the data order of an epoch is a permutation seeded by ``(seed, epoch)``
(:func:`epoch_permutation`), augmentation and model noise are seeded by the step. A checkpoint
(written atomically every ``checkpoint_every`` steps and at each epoch end) therefore only needs the
model, the optimizer, the position ``(epoch, step in epoch)`` and a few running sums; resuming
skips the batches of the current epoch that are already done. On CPU, ``N`` steps + resume + ``N``
steps give bit-identical parameters to ``2N`` steps (tests/test_train.py). On GPU some kernels are
not deterministic, so a resumed run agrees only to rounding.

**Non-finite losses.** A step whose loss or gradient norm is not finite is skipped: no optimizer
update, and the BatchNorm running statistics its forward pass touched are restored, so the model is
exactly as before the step. After ``max_nonfinite`` such steps in a row,
:class:`TrainingDivergedError` stops the run and names the last checkpoint, which is left as it was.
Deciding whether to skip needs the loss on the host: that is the one scalar read per step (the same
one ``torch.amp.GradScaler`` makes); everything else (loss sums, timing) is read only at log points.

**Multi-GPU.** Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
DistributedDataParallel and each rank takes its shard of the epoch's permutation
(:func:`shard_indices`); only rank 0 writes checkpoints, metrics and progress. ActNorm's
data-dependent initialisation runs on each rank's first batch *before* the wrapping, and the
DDP constructor then broadcasts rank 0's parameters and buffers, so all ranks start identical.
Logged train bits/dim are rank 0's share of the batch; every rank evaluates the same test images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import data
from .checkpoint import FORMAT, VERSION, CheckpointError, atomic_save, read_checkpoint
from .evaluate import collate_images, evaluate, progress_interval
from .glow import ActNorm
from .model import PRESETS, DenseFlow, DenseFlowConfig
from .performance import (
    AMP_MODES,
    GraphedTrainingStep,
    autocast,
    compile_model,
    compile_optimizer,
    forward_backward,
    optimizer_state_dict,
    set_lr,
    to_channels_last,
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
    "read_metrics",
    "shard_indices",
    "train",
    "train_preset",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""The training checkpoint inside ``out_dir``; :func:`densflow.checkpoint.load_model` reads it."""
METRICS_NAME = "metrics.jsonl"
"""The metrics log inside ``out_dir``: one JSON object per line (see :func:`read_metrics`)."""

SCHEDULES = ("paper", "official_constant")
OPTIMIZERS = ("adamax", "adam")

# Changing these between a run and its resumption does not change what is learned (or, for
# epochs and max_steps, only how long it goes on); every other field must match the checkpoint.
_RESUMABLE_CHANGES = frozenset({
    "data_dir", "device", "num_workers", "pin_memory", "out_dir", "resume", "checkpoint_every",
    "log_every", "eval_every", "eval_limit", "eval_batch_size", "iw_samples", "iw_chunk_size",
    "max_steps", "max_nonfinite", "progress", "epochs", "finetune_epochs", "amp", "channels_last",
    "compile", "cuda_graphs",
})  # fmt: skip


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The CLI's ``train`` options are generated from these
    fields and their ``help`` metadata, so notebooks and the command line share one config.

    Use :func:`train_preset` for the paper's settings per dataset.
    """

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
            "model preset: paper (DenseFlow-74-10), small (CPU-trainable) or tiny (tests)",
            choices=tuple(PRESETS),
        ),
    )
    image_size: int | None = field(
        default=None, metadata=_help("image side of the model (default: the dataset's)")
    )
    model_config: DenseFlowConfig | None = field(
        default=None,
        metadata=_help(
            "a full DenseFlowConfig as a JSON object or a .json file; overrides model and "
            "image_size"
        ),
    )
    batch_size: int = field(default=64, metadata=_help("images per optimizer step (per GPU)"))
    epochs: int = field(default=1, metadata=_help("epochs of the main phase"))
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
            "value "
            "to continue"
        ),
    )
    lr: float = field(default=1e-3, metadata=_help("peak learning rate of the main phase"))
    finetune_lr: float = field(
        default=2e-5, metadata=_help("constant learning rate of the fine-tuning phase")
    )
    warmup_steps: int = field(
        default=5000,
        metadata=_help(
            "linear warm-up length in steps (the paper says epochs; the official code counts steps)"
        ),
    )
    gamma: float = field(
        default=0.95,
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
        default="adamax",
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
            "torch.compile the whole flow and the optimizer step "
            "(densflow.performance.compile_model, "
            "compile_optimizer): faster steps after minutes of compilation, paid again for each "
            "new "
            "batch size; for long runs"
        ),
    )
    cuda_graphs: bool = field(
        default=False,
        metadata=_help(
            "capture the forward and backward pass in a CUDA graph and replay it each step "
            "(densflow.performance.GraphedTrainingStep): on a GPU the eager step is bound by the "
            "host "
            "issuing ~70,000 operator calls; not with compile or several processes; eager on a CPU"
        ),
    )
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
    pin_memory: bool | None = field(
        default=None,
        metadata=_help("pinned host memory for batches (default: on when training on CUDA)"),
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
        default=1000,
        metadata=_help(
            "write the checkpoint every this many steps (0: only at epoch ends and at the end)"
        ),
    )
    log_every: int = field(
        default=100,
        metadata=_help(
            "steps between train-bpd log lines (and the only points where the loss is read back)"
        ),
    )
    eval_every: int = field(
        default=1,
        metadata=_help(
            "epochs between test-set evaluations (0: never; the last epoch is always evaluated)"
        ),
    )
    eval_limit: int | None = field(
        default=None,
        metadata=_help("evaluate on the first N test images only (default: the whole test split)"),
    )
    eval_batch_size: int | None = field(
        default=None, metadata=_help("batch size of evaluations (default: batch_size)")
    )
    iw_samples: int | None = field(
        default=None,
        metadata=_help(
            "after the last epoch, also the importance-weighted bound with this many samples "
            "(paper: "
            "1000 for CIFAR-10, 200 otherwise; costs that many forward passes per image)"
        ),
    )
    iw_chunk_size: int = field(
        default=50,
        metadata=_help("samples of the importance-weighted bound evaluated per forward pass"),
    )
    max_nonfinite: int = field(
        default=20,
        metadata=_help("stop after this many consecutive non-finite losses (each is skipped)"),
    )
    progress: bool | None = field(
        default=None, metadata=_help("progress bars (default: only when the output is a terminal)")
    )

    def __post_init__(self) -> None:
        if isinstance(self.model_config, dict):  # from JSON or a checkpoint
            object.__setattr__(self, "model_config", DenseFlowConfig.from_dict(self.model_config))
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}"
                )
        positive = (
            "batch_size",
            "log_every",
            "iw_chunk_size",
            "max_nonfinite",
            "steps_per_epoch",
            "eval_limit",
            "eval_batch_size",
            "iw_samples",
            "image_size",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in (
            "epochs",
            "finetune_epochs",
            "warmup_steps",
            "checkpoint_every",
            "eval_every",
            "num_workers",
            "max_steps",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        if self.epochs + self.finetune_epochs == 0:
            raise ValueError("epochs + finetune_epochs must be at least 1")
        if not (0.0 < self.gamma <= 1.0) or self.lr <= 0 or self.finetune_lr <= 0:
            raise ValueError(
                f"need 0 < gamma <= 1 and positive learning rates, got gamma="
                f"{self.gamma}, lr={self.lr}, finetune_lr={self.finetune_lr}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if self.cuda_graphs and self.compile:
            raise ValueError(
                "choose one of compile and cuda_graphs: a capture of the compiled "
                "flow has not been validated"
            )

    def model_cfg(self) -> DenseFlowConfig:
        """The architecture: ``model_config``, or the ``model`` preset at ``image_size`` (default:
        the dataset's image size)."""
        if self.model_config is not None:
            return self.model_config
        size = self.image_size or data.image_shape(self.dataset)[1]
        return DenseFlowConfig.preset(self.model, size)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (for JSON and ``weights_only`` checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- presets

_PAPER_TABLE: dict[str, dict[str, Any]] = {
    "cifar10": dict(epochs=580, finetune_epochs=70, batch_size=64, gamma=0.9975, eval_every=10),
    "imagenet32": dict(epochs=20, finetune_epochs=2, batch_size=64),
    "imagenet64": dict(epochs=10, finetune_epochs=1, batch_size=32),
    "celeba": dict(epochs=50, finetune_epochs=5, batch_size=32),
}
_PAPER_COMMON: dict[str, Any] = dict(
    model="paper",
    lr=1e-3,
    finetune_lr=2e-5,
    warmup_steps=5000,
    gamma=0.95,
    schedule="paper",
    optimizer="adamax",
    augmentation=True,
    checkpoint_every=1000,
    log_every=100,
    eval_every=1,
)


def _paper(dataset: str, **changes: Any) -> dict[str, Any]:
    return {"dataset": dataset, **_PAPER_COMMON, **_PAPER_TABLE[dataset], **changes}


TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's protocol: epochs (+ fine-tuning epochs) and batch per dataset, DenseFlow-74-10.
    # CIFAR-10 is evaluated every 10th epoch only (every epoch would add about 7 % to its 650).
    # The importance-weighted test bound is left to `python -m densflow eval`.
    "paper": {d: _paper(d) for d in _PAPER_TABLE},
    # What the official scripts run: the warm-up overwrites the decay (constant lr 1e-3 after it),
    # and CIFAR-10 trains 400 (+20) epochs instead of the paper's 580 (+70).
    "official": {d: _paper(d, schedule="official_constant",
                           **({"epochs": 400, "finetune_epochs": 20} if d == "cifar10" else {}))
                 for d in _PAPER_TABLE},
    # Minutes on a CPU: every code path (warm-up, epoch end, evaluation, fine-tuning, checkpoints)
    # with the tiny model and 2 short epochs. Not for results.
    "smoke": {d: dict(dataset=d, model="tiny", batch_size=16, epochs=1, finetune_epochs=1,
                      steps_per_epoch=10, warmup_steps=10, checkpoint_every=10, log_every=5,
                      eval_limit=64) for d in data.DATASETS},
    # The small model on the built-in photos: 588 steps in about 5 minutes on one CPU core (of a
    # busy 2-core machine); test bits/dim (first 256 test patches) 7.5 untrained → 4.1.
    "quickstart": {"photos": dict(dataset="photos", model="small", batch_size=16, epochs=4,
                                  warmup_steps=200, gamma=0.95, checkpoint_every=100,
                                  log_every=25, eval_limit=256)},
}  # fmt: skip
"""Preset name → dataset → :class:`TrainConfig` fields. ``out_dir`` defaults to
``runs/<dataset>-<preset>``."""


def train_preset(dataset: str, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a named preset for ``dataset``, with ``overrides`` applied.

    Example:
        >>> cfg = train_preset("cifar10", "paper")
        >>> cfg.epochs, cfg.finetune_epochs, cfg.batch_size, cfg.gamma
        (580, 70, 64, 0.9975)
        >>> train_preset("photos", "quickstart").model_cfg() == DenseFlowConfig.small(32)
        True
    """
    if preset not in TRAIN_PRESETS:
        raise ValueError(
            f"unknown training preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}"
        )
    if dataset not in TRAIN_PRESETS[preset]:
        raise ValueError(
            f"preset {preset!r} has no settings for {dataset!r}; it covers "
            f"{sorted(TRAIN_PRESETS[preset])}"
        )
    fields = {"out_dir": f"runs/{dataset}-{preset}", **TRAIN_PRESETS[preset][dataset], **overrides}
    return TrainConfig(**fields)


# ----------------------------------------------------------------------------- schedule, data order


def learning_rate(config: TrainConfig, step: int, epoch: int) -> float:
    r"""The learning rate of global step ``step`` (0-based) in epoch ``epoch`` (0-based).

    Main phase (``epoch < epochs``), with :math:`w = \min(1, s / \text{warmup\_steps})`:

    * ``"paper"``: :math:`\text{lr} \cdot w \cdot \gamma^{\text{epoch}}`;
    * ``"official_constant"``: :math:`\text{lr} \cdot w` (the official warm-up scheduler recomputes
      the rate from the base rate after every step, which undoes the per-epoch decay).

    Step 0 has rate 0, as the official warm-up gives. Fine-tuning phase: ``finetune_lr``, constant.

    Example:
        >>> cfg = TrainConfig(warmup_steps=100, gamma=0.5, epochs=3, finetune_epochs=1)
        >>> [learning_rate(cfg, s, e) for s, e in [(0, 0), (50, 0), (100, 1), (200, 2), (300, 3)]]
        [0.0, 0.0005, 0.0005, 0.00025, 2e-05]
    """
    if epoch >= config.epochs:
        return config.finetune_lr
    warm = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "official_constant":
        return config.lr * warm
    return config.lr * warm * config.gamma**epoch


# Independent random streams derived from the run's seed.
_INIT, _ORDER, _AUGMENT, _NOISE, _EVAL = range(5)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (``numpy.random.SeedSequence``), so
    that nearby keys such as consecutive steps give unrelated streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the ``n`` training images in ``epoch``: a permutation seeded by ``(seed,
    epoch)`` alone, so that a resumed run can rebuild it."""
    g = torch.Generator().manual_seed(derive_seed(seed, _ORDER, epoch))
    return torch.randperm(n, generator=g)


def shard_indices(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s share of an epoch's ``indices``: every ``world_size``-th entry, after
    dropping the tail that does not divide evenly (so every rank takes the same number of steps,
    as DistributedDataParallel requires).

    Example:
        >>> shard_indices(torch.arange(10), 1, 3)
        tensor([1, 4, 7])
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    usable = len(indices) // world_size * world_size
    return indices[:usable][rank::world_size]


# ----------------------------------------------------------------------------- metrics


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The events of ``out_dir/metrics.jsonl``, oldest first.

    Events (key ``event``): ``start``; ``train`` (every ``log_every`` steps: ``bpd`` averaged
    since the last one, ``lr``, ``images_per_s``, ``nonfinite``); ``nonfinite`` (a skipped step);
    ``epoch`` (``train_bpd`` of the epoch); ``eval`` (``test_bpd``, and ``test_bpd_iw`` after the
    last epoch when ``iw_samples`` is set); ``end``. All carry ``step``, ``epoch`` and ``time``
    (Unix seconds). A line torn by a crash is ignored.
    """
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # only a crash mid-write leaves such a line, and only last
            continue
    return events


class _MetricsLog:
    """Appends JSON lines; truncated on resume to what the checkpoint had seen, so that steps
    replayed after a crash are not logged twice."""

    def __init__(self, path: Path, keep_bytes: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b") as f:
                f.truncate(keep_bytes)

    def offset(self) -> int:
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0

    def write(self, event: str, **values: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, **values, "time": time.time()}) + "\n")


# ----------------------------------------------------------------------------- the trainer


class TrainingDivergedError(RuntimeError):
    """Too many consecutive non-finite losses; the message names the step and the last good
    checkpoint."""


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


@dataclass(frozen=True)
class _Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


class _RunningStats:
    """Snapshot and restore of the BatchNorm running statistics (the only state a forward pass
    changes), so that a skipped step leaves the model exactly as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        for b in m.buffers()]  # fmt: skip
        self.saved = [b.clone() for b in self.buffers]

    def save(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


def _resolve_device(name: str, dist: _Dist) -> torch.device:
    if dist.world_size > 1 and torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """One training run of :class:`TrainConfig`; :meth:`fit` trains (resuming when a checkpoint
    exists) and returns a :class:`TrainResult`.

    Arguments:
        config: the run.
        train_set, test_set: datasets of uint8 ``(3, S, S)`` images (or tuples whose first item is
            one) to use instead of ``load_dataset(config.dataset, ...)``.

    Attributes:
        model: the :class:`DenseFlow` being trained (without any DDP wrapper).
        step, epoch, step_in_epoch: the position of the next step.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
    ) -> None:
        self.config = cfg = config
        self.dist = _Dist.from_env()
        self.is_main = self.dist.rank == 0
        self.device = _resolve_device(cfg.device, self.dist)
        self.out_dir = Path(cfg.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.train_set = (
            train_set
            if train_set is not None
            else data.load_dataset(cfg.dataset, cfg.data_dir, "train", celeba_crop=cfg.celeba_crop)
        )
        self._test_set = test_set

        with torch.random.fork_rng(devices=[]):  # the init must not depend on (or move) global RNG
            torch.manual_seed(derive_seed(cfg.seed, _INIT))
            self.model = DenseFlow(cfg.model_cfg())
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format).train()
        self._check_shape()
        optimizer = torch.optim.Adamax if cfg.optimizer == "adamax" else torch.optim.Adam
        # foreach: one multi-tensor update instead of a Python loop over the parameters (the
        # default on CUDA only; on the CPU it takes ~30 % off the optimizer step).
        self.optimizer = optimizer(self.model.parameters(), lr=cfg.lr, foreach=True)
        self.augment = data.augmentation_for(cfg.dataset) if cfg.augmentation else None
        self._stats = _RunningStats(self.model)
        # Generators on the training device: drawing on the CPU for a CUDA model would make every
        # draw a synchronous host-to-device copy.
        self._noise = torch.Generator(self.device)
        self._aug_gen = torch.Generator(self.device)
        order_len = len(self.train_set) // self.dist.world_size
        self.steps_per_epoch = order_len // cfg.batch_size
        if cfg.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{order_len} training images per process do not fill one batch of {cfg.batch_size}"
            )

        self.step = self.epoch = self.step_in_epoch = 0
        self._nonfinite_run = 0
        self._max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        self._graphed: GraphedTrainingStep | None = None  # built in _wrap when cuda_graphs
        self._epoch_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._epoch_count = 0
        self._last_checkpoint: tuple[Path, int] | None = None
        metrics_bytes = self._maybe_resume()
        self.metrics = _MetricsLog(self.out_dir / METRICS_NAME, metrics_bytes, self.is_main)

    # ------------------------------------------------------------------ set-up
    def _check_shape(self) -> None:
        first = collate_images([self.train_set[0]])
        if tuple(first.shape[1:]) != self.model.image_shape:
            raise ValueError(
                f"the train images are {tuple(first.shape[1:])} but the model expects "
                f"{self.model.image_shape}; set image_size or model_config to match"
            )

    @property
    def test_set(self) -> Dataset:
        if self._test_set is None:
            cfg = self.config
            self._test_set = data.load_dataset(
                cfg.dataset, cfg.data_dir, "test", celeba_crop=cfg.celeba_crop
            )
        return self._test_set

    def _maybe_resume(self) -> int:
        """Load ``out_dir/checkpoint.pt`` if allowed; return the metrics bytes to keep."""
        if not self.checkpoint_path.exists():
            return 0
        if not self.config.resume:
            raise CheckpointError(
                f"{self.checkpoint_path} exists and resume is off; choose "
                "another out_dir or remove the old run"
            )
        ckpt = read_checkpoint(self.checkpoint_path, map_location=self.device)
        saved = TrainConfig.from_dict(ckpt["train_config"]).to_dict()
        now = self.config.to_dict()
        changed = [
            f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now"
            for k in now
            if k not in _RESUMABLE_CHANGES and saved[k] != now[k]
        ]
        if changed:
            raise CheckpointError(
                f"cannot resume {self.checkpoint_path} with a different "
                f"configuration ({'; '.join(changed)}); use another out_dir"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        p = ckpt["progress"]
        self.step, self.epoch, self.step_in_epoch = p["step"], p["epoch"], p["step_in_epoch"]
        self._nonfinite_run, self._epoch_count = p["nonfinite_run"], p["epoch_count"]
        self._epoch_sum.copy_(p["epoch_sum"])
        if ckpt["data_order"]["world_size"] != self.dist.world_size and self.step_in_epoch:
            warnings.warn(
                "resuming mid-epoch with another number of processes: the rest of this "
                "epoch does not follow the original data order",
                stacklevel=2,
            )
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])
        self._last_checkpoint = (self.checkpoint_path, self.step)
        return p["metrics_bytes"]

    # ------------------------------------------------------------------ the loop
    def _order(self, epoch: int) -> Tensor:
        """This rank's index order for ``epoch``."""
        order = epoch_permutation(len(self.train_set), self.config.seed, epoch)
        return shard_indices(order, self.dist.rank, self.dist.world_size)

    def _batches(self, order: Tensor, start: int, stop: int) -> Iterator[Tensor]:
        """Batches ``start..stop-1`` of the epoch (full batches only)."""
        b = self.config.batch_size
        chunks = order[: stop * b].view(stop, b)[start:].tolist()
        pin = self.config.pin_memory
        loader = DataLoader(
            self.train_set, batch_sampler=chunks, num_workers=self.config.num_workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda" if pin is None else pin,
        )  # fmt: skip
        return iter(loader)

    def _seed_step(self, stream: int) -> int:
        return derive_seed(self.config.seed, stream, self.step, self.dist.rank)

    def _prepare(self, x: Tensor) -> Tensor:
        """Move a batch to the device, then augment it there (draws from a per-step generator)."""
        x = x.to(self.device, non_blocking=True)
        if self.augment is not None:
            self._aug_gen.manual_seed(self._seed_step(_AUGMENT))
            x = self.augment(x, self._aug_gen)
        return to_channels_last(x) if self.config.channels_last else x

    def _autocast(self) -> Any:
        return autocast(self.device, self.config.amp)

    def _initialize(self, x: Tensor) -> None:
        """ActNorm's data-dependent init on the first batch, as the first training forward would
        do it (same inputs, same noise), and before any DDP wrapping; running stats untouched."""
        self._stats.save()
        self._noise.manual_seed(self._seed_step(_NOISE))
        with torch.no_grad(), self._autocast():
            self.model(x, self._noise)
        self._stats.restore()

    def _train_step(self, net: nn.Module, x: Tensor, lr: float) -> Tensor | None:
        """One step; returns the loss (on the device) or None when it was skipped."""
        set_lr(self.optimizer, lr)
        self._stats.save()
        self._noise.manual_seed(self._seed_step(_NOISE))
        noise = self.model.draw_noise(x.shape[0], self._noise)
        if self._graphed is not None:
            loss, grad_norm = self._graphed(x, noise)
        else:
            loss, grad_norm = forward_backward(net, x, noise, self.config.amp, self._max_norm)
        finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))  # the one read per step
        if finite:
            self.optimizer.step()
        else:
            self._stats.restore()
        if self._graphed is None:  # a graph's gradients are its own tensors, rewritten each replay
            self.optimizer.zero_grad(set_to_none=True)
        return loss if finite else None

    def fit(self) -> TrainResult:
        """Train until all epochs are done or ``max_steps`` is reached."""
        cfg, start_time = self.config, time.time()
        total_epochs = cfg.epochs + cfg.finetune_epochs
        n_steps = self.steps_per_epoch
        plan = n_steps * total_epochs
        if cfg.max_steps is not None:
            plan = min(plan, cfg.max_steps)
        self.metrics.write(
            "start",
            step=self.step,
            epoch=self.epoch,
            resumed=self.step > 0,
            world_size=self.dist.world_size,
            config=cfg.to_dict(),
        )
        net = self._wrap(self.model)
        from tqdm import tqdm  # text bars: they also survive in papermill output

        show = (None if cfg.progress is None else cfg.progress) if self.is_main else False
        bar = tqdm(
            total=plan,
            initial=min(self.step, plan),
            unit="step",
            dynamic_ncols=True,
            mininterval=progress_interval(),
            disable=None if show is None else not show,
        )
        # Sums since the last log point (read back only there); evaluation time is excluded.
        self._window = dict(
            sum=torch.zeros((), dtype=torch.float64, device=self.device),
            count=0,
            nonfinite=0,
            steps=0,
            time=time.perf_counter(),
        )
        try:
            while self.epoch < total_epochs and (
                cfg.max_steps is None or self.step < cfg.max_steps
            ):
                stop = (
                    n_steps
                    if cfg.max_steps is None
                    else min(n_steps, self.step_in_epoch + cfg.max_steps - self.step)
                )
                bar.set_description(f"epoch {self.epoch + 1}/{total_epochs}")
                for x in self._batches(self._order(self.epoch), self.step_in_epoch, stop):
                    lr = learning_rate(cfg, self.step, self.epoch)
                    loss = self._train_step(net, self._prepare(x), lr)
                    self.step += 1
                    self.step_in_epoch += 1
                    self._account(loss)
                    bar.update(1)
                    if self.step % cfg.log_every == 0:
                        self._log_train(lr, bar)
                    if (
                        cfg.checkpoint_every
                        and self.step % cfg.checkpoint_every == 0
                        and (self.step_in_epoch < n_steps)
                    ):
                        self._save()
                if self.step_in_epoch == n_steps:
                    self._end_epoch(total_epochs)
                elif self._last_checkpoint is None or self._last_checkpoint[1] != self.step:
                    self._save()  # stopped by max_steps mid-epoch
            completed = self.epoch >= total_epochs
            if completed and cfg.iw_samples:
                self._evaluate(iw=True)
            self.metrics.write(
                "end",
                step=self.step,
                epoch=self.epoch,
                completed=completed,
                elapsed_s=time.time() - start_time,
            )
        finally:
            bar.close()
        self.model.eval()
        # The latest values of the whole run (also those logged before a resume), from the log.
        last = {
            k: v
            for e in read_metrics(self.out_dir)
            for k, v in e.items()
            if k in ("bpd", "test_bpd", "test_bpd_iw") and v is not None
        }
        return TrainResult(
            self.model,
            self.out_dir,
            self.checkpoint_path,
            self.step,
            self.epoch,
            completed,
            last.get("bpd"),
            last.get("test_bpd"),
            last.get("test_bpd_iw"),
            time.time() - start_time,
        )

    def _account(self, loss: Tensor | None) -> None:
        """Sums on the device for the log and the epoch; non-finite steps counted and checked.
        Called after step number ``self.step`` (1-based: steps done) finished."""
        log = self._window
        log["steps"] += 1
        if loss is not None:
            self._nonfinite_run = 0
            log["sum"] += loss
            log["count"] += 1
            self._epoch_sum += loss
            self._epoch_count += 1
            return
        self._nonfinite_run += 1
        log["nonfinite"] += 1
        self.metrics.write("nonfinite", step=self.step, epoch=self.epoch, run=self._nonfinite_run)
        if self._nonfinite_run >= self.config.max_nonfinite:
            first = self.step - self._nonfinite_run + 1
            where = (
                f"the last good checkpoint is {self._last_checkpoint[0]} (step "
                f"{self._last_checkpoint[1]}), left as it was"
                if self._last_checkpoint
                else "no checkpoint had been written yet"
            )
            self.metrics.write("diverged", step=self.step, epoch=self.epoch)
            raise TrainingDivergedError(
                f"training diverged at step {self.step}: {self._nonfinite_run} non-finite losses "
                f"in a row (steps {first}..{self.step}, each skipped without an update); {where}. "
                "Resume from it with a lower lr, grad_clip or amp='none'"
            )

    def _log_train(self, lr: float, bar: Any) -> None:
        log, now = self._window, time.perf_counter()
        bpd = (log["sum"] / log["count"]).item() if log["count"] else None
        rate = log["steps"] * self.config.batch_size * self.dist.world_size / (now - log["time"])
        self.metrics.write(
            "train",
            step=self.step,
            epoch=self.epoch,
            bpd=bpd,
            lr=lr,
            images_per_s=rate,
            nonfinite=log["nonfinite"],
        )
        bar.set_postfix(bpd=f"{bpd:.3f}" if bpd is not None else "nan", img_s=f"{rate:.1f}")
        log.update(sum=log["sum"].zero_(), count=0, nonfinite=0, steps=0, time=now)

    def _end_epoch(self, total_epochs: int) -> None:
        """Epoch-end log line, evaluation when due, then a checkpoint at the next epoch's start."""
        cfg = self.config
        train_bpd = (self._epoch_sum / self._epoch_count).item() if self._epoch_count else None
        self.metrics.write(
            "epoch",
            step=self.step,
            epoch=self.epoch,
            train_bpd=train_bpd,
            lr=learning_rate(cfg, self.step - 1, self.epoch),
            steps=self.steps_per_epoch,
            phase="main" if self.epoch < cfg.epochs else "finetune",
        )
        last = self.epoch + 1 == total_epochs
        # Every rank evaluates (the same numbers): no rank waits on another beyond DDP's timeouts.
        if cfg.eval_every and ((self.epoch + 1) % cfg.eval_every == 0 or last):
            start = time.perf_counter()
            self._evaluate(iw=False)
            self._window["time"] += time.perf_counter() - start  # images/s counts training only
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sum.zero_()
        self._epoch_count = 0
        self._save()

    def _evaluate(self, iw: bool) -> None:
        cfg = self.config
        test = self.test_set
        if cfg.eval_limit is not None and cfg.eval_limit < len(test):
            test = Subset(test, range(cfg.eval_limit))
        result = evaluate(
            self.model, test, batch_size=cfg.eval_batch_size or cfg.batch_size,
            iw_samples=cfg.iw_samples if iw else None, chunk_size=cfg.iw_chunk_size,
            device=self.device, seed=derive_seed(cfg.seed, _EVAL), progress=False,
            single=not iw, num_workers=cfg.num_workers,
        )  # fmt: skip
        values = (
            {"test_bpd_iw": result.bpd_iw, "iw_samples": cfg.iw_samples}
            if iw
            else {"test_bpd": result.bpd_single}
        )
        self.metrics.write(
            "eval", step=self.step, epoch=self.epoch, n_images=result.n_images, **values
        )

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        """Write the checkpoint atomically (rank 0); a crash leaves the previous one intact."""
        if not self.is_main:
            return
        ckpt = {
            "format": FORMAT, "version": VERSION, "config": self.model.config.to_dict(),
            "model": self.model.state_dict(), "train_config": self.config.to_dict(),
            "optimizer": optimizer_state_dict(self.optimizer),  # loads into eager and compiled
            "progress": {
                "step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "nonfinite_run": self._nonfinite_run, "epoch_sum": self._epoch_sum.cpu(),
                "epoch_count": self._epoch_count, "metrics_bytes": self.metrics.offset(),
                "lr": learning_rate(self.config, self.step, self.epoch),
            },
            "data_order": {"seed": self.config.seed, "world_size": self.dist.world_size,
                           "epoch_seed": derive_seed(self.config.seed, _ORDER, self.epoch)},
            "rng": {"torch": torch.get_rng_state(), "cuda": (
                torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)},
        }  # fmt: skip
        atomic_save(ckpt, self.checkpoint_path)
        self._last_checkpoint = (self.checkpoint_path, self.step)

    # ------------------------------------------------------------------ multi-GPU (torchrun)
    def _wrap(self, model: DenseFlow) -> nn.Module:
        """Initialise ActNorm if needed, compile if asked to; under torchrun, wrap in DDP (which
        broadcasts rank 0's parameters and buffers, so every rank starts from rank 0's
        initialisation)."""
        initialized = all(m.is_initialized() for m in model.modules() if isinstance(m, ActNorm))
        if self.step == 0 and not initialized:
            self._initialize(self._prepare(next(self._batches(self._order(0), 0, 1))))
        if self.config.compile:
            compile_model(model)  # after the init, so that it compiles without the init branch
            compile_optimizer(self.optimizer)  # after any resume: it makes the lr a tensor
        if self.config.cuda_graphs:
            if self.dist.world_size > 1:
                raise ValueError(
                    "cuda_graphs works in a single process: a captured step cannot "
                    "hold DistributedDataParallel's gradient all-reduce"
                )
            if self.device.type != "cuda":
                warnings.warn(
                    f"cuda_graphs needs a CUDA device; on {self.device} the step runs eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._graphed = GraphedTrainingStep(model, self.config.amp, self._max_norm)
        if self.dist.world_size == 1:
            return model
        import torch.distributed as tdist
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL's communicator uses the current device
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        ids = [self.device.index] if self.device.type == "cuda" else None
        if self.config.channels_last:
            # DDP gives each parameter's gradient bucket the parameter's strides and warns (once)
            # when a gradient's differ. Under channels_last they differ only for tensors shaped
            # (·, ·, 1, 1), 1×1 weights and ActNorm's (1, C, 1, 1), whose two layouts are the
            # same bytes (pytorch/pytorch#47163); tests/test_performance.py checks that every
            # gradient has its parameter's layout in the dimensions larger than 1. (Without
            # channels_last no strides differ, so there the warning would be news.) A filter for
            # the process: a warnings.catch_warnings around each step would make every other
            # warning repeat.
            warnings.filterwarnings(
                "ignore", message="Grad strides do not match bucket view strides"
            )
        return DistributedDataParallel(model, device_ids=ids)


def train(
    config: TrainConfig, *, train_set: Dataset | None = None, test_set: Dataset | None = None
) -> TrainResult:
    """Train (or resume) the run described by ``config``; see :class:`Trainer`.

    Example (a few steps of the tiny model on the built-in photos)::

        from densflow.train import train, train_preset
        result = train(train_preset("photos", "smoke", out_dir="runs/try"))
        print(result.test_bpd)
    """
    return Trainer(config, train_set=train_set, test_set=test_set).fit()
