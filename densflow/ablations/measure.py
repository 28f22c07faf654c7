"""What a variant costs: parameters, latent dimensions, multiply-accumulates and step time, and
the cost sweep over the growth rate and the number of cross-unit couplings (Appendix A's
"overgrowth")."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..config import DenseFlowConfig
from ..model import DenseFlow
from ..utils.validate import check_int

__all__ = ["cost", "count_parameters", "latent_dims", "multiply_accumulates", "step_time"]


def count_parameters(model_or_config: torch.nn.Module | DenseFlowConfig) -> int:
    """Trainable parameters of a model, or of the model a config builds."""
    model = (
        DenseFlow(model_or_config)
        if isinstance(model_or_config, DenseFlowConfig)
        else model_or_config
    )
    return sum(p.numel() for p in model.parameters())


def latent_dims(model: DenseFlow) -> int:
    """Dimensions of the latent ``z`` of one image: the prior's and every factored-out half's
    (the data's 3·H·W plus every appended noise channel, which the transitions keep)."""
    return sum(math.prod(s) for s in model.noise_shapes(1, sampling=True).values())


@torch.no_grad()
def multiply_accumulates(model: DenseFlow, generator: torch.Generator | None = None) -> int:
    """Multiply-accumulates of one image's single-sample log-likelihood (convolutions, linear
    layers and matrix products, counted by :class:`torch.utils.flop_counter.FlopCounterMode`,
    which counts 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros((1, *model.image_shape), dtype=torch.uint8, device=model.prior.loc.device)
    counter = FlopCounterMode(display=False)
    with counter:
        model.log_prob(x, generator=generator)
    model.train(was_training)
    return counter.get_total_flops() // 2


def step_time(
    model: DenseFlow, batch_size: int, steps: int = 2, generator: torch.Generator | None = None
) -> float:
    """Median seconds of a training step's forward and backward pass (after one warm-up)."""
    steps = check_int("steps", steps)
    x = torch.randint(
        0, 256, (batch_size, *model.image_shape), dtype=torch.uint8, generator=generator
    )
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        (-model.log_prob(x, generator=generator).mean()).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def cost(
    reference: DenseFlowConfig,
    *,
    growth_rates: Sequence[int],
    cost_units: Sequence[int],
    batch_size: int,
    timing_steps: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Parameters, latent dimensions, MACs per image and step time of the ``reference`` config
    against its growth rate (0, ``growth_rates`` and the reference's) and against the number of
    cross-unit couplings of its first dense block (``cost_units`` units, each of that block's
    modules per unit). Widths are not re-matched: this is what growth itself costs."""
    growths = sorted({0, reference.growth_rate, *growth_rates})
    points: list[tuple[str, int, DenseFlowConfig]] = [
        ("growth_rate", g, dataclasses.replace(reference, growth_rate=g))
        if g
        else ("growth_rate", 0, dataclasses.replace(reference, augmentation="none"))
        for g in growths
    ]
    for units in cost_units:
        blocks = (units, *reference.block_config[1:])
        points.append(
            ("cross_unit_couplings", units - 1, dataclasses.replace(reference, block_config=blocks))
        )
    rows = []
    for axis, value, config in points:
        torch.manual_seed(seed)
        model = DenseFlow(config)
        generator = torch.Generator().manual_seed(seed)
        rows.append({
            "axis": axis,
            "value": value,
            "params": count_parameters(model),
            "latent_dims": latent_dims(model),
            "macs": multiply_accumulates(model, generator),
            "seconds_per_step": step_time(model, batch_size, timing_steps, generator)
            if timing_steps
            else None,
        })  # fmt: skip
    return rows
