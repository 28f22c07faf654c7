"""What each training step is fed: its batch, in the seeded order of its epoch and augmented on
the device, and the model's noise. Every draw comes from a generator re-seeded from
``(seed, stream, step, rank)`` (:mod:`densflow.training.schedule`), so a resumed run feeds its
steps exactly what the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .. import data
from ..model import DenseFlow
from ..performance import to_channels_last
from ..runtime import collate_images
from .config import TrainConfig
from .schedule import Stream, derive_seed, epoch_permutation, shard_indices

__all__ = ["StepInputs"]


class StepInputs:
    """The inputs of a run's steps on ``device``, for process ``rank`` of ``world_size``.

    Arguments:
        train_set: uint8 ``(3, S, S)`` images (or tuples whose first item is one).
        config: the run (its seed, batch size, workers, augmentation and memory format).
        model: the model whose noise is drawn.
    """

    def __init__(
        self, train_set: Dataset, config: TrainConfig, model: DenseFlow, device: torch.device,
        rank: int, world_size: int,
    ) -> None:  # fmt: skip
        self.train_set, self.config, self.model = train_set, config, model
        self.device, self.rank, self.world_size = device, rank, world_size
        self.augment = data.augmentation_for(config.dataset) if config.augmentation else None
        # Generators on the training device: drawing on the CPU for a CUDA model would make every
        # draw a synchronous host-to-device copy.
        self._noise = torch.Generator(device)
        self._aug_gen = torch.Generator(device)

    def batches(self, epoch: int, start: int, stop: int) -> Iterator[Tensor]:
        """Batches ``start..stop-1`` of ``epoch`` in this rank's order (full batches only)."""
        order = epoch_permutation(len(self.train_set), self.config.seed, epoch)
        order = shard_indices(order, self.rank, self.world_size)
        b = self.config.batch_size
        chunks = order[: stop * b].view(stop, b)[start:].tolist()
        loader = DataLoader(
            self.train_set, batch_sampler=chunks, num_workers=self.config.num_workers,
            collate_fn=collate_images, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        return iter(loader)

    def _seed(self, stream: int, step: int) -> int:
        return derive_seed(self.config.seed, stream, step, self.rank)

    def prepare(self, x: Tensor, step: int) -> Tensor:
        """Move a batch to the device, then augment it there (draws from a per-step generator)."""
        x = x.to(self.device, non_blocking=True)
        if self.augment is not None:
            self._aug_gen.manual_seed(self._seed(Stream.AUGMENT, step))
            x = self.augment(x, self._aug_gen)
        return to_channels_last(x) if self.config.channels_last else x

    def noise_generator(self, step: int) -> torch.Generator:
        """The generator of the model noise of ``step``, seeded for it."""
        return self._noise.manual_seed(self._seed(Stream.NOISE, step))

    def noise(self, x: Tensor, step: int) -> dict[str, Tensor]:
        """The model noise of ``step`` for the batch ``x``."""
        return self.model.draw_noise(x.shape[0], self.noise_generator(step))
