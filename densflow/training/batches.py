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
from ..utils.runtime import collate_images
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

    def prefetch(self, epoch: int, start: int, stop: int, step: int) -> Prefetch:
        """The inputs ``(x, noise)`` of batches ``start..stop-1`` of ``epoch``, the first being
        global step ``step``, prepared one ahead (:class:`Prefetch`)."""
        return Prefetch(self, self.batches(epoch, start, stop), step)


class Prefetch:
    """Iterates over ``(x, noise)``, each prepared on the device (:meth:`StepInputs.prepare`,
    :meth:`StepInputs.noise`), and prepares the next one on request.

    A step calls :meth:`fetch_next` once its own work is issued to the device and before it
    waits for it (``TrainStep(..., overlap=...)``): the next batch is then loaded, copied and
    augmented while the device computes. Every draw is seeded by its step, so when a batch is
    prepared changes no number. An error while preparing the next batch is raised when that
    batch is asked for, after the current step has finished.
    """

    def __init__(self, inputs: StepInputs, batches: Iterator[Tensor], step: int) -> None:
        self.inputs, self.batches, self.step = inputs, batches, step
        self._next: tuple[Tensor, dict[str, Tensor]] | BaseException | None = None

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> tuple[Tensor, dict[str, Tensor]]:
        self.fetch_next()
        item, self._next = self._next, None
        if isinstance(item, BaseException):
            raise item
        self.step += 1
        return item

    def fetch_next(self) -> None:
        """Prepare the inputs of the next step, unless they already are."""
        if self._next is not None:
            return
        try:
            x = self.inputs.prepare(next(self.batches), self.step)
            self._next = (x, self.inputs.noise(x, self.step))
        except Exception as err:  # StopIteration included: the end shows at the next __next__
            self._next = err
