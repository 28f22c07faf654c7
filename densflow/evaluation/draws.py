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
sampling (sample :math:`i` of a grid). Each call of a generator draws the flat noise of one pass of
one image, every site of :meth:`~densflow.model.DenseFlow.noise_shapes` in order, as one
standard-normal vector: the single-sample bound is the first call of stream 0, importance sample
:math:`j` the :math:`(j+1)`-th call of stream 1. A chunk of :math:`c` samples of :math:`B` images
takes :math:`c` calls of each image's generator and lays them out as the batch repeated
:math:`c` times (row :math:`jB + b` is sample :math:`j` of image :math:`b`).

Why offsets and not a hash: CPU generators (MT19937) use only the low 32 bits of a seed, so
hashed seeds would collide by the birthday bound within a few tens of thousands of images; offsets
give every image and stream of an evaluation of up to :math:`2^{32}/3` images a distinct one.
CUDA generators (Philox) use all 64 bits, a key per stream. Draws are made on the model's device
by a generator of that device: a CPU and a GPU give different (equally valid) numbers, each
reproducible. Every draw goes through :func:`densflow.noise.randn`, so
:func:`~densflow.noise.fixed_noise` fixes these too.

**Cost.** One generator call per image and sample, rather than one per noise site for the whole
batch: a few microseconds each, next to a pass that takes milliseconds per image
(docs/evaluation.md measures the whole evaluation before and after).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..model import DenseFlow
from ..noise import randn

__all__ = ["STREAMS", "IndexedDraws", "index_seeds"]

STREAMS = {"single": 0, "iw": 1, "sample": 2}
"""The streams of draws of one index: the single-sample bound, the importance samples, sampling."""


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
    device, each call of :meth:`next` advancing every one of them by ``repeats`` passes.

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
        self.generators = [
            torch.Generator(self.device).manual_seed(s) for s in index_seeds(seed, stream, indices)
        ]

    def next(self, repeats: int = 1) -> dict[str, Tensor]:
        """The next ``repeats`` passes' draws of every index (at least one), named by site, each
        of shape ``(repeats · len(indices), …)``: row ``j · len(indices) + b`` is pass ``j`` of
        index ``b`` (the layout of ``x.repeat(repeats, 1, 1, 1)``)."""
        size = sum(self.sizes)
        rows = [
            randn((size,), generator=g, dtype=self.dtype, device=self.device)
            for _ in range(repeats)
            for g in self.generators
        ]
        flat = torch.stack(rows)
        parts = torch.split(flat, self.sizes, dim=1)
        return {
            name: part.reshape(len(rows), *shape).contiguous()
            for (name, shape), part in zip(self.shapes.items(), parts, strict=True)
        }
