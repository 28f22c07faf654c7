"""The variants of the ablation study and the scales it runs at.

Each variant is the reference :class:`~densflow.config.DenseFlowConfig` with one change
(:data:`VARIANTS`, or ``growth{g}``), its coupling networks' widths re-tuned by
:func:`match_parameters` so that it has the reference's parameter count.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import DenseFlowConfig
from ..training import TrainConfig
from ..utils.errors import InputError
from ..utils.validate import field_default
from .measure import count_parameters

__all__ = [
    "ABLATION_PRESETS",
    "PARAM_TOLERANCE",
    "REFERENCE",
    "VARIANTS",
    "AblationPreset",
    "all_variants",
    "match_parameters",
    "reference_config",
    "variant_configs",
]

PARAM_TOLERANCE = 0.05
"""Largest relative difference of a variant's parameter count from the reference's."""

VARIANTS: dict[str, dict[str, Any]] = {
    "glow": {"augmentation": "none"},
    "input": {"augmentation": "input"},
    "denseflow": {},
    "dense": {"coupling_net": "dense"},
    "attention": {"coupling_net": "attention"},
}
"""The fixed variants: their changes to the reference config (growth rates come from presets)."""

REFERENCE = "denseflow"


@dataclass(frozen=True)
class AblationPreset:
    """A scale of the ablation study.

    Attributes:
        model: the reference config's fields (besides ``image_size``, the dataset's).
        steps: training steps of every run.
        seeds: seeds of every variant.
        batch_size: images per step.
        growth_rates: the growth-rate sweep (besides the reference's and the plain flow's 0).
        eval_limit: test images evaluated (None: the whole split).
        iw_samples: k of the importance-weighted bound.
        lr, warmup_steps: peak learning rate and its linear warm-up.
        cost_units: units of the first dense block in the cost sweep over cross-unit couplings.
    """

    model: dict[str, Any]
    steps: int
    seeds: tuple[int, ...]
    batch_size: int
    growth_rates: tuple[int, ...]
    eval_limit: int | None
    iw_samples: int
    lr: float = field_default(TrainConfig, "lr")
    warmup_steps: int = 10
    cost_units: tuple[int, ...] = (1, 2, 3, 4, 6)


# The course's small model (DenseFlowConfig.small()) at half its depth everywhere: a DenseFlow
# of 0.14 M parameters whose runs of a few hundred steps fit a CPU.
_MINI = dict(
    DenseFlowConfig.small().to_dict(),
    image_size=None,
    layers_config=(1, 1, 2),
    mid_channels=(16, 16, 16),
    coupling_dense_depth=2,
    deq_num_steps=1,
    deq_depth=1,
    deq_context_depth=1,
)

ABLATION_PRESETS: dict[str, AblationPreset] = {
    # Every code path in about a minute: the tiny model, 2 steps, one seed. Not for results.
    "smoke": AblationPreset(
        model=dict(DenseFlowConfig.tiny().to_dict(), image_size=None, mid_channels=(12, 12, 12)),
        steps=2, seeds=(0,), batch_size=4, growth_rates=(3,), eval_limit=8, iw_samples=2,
        warmup_steps=1, cost_units=(1, 2, 3),
    ),
    # Minutes on a busy CPU: the smoke model, 3 seeds of 24 steps. Trends only.
    "quickstart": AblationPreset(
        model=dict(DenseFlowConfig.tiny().to_dict(), image_size=None, mid_channels=(12, 12, 12)),
        steps=24, seeds=(0, 1, 2), batch_size=8, growth_rates=(4,), eval_limit=32, iw_samples=4,
        lr=2e-3, warmup_steps=6, cost_units=(1, 2, 3, 4),
    ),
    # About 25 minutes on two free CPU cores: a 0.14 M-parameter DenseFlow, 3 seeds of 735 steps
    # (5 epochs of photos), evaluated on the whole test split.
    "cpu": AblationPreset(
        model=dict(_MINI), steps=735, seeds=(0, 1, 2), batch_size=16, growth_rates=(2, 8),
        eval_limit=None, iw_samples=4, lr=2e-3, warmup_steps=20,
    ),
    # GPU scale: DenseFlow-74-10 itself, 20,000 steps of 64 images per run.
    "paper": AblationPreset(
        model={}, steps=20_000, seeds=(0, 1, 2), batch_size=64, growth_rates=(5, 20),
        eval_limit=None, iw_samples=200, warmup_steps=5000, cost_units=(1, 2, 4, 6, 8),
    ),
}  # fmt: skip
"""Preset name → scale: ``smoke`` (tests), ``quickstart`` (minutes), ``cpu`` (the default),
``paper`` (a GPU)."""


def match_parameters(
    config: DenseFlowConfig,
    target: int,
    tolerance: float = PARAM_TOLERANCE,
    count: Callable[[DenseFlowConfig], int] = count_parameters,
) -> DenseFlowConfig:
    """``config`` with coupling-network widths whose parameter count is nearest to ``target``.

    Bisection finds the largest common width ``m`` not above the target; then every mix of ``m``
    and ``m + 1`` across the dense blocks is tried (a finer step than one common width).
    Raises ``ValueError`` when the nearest is still outside ``tolerance``.
    """
    n = len(config.block_config)
    cache: dict[tuple[int, ...], int] = {}

    def params(mids: tuple[int, ...]) -> int:
        if mids not in cache:
            cache[mids] = count(dataclasses.replace(config, mid_channels=mids))
        return cache[mids]

    lo, hi = 2, 4
    while params((hi,) * n) < target:
        lo, hi = hi, 2 * hi
        if hi > 4096:
            raise InputError(f"no coupling-network width up to 4096 reaches {target:,} parameters")
    while hi - lo > 1:  # params((lo,)*n) < target <= params((hi,)*n), or lo the smallest
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params((mid,) * n) < target else (lo, mid)
    best = min(
        (tuple(m) for m in itertools.product((lo, hi), repeat=n)),
        key=lambda mids: abs(params(mids) - target),
    )
    got = params(best)
    if abs(got - target) > tolerance * target:
        raise InputError(
            f"cannot match {target:,} parameters within {tolerance:.0%} by the coupling-network "
            f"widths (nearest: {got:,} at mid_channels={best}); change the reference config"
        )
    return dataclasses.replace(config, mid_channels=best)


def reference_config(preset: AblationPreset, image_size: int) -> DenseFlowConfig:
    return DenseFlowConfig(**{**preset.model, "image_size": image_size})


def variant_configs(
    preset: AblationPreset, image_size: int, variants: Sequence[str] | None = None
) -> dict[str, DenseFlowConfig]:
    """Variant name → its config, parameter-matched to the reference (``variants``: all, or
    these names; ``growth{g}`` for any ``g`` is understood)."""
    reference = reference_config(preset, image_size)
    names = list(variants) if variants is not None else all_variants(preset)
    target = count_parameters(reference)
    configs = {}
    for name in names:
        if name in VARIANTS:
            changes = VARIANTS[name]
        elif name.startswith("growth") and name[6:].isdigit() and int(name[6:]) > 0:
            changes = {"growth_rate": int(name[6:])}
        else:
            raise InputError(
                f"unknown ablation variant {name!r}; choose from {all_variants(preset)} or "
                "growth<g> with g >= 1"
            )
        config = dataclasses.replace(reference, **changes)
        configs[name] = config if config == reference else match_parameters(config, target)
    return configs


def all_variants(preset: AblationPreset) -> list[str]:
    return [*VARIANTS, *(f"growth{g}" for g in preset.growth_rates)]
