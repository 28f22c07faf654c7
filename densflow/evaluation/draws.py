r"""Random draws that depend on the seed and the image's index alone.

Both bounds are Monte Carlo estimates: every image's bits/dim depends on its draws (the
dequantization's base noise and the cross-unit couplings' :math:`e`, eqs. 5 and 9). For a result
to depend only on the seed, image :math:`i`'s draws must be a function of :math:`(s, i)` alone:
not of the batch it shares, the batch or chunk size, the number of processes, nor of where an
interrupted evaluation resumed. A single generator consumed in dataset order would tie image
:math:`i`'s noise to all of those.

**The scheme.** Image :math:`i` of an evaluation with seed :math:`s` draws from its own
``torch.Generator``, one per stream, seeded with

.. math:: \mathrm{seed}(s, i, \mathrm{stream}) = (b(s) + 3i + \mathrm{stream}) \bmod 2^{64},

where :math:`b(s)` is a 64-bit number derived from :math:`s` by numpy's ``SeedSequence`` and the
stream is 0 for the single-sample bound, 1 for the :math:`k` importance samples and 2 for
sampling (sample :math:`i` of a grid). One pass of one image needs one standard-normal vector: every
site of :meth:`~densflow.model.DenseFlow.noise_shapes` in order. Each call of a generator draws a
block of :data:`BLOCK` such vectors for the importance samples (one for the other streams), always
the same size, so importance sample :math:`j` is row :math:`j \bmod 50` of the
:math:`(\lfloor j/50 \rfloor + 1)`-th call whatever the chunks it is evaluated in, and the first
:math:`k` samples are the same for every larger :math:`k`. A chunk of :math:`c` samples of
:math:`B` images is laid out as the batch repeated :math:`c` times (row :math:`jB + b` is sample
:math:`j` of image :math:`b`).

Why offsets and not a hash: CPU generators (MT19937) use only the low 32 bits of a seed, so
hashed seeds would collide by the birthday bound within a few tens of thousands of images; offsets
give every image and stream of an evaluation of up to :math:`2^{32}/3` images a distinct one.
CUDA generators (Philox) use all 64 bits, a key per stream. Draws are made on the model's device
by a generator of that device: a CPU and a GPU give different (equally valid) numbers, each
reproducible. Every draw goes through :func:`densflow.noise.randn`, so
:func:`~densflow.noise.fixed_noise` fixes these too.

**Cost.** One generator call per image and block of 50 samples (the default chunk, so one call per
image and pass), rather than one per noise site for the whole batch: on a GPU, one kernel launch
per image next to a pass of tens of thousands (docs/evaluation.md measures the whole evaluation
before and after).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..model import DenseFlow
from ..noise import randn

__all__ = ["BLOCK", "STREAMS", "IndexedDraws", "index_seeds"]

STREAMS = {"single": 0, "iw": 1, "sample": 2}
"""The streams of draws of one index: the single-sample bound, the importance samples, sampling."""

BLOCK = 50
"""Importance samples drawn per generator call: part of the scheme (another block size draws other
numbers), and the default chunk size, so that a chunk is one call per image."""


def index_seeds(seed: int, stream: str, indices: Sequence[int]) -> list[int]:
    """The generator seeds of ``indices`` in ``stream`` for an evaluation seeded ``seed``:
    ``(b(seed) + 3·i + stream) mod 2**64``.

    Example:
        >>> a = index_seeds(0, "iw", [0, 1, 5])
        >>> [(s - a[0]) % 2**64 for s in a]
        [0, 3, 15]
    """
    base = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
    offset = STREAMS[stream]
    return [(base + len(STREAMS) * int(i) + offset) % 2**64 for i in indices]


class IndexedDraws:
    """The draws of a list of indices in one stream: one generator per index, on the model's
    device, drawn in blocks (:data:`BLOCK` passes for the importance samples, one otherwise);
    :meth:`next` takes the next passes of every index.

    Arguments:
        model: the flow whose noise sites are drawn (their shapes, dtype and device).
        seed: the evaluation's seed.
        stream: ``"single"``, ``"iw"`` or ``"sample"`` (:data:`STREAMS`).
        indices: the images' (or samples') indices, in batch order.
        sampling: the sites of the sampling pass (the prior and the dropped halves) rather than
            those of the likelihood.
    """

    def __init__(
        self, model: DenseFlow, seed: int, stream: str, indices: Sequence[int], *,
        sampling: bool = False,
    ) -> None:  # fmt: skip
        self.shapes = {
            name: shape[1:] for name, shape in model.noise_shapes(1, sampling=sampling).items()
        }
        self.sizes = [math.prod(shape) for shape in self.shapes.values()]
        self.dtype, self.device = model.prior.loc.dtype, model.prior.loc.device
        self.block = BLOCK if stream == "iw" else 1
        self.generators = [
            torch.Generator(self.device).manual_seed(s) for s in index_seeds(seed, stream, indices)
        ]
        # each index's block of draws in use, and its number (passes are taken in order)
        self.current: list[tuple[int, Tensor]] = [(-1, torch.empty(0))] * len(self.generators)
        self.position = 0  # passes taken so far, of every index

    def _rows(self, b: int, start: int, stop: int) -> Tensor:
        """Passes ``start .. stop − 1`` of the ``b``-th index, ``(stop − start, size)``, its
        generator drawing its next block when one is reached."""
        parts = []
        while start < stop:
            block, offset = divmod(start, self.block)
            number, values = self.current[b]
            if number != block:
                values = randn((self.block, sum(self.sizes)), generator=self.generators[b],
                               dtype=self.dtype, device=self.device)  # fmt: skip
                self.current[b] = (block, values)
            take = min(stop - start, self.block - offset)
            parts.append(values[offset : offset + take])
            start += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def next(self, repeats: int = 1) -> dict[str, Tensor]:
        """The next ``repeats`` passes' draws of every index (at least one), named by site, each
        of shape ``(repeats · len(indices), …)``: row ``j · len(indices) + b`` is pass ``j`` of
        index ``b`` (the layout of ``x.repeat(repeats, 1, 1, 1)``)."""
        start, stop = self.position, self.position + repeats
        rows = [self._rows(b, start, stop) for b in range(len(self.generators))]
        self.position = stop
        flat = torch.stack(rows, dim=1).reshape(repeats * len(rows), -1)
        parts = torch.split(flat, self.sizes, dim=1)
        return {
            name: part.reshape(len(flat), *shape).contiguous()
            for (name, shape), part in zip(self.shapes.items(), parts, strict=True)
        }
