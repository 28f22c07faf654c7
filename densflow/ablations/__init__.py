"""The paper's claims in miniature: ablations of DenseFlow at matched parameter count, and its cost.

The paper makes three claims. (i) Incremental augmentation with cross-unit coupling (eqs. 6–9,
Sec. 2.1) beats a plain flow and one-shot augmentation of the input (VFlow, ANF) at equal capacity;
(ii) fusing a dense block with Nyström self-attention in the coupling network (Fig. 2, Sec. 2.2)
beats either branch alone; (iii) the latent tensor's growth pays only up to a point (Appendix A,
"overgrowth"). Each variant here is a :class:`~densflow.config.DenseFlowConfig` of the same
modules:

* ``glow`` — ``augmentation="none"``: no noise, each dense block one unit of its modules;
* ``input`` — ``augmentation="input"``: the same number of latent noise dimensions appended once
  before the first unit;
* ``denseflow`` — the reference: incremental augmentation, dense block ∥ attention;
* ``dense`` / ``attention`` — coupling networks with one branch;
* ``growth{g}`` — the reference at growth rate ``g`` (``glow`` is the growth-0 end).

Every variant's coupling-network widths (``mid_channels``) are tuned so that its parameter count
is within :data:`PARAM_TOLERANCE` of the reference's (:func:`match_parameters`). :func:`run`
trains and evaluates every (variant, seed), resumably: a finished pair's ``result.json`` is read
back, an interrupted training resumes from its checkpoint in ``out_dir/<variant>/seed<s>``.
"""

from .measure import cost, count_parameters, latent_dims, multiply_accumulates, step_time
from .report import (
    CLAIMS,
    compare,
    growth_stops_paying,
    growth_sweep,
    plot_cost,
    plot_curves,
    plot_variants,
    table,
    verdicts,
)
from .study import PAPER_STAND_INS, notebook_parameters, paper_reference, run, run_one, summarize
from .variants import (
    ABLATION_PRESETS,
    PARAM_TOLERANCE,
    REFERENCE,
    VARIANTS,
    AblationPreset,
    all_variants,
    match_parameters,
    reference_config,
    variant_configs,
)

__all__ = [
    "ABLATION_PRESETS",
    "CLAIMS",
    "PAPER_STAND_INS",
    "PARAM_TOLERANCE",
    "REFERENCE",
    "VARIANTS",
    "AblationPreset",
    "all_variants",
    "compare",
    "cost",
    "count_parameters",
    "growth_stops_paying",
    "notebook_parameters",
    "growth_sweep",
    "latent_dims",
    "match_parameters",
    "multiply_accumulates",
    "paper_reference",
    "plot_cost",
    "plot_curves",
    "plot_variants",
    "reference_config",
    "run",
    "run_one",
    "step_time",
    "summarize",
    "table",
    "variant_configs",
    "verdicts",
]
