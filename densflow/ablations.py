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

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import DenseFlowConfig
from .data import dataset_info, load_dataset
from .model import DenseFlow
from .runtime import first_images, log_to_stderr
from .training import TrainConfig, read_metrics, train

__all__ = [
    "ABLATION_PRESETS",
    "PAPER_ABLATIONS",
    "PARAM_TOLERANCE",
    "VARIANTS",
    "AblationPreset",
    "cost",
    "count_parameters",
    "latent_dims",
    "match_parameters",
    "multiply_accumulates",
    "run",
    "summarize",
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

PAPER_ABLATIONS: dict[str, Any] = {
    "source": "arXiv 2106.04627, Sec. 3 onwards (not retrieved)",
    "note": (
        "The paper's ablation experiments sit in its experimental section, which the paper text "
        "consulted for this kit (Secs. 1-2, Appendices A-G) does not contain, and a search of "
        "public copies did not return it; no paper number is shown rather than one from memory."
    ),
    "scale": (
        "DenseFlow-74-10 (130,647,294 parameters) trained on ImageNet32 for 20 epochs of batch "
        "64 (about 400,000 steps) plus 2 fine-tuning epochs (Appendix C)"
    ),
    "bpd": {},
}
"""The paper's own ablation numbers, where its text reports them (``bpd``: variant → bits/dim)."""


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
    lr: float = 1e-3
    warmup_steps: int = 10
    cost_units: tuple[int, ...] = (1, 2, 3, 4, 6)


_MINI = dict(
    block_config=(2, 2, 1),
    layers_config=(1, 1, 2),
    mid_channels=(16, 16, 16),
    growth_rate=4,
    coupling_dense_depth=2,
    coupling_dense_growth=16,
    deq_num_steps=1,
    deq_context_channels=16,
    deq_mid_channels=16,
    deq_depth=1,
    deq_growth=16,
    deq_context_depth=1,
    deq_context_growth=8,
)

ABLATION_PRESETS: dict[str, AblationPreset] = {
    # Every code path in about a minute: the tiny model, 2 steps, one seed. Not for results.
    "smoke": AblationPreset(
        model=dict(DenseFlowConfig.tiny().to_dict(), image_size=None, mid_channels=(12, 12, 12)),
        steps=2, seeds=(0,), batch_size=4, growth_rates=(3,), eval_limit=8, iw_samples=2,
        warmup_steps=1, cost_units=(1, 2, 3),
    ),
    # Minutes on a busy CPU: the smoke model, 3 seeds of 24 steps. Trends only.
    "quick": AblationPreset(
        model=dict(DenseFlowConfig.tiny().to_dict(), image_size=None, mid_channels=(12, 12, 12)),
        steps=24, seeds=(0, 1, 2), batch_size=8, growth_rates=(4,), eval_limit=32, iw_samples=4,
        lr=2e-3, warmup_steps=6, cost_units=(1, 2, 3, 4),
    ),
    # About 20 minutes on two free CPU cores: a 0.14 M-parameter DenseFlow, 3 seeds of 80 steps.
    "cpu": AblationPreset(
        model=dict(_MINI), steps=80, seeds=(0, 1, 2), batch_size=16, growth_rates=(2, 8),
        eval_limit=64, iw_samples=4, lr=2e-3, warmup_steps=10,
    ),
    # GPU scale: DenseFlow-74-10 itself, 20,000 steps of 64 images per run.
    "paper": AblationPreset(
        model={}, steps=20_000, seeds=(0, 1, 2), batch_size=64, growth_rates=(5, 20),
        eval_limit=None, iw_samples=200, warmup_steps=5000, cost_units=(1, 2, 4, 6, 8),
    ),
}  # fmt: skip
"""Preset name → scale: ``smoke`` (tests), ``quick`` (minutes), ``cpu`` (the default),
``paper`` (a GPU)."""


# ----------------------------------------------------------------------------- measurements
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


# ----------------------------------------------------------------------------- variants
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
            raise ValueError(f"no coupling-network width up to 4096 reaches {target:,} parameters")
    while hi - lo > 1:  # params((lo,)*n) < target <= params((hi,)*n), or lo the smallest
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params((mid,) * n) < target else (lo, mid)
    best = min(
        (tuple(m) for m in itertools.product((lo, hi), repeat=n)),
        key=lambda mids: abs(params(mids) - target),
    )
    got = params(best)
    if abs(got - target) > tolerance * target:
        raise ValueError(
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
            raise ValueError(
                f"unknown ablation variant {name!r}; choose from {all_variants(preset)} or "
                "growth<g> with g >= 1"
            )
        config = dataclasses.replace(reference, **changes)
        configs[name] = config if config == reference else match_parameters(config, target)
    return configs


def all_variants(preset: AblationPreset) -> list[str]:
    return [*VARIANTS, *(f"growth{g}" for g in preset.growth_rates)]


# ----------------------------------------------------------------------------- runs
def _train_config(
    config: DenseFlowConfig,
    preset: AblationPreset,
    *,
    dataset: str,
    data_dir: str | None,
    out_dir: Path,
    seed: int,
    steps: int,
    batch_size: int,
    device: str,
) -> TrainConfig:
    return TrainConfig(
        dataset=dataset,
        data_dir=data_dir,
        model_config=config,
        batch_size=batch_size,
        epochs=1,
        steps_per_epoch=steps,
        lr=preset.lr,
        warmup_steps=min(preset.warmup_steps, max(1, steps // 4)),
        eval_every=0,
        eval_limit=8,  # the Trainer's own end-of-run look; the study's evaluation follows
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, min(10, steps // 4)),
        seed=seed,
        device=device,
        out_dir=str(out_dir),
        resume=True,
        progress=False,
    )


def _seconds_per_step(out_dir: Path, batch_size: int) -> float | None:
    rates = [
        e["images_per_s"]
        for e in read_metrics(out_dir)
        if e.get("event") == "train" and e.get("images_per_s")
    ]
    return batch_size / statistics.median(rates) if rates else None


def run_one(
    name: str,
    config: DenseFlowConfig,
    preset: AblationPreset,
    *,
    seed: int,
    dataset: str,
    data_dir: str | None,
    out_dir: str | os.PathLike,
    steps: int,
    batch_size: int,
    device: str,
    test_set: Any,
) -> dict[str, Any]:
    """Train and evaluate one (variant, seed) in ``out_dir/<name>/seed<seed>``, or read back its
    ``result.json`` when that run is finished with the same config, steps and batch size."""
    from .evaluate import evaluate

    run_dir = Path(out_dir) / name / f"seed{seed}"
    done = run_dir / "result.json"
    key = {"config": config.to_dict(), "steps": steps, "batch_size": batch_size, "seed": seed}
    if done.is_file():
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in key} == json.loads(json.dumps(key)):
            return {**previous, "resumed": True}
    start = time.time()
    train_config = _train_config(
        config, preset, dataset=dataset, data_dir=data_dir, out_dir=run_dir, seed=seed,
        steps=steps, batch_size=batch_size, device=device,
    )  # fmt: skip
    trained = train(train_config)
    model = trained.model
    k = preset.iw_samples
    result = evaluate(
        model, test_set, batch_size=batch_size, iw_samples=k, chunk_size=k, seed=seed,
        progress=False, partial_path=run_dir / f"eval_k{k}.partial.pt",
    )  # fmt: skip
    generator = torch.Generator(device=model.prior.loc.device).manual_seed(seed)
    record = {
        **key,
        "variant": name,
        "params": count_parameters(model),
        "latent_dims": latent_dims(model),
        "macs": multiply_accumulates(model, generator),
        "bpd_single": result.bpd_single,
        "bpd_iw": result.bpd_iw,
        "iw_samples": k,
        "n_test_images": result.n_images,
        "train_bpd": trained.train_bpd,
        "seconds_per_step": _seconds_per_step(run_dir, batch_size),
        "wall_s": time.time() - start,
        "resumed": False,
    }
    for metric in ("bpd_single", "bpd_iw"):
        if not math.isfinite(record[metric]):
            raise ValueError(
                f"{name} seed {seed}: {metric} is {record[metric]} (training diverged)"
            )
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Variant → its runs' means and sample standard deviations (``std`` 0 for one seed)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == name]
        first = runs[0]
        row: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "params": first["params"],
            "latent_dims": first["latent_dims"],
            "macs": first["macs"],
            "mid_channels": first["config"]["mid_channels"],
            # A flow without noise has growth 0 whatever its config's unused growth_rate says.
            "growth_rate": 0
            if first["config"]["augmentation"] == "none"
            else first["config"]["growth_rate"],
        }
        for metric in ("bpd_single", "bpd_iw", "seconds_per_step"):
            values = [r[metric] for r in runs if r[metric] is not None]
            row[metric], row[f"{metric}_std"] = _mean_std(values) if values else (None, None)
        out[name] = row
    return out


def cost(
    preset: AblationPreset,
    image_size: int,
    *,
    batch_size: int,
    timing_steps: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Parameters, latent dimensions, MACs per image and step time of the reference config
    against its growth rate (0, the preset's sweep and the reference's) and against the number of
    cross-unit couplings of its first dense block (``cost_units`` units, each of that block's
    modules per unit). Widths are not re-matched: this is what growth itself costs."""
    reference = reference_config(preset, image_size)
    growths = sorted({0, reference.growth_rate, *preset.growth_rates})
    points: list[tuple[str, int, DenseFlowConfig]] = [
        ("growth_rate", g, dataclasses.replace(reference, growth_rate=g))
        if g
        else ("growth_rate", 0, dataclasses.replace(reference, augmentation="none"))
        for g in growths
    ]
    for units in preset.cost_units:
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


def run(
    dataset: str = "photos",
    *,
    preset: str = "cpu",
    out_dir: str | os.PathLike = "outputs/ablations",
    data_dir: str | None = None,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    timing_steps: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The ablation study: every (variant, seed) trained and evaluated (resumably), the cost
    sweep, and ``out_dir/results.json``; returns what it writes.

    ``None`` arguments take the preset's value (:data:`ABLATION_PRESETS`).
    """
    if preset not in ABLATION_PRESETS:
        raise ValueError(
            f"unknown ablation preset {preset!r}; choose one of {sorted(ABLATION_PRESETS)}"
        )
    p = ABLATION_PRESETS[preset]
    seeds = tuple(p.seeds if seeds is None else seeds)
    steps = p.steps if steps is None else steps
    batch_size = p.batch_size if batch_size is None else batch_size
    if steps < 1 or batch_size < 1 or not seeds:
        raise ValueError(
            f"need steps >= 1, batch_size >= 1 and at least one seed; got steps={steps}, "
            f"batch_size={batch_size}, seeds={list(seeds)}"
        )
    image_size = dataset_info(dataset).image_size
    configs = variant_configs(p, image_size, variants)
    for name, config in configs.items():
        log(f"{name:>10}: {count_parameters(config):>10,} parameters, mid_channels "
            f"{config.mid_channels}, growth {config.growth_rate}, {config.augmentation}, "
            f"{config.coupling_net}")  # fmt: skip
    with log_to_stderr():
        test_set = first_images(load_dataset(dataset, data_dir, "test"), p.eval_limit)
        records = []
        for name, config in configs.items():
            for seed in seeds:
                record = run_one(
                    name, config, p, seed=seed, dataset=dataset, data_dir=data_dir,
                    out_dir=out_dir, steps=steps, batch_size=batch_size, device=device,
                    test_set=test_set,
                )  # fmt: skip
                state = "read back" if record["resumed"] else f"{record['wall_s']:.0f} s"
                log(f"{name:>10} seed {seed}: {record['bpd_single']:.3f} bits/dim "
                    f"(IW k={record['iw_samples']}: {record['bpd_iw']:.3f}); {state}")  # fmt: skip
                records.append(record)
    costs = cost(p, image_size, batch_size=batch_size, timing_steps=timing_steps)
    results = {
        "dataset": dataset,
        "preset": preset,
        "steps": steps,
        "batch_size": batch_size,
        "seeds": list(seeds),
        "iw_samples": p.iw_samples,
        "n_test_images": records[0]["n_test_images"],
        "param_tolerance": PARAM_TOLERANCE,
        "reference": REFERENCE if REFERENCE in configs else None,
        "variants": summarize(records),
        "runs": records,
        "cost": costs,
        "paper": PAPER_ABLATIONS,
        "torch": torch.__version__,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = Path(out_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


# ----------------------------------------------------------------------------- reading results
CLAIMS = (
    ("glow", "incremental augmentation beats a plain flow of the same modules (Fig. 1)"),
    ("input", "incremental augmentation beats one-shot augmentation of the input (VFlow, ANF)"),
    ("dense", "the fused coupling network beats its dense block alone (Fig. 2)"),
    ("attention", "the fused coupling network beats its Nyström attention alone (Fig. 2)"),
)
"""Each claim of the paper as (the variant the reference must beat, the claim)."""


def compare(results: dict[str, Any], other: str, metric: str = "bpd_single") -> dict[str, Any]:
    """The reference against ``other`` on ``metric``: ``gap`` (other − reference: positive when
    the reference is better), ``paired`` (that gap per seed both ran: a seed fixes the data order
    of every variant), ``spread`` (the sum of the two seed standard deviations) and
    ``verdict``: ``"holds"`` when the gap exceeds the spread, ``"reversed"`` when it is below
    minus the spread, ``"not separated"`` otherwise, ``"untested"`` with fewer than 2 seeds."""
    ref, row = results["variants"][REFERENCE], results["variants"][other]
    gap = row[metric] - ref[metric]
    by_seed = {(r["variant"], r["seed"]): r[metric] for r in results["runs"]}
    paired = [
        by_seed[other, seed] - by_seed[REFERENCE, seed]
        for seed in ref["seeds"]
        if (other, seed) in by_seed
    ]
    spread = row[f"{metric}_std"] + ref[f"{metric}_std"]
    if min(len(ref["seeds"]), len(row["seeds"])) < 2:
        verdict = "untested"
    elif gap > spread:
        verdict = "holds"
    elif gap < -spread:
        verdict = "reversed"
    else:
        verdict = "not separated"
    return {"other": other, "gap": gap, "paired": paired, "spread": spread, "verdict": verdict}


def verdicts(results: dict[str, Any], metric: str = "bpd_single") -> list[dict[str, Any]]:
    """:func:`compare` for every claim of :data:`CLAIMS` whose variant was run."""
    return [
        {**compare(results, other, metric), "claim": claim}
        for other, claim in CLAIMS
        if other in results["variants"] and REFERENCE in results["variants"]
    ]


def growth_sweep(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The trained growth-rate sweep at matched parameters, by growth rate: the plain flow is
    growth 0, the reference and every ``growth{g}`` the others."""
    rows = []
    for name, row in results["variants"].items():
        if name in ("glow", REFERENCE) or name.startswith("growth"):
            rows.append({"variant": name, **row})
    return sorted(rows, key=lambda r: r["growth_rate"])


def growth_stops_paying(rows: list[dict[str, Any]], metric: str = "bpd_single") -> int | None:
    """The growth rate after which a larger one no longer lowers ``metric`` by more than the two
    seed spreads (the last point of the sweep when every step pays; None for under 2 points)."""
    if len(rows) < 2:
        return None
    for a, b in itertools.pairwise(rows):
        if a[metric] - b[metric] <= a[f"{metric}_std"] + b[f"{metric}_std"]:
            return a["growth_rate"]
    return rows[-1]["growth_rate"]


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    return "–" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: every variant's parameters, widths, latent size, MACs, step time and test
    bits/dim (mean ± std over the seeds), beside the paper's number where it reports one."""
    k, paper = results["iw_samples"], results["paper"]["bpd"]
    rows = [
        f"| variant | parameters | mid channels | growth | latent dims | MMACs / image | s / step "
        f"| bits/dim (single) | bits/dim (IW, k={k}) | paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["variants"].items():
        theirs = paper.get(name)
        rows.append(
            f"| {name} | {r['params']:,} | {tuple(r['mid_channels'])} | {r['growth_rate']} "
            f"| {r['latent_dims']:,} | {r['macs'] / 1e6:.1f} "
            f"| {_pm(r['seconds_per_step'], r['seconds_per_step_std'], 2)} "
            f"| {_pm(r['bpd_single'], r['bpd_single_std'])} | {_pm(r['bpd_iw'], r['bpd_iw_std'])} "
            f"| {'–' if theirs is None else f'{theirs:.2f}'} |"
        )
    return "\n".join(rows)


def plot_variants(results: dict[str, Any], ax: Any = None) -> Any:
    """Test bits/dim of every variant: each seed a dot, the mean ± std a bar."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    names = list(results["variants"])
    for i, name in enumerate(names):
        row = results["variants"][name]
        ax.errorbar(i, row["bpd_single"], yerr=row["bpd_single_std"], fmt="s", capsize=4,
                    color="C0", label="mean ± std (single-sample)" if i == 0 else None)  # fmt: skip
        seeds = [r["bpd_single"] for r in results["runs"] if r["variant"] == name]
        ax.plot([i + 0.15] * len(seeds), seeds, ".", color="C1",
                label="each seed" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("test bits/dim")
    ax.set_title(f"{results['dataset']}, {results['steps']} steps, matched parameters")
    ax.legend()
    return ax


def plot_curves(results: dict[str, Any], out_dir: str | os.PathLike, ax: Any = None) -> Any:
    """Training bits/dim against the step, one line per (variant, seed), a colour per variant."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for i, name in enumerate(results["variants"]):
        for j, seed in enumerate(results["variants"][name]["seeds"]):
            events = read_metrics(Path(out_dir) / name / f"seed{seed}")
            points = [(e["step"], e["bpd"]) for e in events
                      if e.get("event") == "train" and e.get("bpd") is not None]  # fmt: skip
            if points:
                ax.plot(*zip(*points, strict=True), color=f"C{i}", lw=1, alpha=0.8,
                        label=name if j == 0 else None)  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("train bits/dim (mean since the last log point)")
    ax.legend(fontsize="small")
    return ax


def plot_cost(results: dict[str, Any], axes: Any = None) -> Any:
    """Parameters, latent dimensions, MACs and step time against the growth rate and against the
    number of cross-unit couplings (relative to the first point of each sweep)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    titles = {
        "growth_rate": "growth rate",
        "cross_unit_couplings": "cross-unit couplings in block 0",
    }
    for ax, axis in zip(axes, titles, strict=True):
        rows = [r for r in results["cost"] if r["axis"] == axis]
        xs = [r["value"] for r in rows]
        for key, label in (("params", "parameters"), ("latent_dims", "latent dims"),
                           ("macs", "MACs / image"), ("seconds_per_step", "s / step")):  # fmt: skip
            ys = [r[key] for r in rows]
            if all(y is not None for y in ys):
                ax.plot(xs, [y / ys[0] for y in ys], "o-", label=label)
        ax.set_xlabel(titles[axis])
        ax.set_ylabel(f"relative to {titles[axis]} = {xs[0]}")
        ax.legend(fontsize="small")
    return axes
