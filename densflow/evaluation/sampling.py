"""Samples of a model: :func:`draw_samples` and :func:`save_sample_grid`, sharded over
``torchrun``'s processes.

Sample ``i``'s draws (the prior's and the dropped halves', scaled by the temperature) come from
a generator of its own, seeded from the seed and ``i`` (the ``"sample"`` stream of
:mod:`~densflow.evaluation.draws`): the grid is the same however many processes draw it, each
its contiguous share of the samples. A grid whose values are not finite numbers (weights that are
not finite, or so large that the flow overflows: they would quantize to a black image) is
refused, with nothing written.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ..io.checkpoint import nonfinite_entries
from ..io.files import atomic_write
from ..model import DenseFlow
from ..performance import autocast
from ..utils.distributed import Dist
from .config import EvalConfig
from .distributed import Group
from .draws import IndexedDraws
from .passes import graphed_flow
from .result import NonFiniteError

__all__ = ["draw_samples", "save_sample_grid"]


def draw_samples(
    model: DenseFlow, config: EvalConfig | None = None, *, dist: Dist | None = None,
    **changes: Any,
) -> Tensor:  # fmt: skip
    """``config.n_samples`` uint8 samples ``(n, 3, H, W)`` drawn in eval mode at
    ``config.temperature``; the model's mode is restored.

    ``changes`` replace fields of ``config`` (:class:`EvalConfig`), e.g.
    ``draw_samples(model, n_samples=16, seed=3)``. ``amp="bf16"`` runs the coupling networks in
    bfloat16 (the same draws, so pixels differ slightly from the float32 samples);
    ``cuda_graphs``: the sampling pass replayed from a CUDA graph
    (:class:`~densflow.performance.GraphedFlow`, the same draws; eager, with a warning, on a CPU).
    For one grid the capture costs more than the replay saves.
    ``dist``: every process of a ``torchrun`` job draws its share, and every one returns the
    whole grid (default: a single process).

    Weights holding NaN or inf are refused before any draw, and samples that are not finite
    after it (:class:`~densflow.evaluation.result.NonFiniteError`).
    """
    config = (config or EvalConfig()).replace(**changes)
    dist = dist or Dist()
    bad = nonfinite_entries(model.state_dict())
    if bad:
        raise NonFiniteError(
            f"the model's weights are not finite ({len(bad)} tensors hold NaN or inf, e.g. "
            f"{bad[0]}), so its samples would be meaningless; sample from a checkpoint saved "
            "before training diverged"
        )
    device = next(model.parameters()).device
    group = Group(dist, device)
    shard = dist.shard(config.n_samples)
    flow = graphed_flow(model, config.amp, "sampling") if config.cuda_graphs else model
    precision = autocast(device, "none" if config.cuda_graphs else config.amp)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), precision:
            v = torch.zeros(0, *model.image_shape, device=device)
            if len(shard):
                noise = IndexedDraws(model, config.seed, "sample", shard, sampling=True).next()
                v = flow.sample_continuous(len(shard), config.temperature, noise=noise)
            nonfinite = int((~torch.isfinite(v)).flatten(1).any(dim=1).sum())
            # A flow whose loss is no longer finite (an update of lr=1e30) may still give finite
            # samples, far outside the image range [0, 1]: quantized, they saturate to black and
            # white. A sample with most sub-pixels a whole range beyond it is refused too.
            far = ((v < -1.0) | (v > 2.0)).flatten(1).float().mean(dim=1) > 0.5
            overflowed = int(far.sum())
            samples = model.dequantization.flow_inverse(v).cpu()
    finally:
        model.train(was_training)
    parts = group.gather((samples, nonfinite, overflowed))
    nonfinite = sum(bad for _, bad, _ in parts)
    overflowed = sum(far for _, _, far in parts)
    if nonfinite:
        raise NonFiniteError(
            f"{nonfinite} of {config.n_samples} samples are not finite (NaN or inf), so the "
            "grid would be black: the model's weights are too large or its outputs overflow; "
            "sample from an earlier checkpoint of the run"
        )
    if overflowed:
        raise NonFiniteError(
            f"{overflowed} of {config.n_samples} samples lie far outside the image range (most "
            "sub-pixels beyond [-1, 2] before quantization), so the grid would be saturated: "
            "the model's loss is not finite or its outputs overflow; sample from an earlier "
            "checkpoint of the run"
        )
    return torch.cat([s for s, _, _ in parts])


def save_sample_grid(
    model: DenseFlow, path: str | os.PathLike, config: EvalConfig | None = None, *,
    dist: Dist | None = None, **changes: Any,
) -> Tensor:  # fmt: skip
    """Draw ``config.n_samples`` images (:func:`draw_samples`) and write them to ``path`` as a
    PNG grid of ``config.nrow`` columns (by rank 0 alone under ``torchrun``); nothing is written
    when the samples are refused. Returns the uint8 samples ``(n, 3, H, W)``."""
    from torchvision.utils import save_image

    config = (config or EvalConfig()).replace(**changes)
    dist = dist or Dist()
    samples = draw_samples(model, config, dist=dist)
    if not dist.is_main:
        return samples
    with atomic_write(path) as f:  # a crash or a full disk never leaves half a PNG
        save_image(samples.float() / 255.0, f, format="png", nrow=config.nrow, padding=2)
    return samples
