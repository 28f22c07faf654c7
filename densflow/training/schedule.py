r"""What step ``s`` of a run sees, from the config and ``s`` alone: its learning rate, the data
order of its epoch, and the seeds of its random draws. Nothing here keeps state, which is why a
resumed run can rebuild all of it from a checkpoint's position.

The schedule (Appendix C): Adamax at lr 1e-3 with a linear warm-up over the first steps and an
exponential decay per epoch, then a fine-tuning phase at a constant lr 2e-5.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..utils.errors import InputError
from .config import TrainConfig

__all__ = ["Stream", "derive_seed", "epoch_permutation", "learning_rate", "shard_indices"]


class Stream:
    """Independent random streams derived from the run's seed."""

    INIT, ORDER, AUGMENT, NOISE, EVAL = range(5)


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


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (``numpy.random.SeedSequence``), so
    that nearby keys such as consecutive steps give unrelated streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the ``n`` training images in ``epoch``: a permutation seeded by ``(seed,
    epoch)`` alone, so that a resumed run can rebuild it."""
    g = torch.Generator().manual_seed(derive_seed(seed, Stream.ORDER, epoch))
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
        raise InputError(f"rank {rank} is not in 0..{world_size - 1}")
    usable = len(indices) // world_size * world_size
    return indices[:usable][rank::world_size]
