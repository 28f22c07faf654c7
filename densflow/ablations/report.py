"""Reading the study's results: the verdict on each claim, the growth sweep, the table and the
figures."""

from __future__ import annotations

import itertools
import math
import os
import statistics
from pathlib import Path
from typing import Any

from ..training import read_metrics
from .variants import REFERENCE

__all__ = [
    "CLAIMS",
    "compare",
    "growth_stops_paying",
    "growth_sweep",
    "plot_cost",
    "plot_curves",
    "plot_variants",
    "table",
    "verdicts",
]

CLAIMS = (
    ("glow", "incremental augmentation beats a plain flow of the same modules (Fig. 1)"),
    ("input", "incremental augmentation beats one-shot augmentation of the input (VFlow, ANF)"),
    ("dense", "the fused coupling network beats its dense block alone (Fig. 2)"),
    ("attention", "the fused coupling network beats its Nyström attention alone (Fig. 2)"),
)
"""Each claim of the paper as (the variant the reference must beat, the claim)."""


def _verdict(gap: float, spread: float, n: int) -> str:
    if n < 2:
        return "untested"
    if gap > spread:
        return "holds"
    if gap < -spread:
        return "reversed"
    return "not separated"


def compare(results: dict[str, Any], other: str, metric: str = "bpd_single") -> dict[str, Any]:
    """The reference against ``other`` on ``metric``, judged two ways.

    Unpaired: ``gap`` (other − reference: positive when the reference is better) against
    ``spread``, the sum of the two variants' seed standard deviations.

    Paired: a seed fixes the data order, the augmentation, ActNorm's first batch and the
    dequantization noise of every variant, so the per-seed gaps (``paired``) share those draws and
    their mean (``paired_gap``, equal to ``gap`` when both ran the same seeds) is judged against
    their own standard deviation (``paired_spread``): the spread of the difference, not of each
    variant. It is the sharper test where seeds move all variants together.

    Each ``verdict`` / ``paired_verdict``: ``"holds"`` when the gap exceeds the spread,
    ``"reversed"`` when it is below minus the spread, ``"not separated"`` otherwise,
    ``"untested"`` with fewer than 2 seeds.
    """
    ref, row = results["variants"][REFERENCE], results["variants"][other]
    gap = row[metric] - ref[metric]
    by_seed = {(r["variant"], r["seed"]): r[metric] for r in results["runs"]}
    paired = [
        by_seed[other, seed] - by_seed[REFERENCE, seed]
        for seed in ref["seeds"]
        if (other, seed) in by_seed
    ]
    spread = row[f"{metric}_std"] + ref[f"{metric}_std"]
    paired_gap = statistics.fmean(paired) if paired else math.nan
    paired_spread = statistics.stdev(paired) if len(paired) > 1 else math.nan
    return {
        "other": other,
        "gap": gap,
        "spread": spread,
        "verdict": _verdict(gap, spread, min(len(ref["seeds"]), len(row["seeds"]))),
        "paired": paired,
        "paired_gap": paired_gap,
        "paired_spread": paired_spread,
        "paired_verdict": _verdict(paired_gap, paired_spread, len(paired)),
    }


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
    bits/dim (mean ± std over the seeds), beside the paper's Table 1 number of the published model
    that stands for it (:func:`~densflow.ablations.paper_reference`: its dataset is in the
    header)."""
    k, paper = results["iw_samples"], results["paper"]
    models, bpd = paper["models"], paper["bpd"]
    rows = [
        f"| variant | parameters | mid channels | growth | latent dims | MMACs / image | s / step "
        f"| bits/dim (single) | bits/dim (IW, k={k}) | paper, Table 1 ({paper['dataset']}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["variants"].items():
        theirs = "–" if name not in bpd else f"{bpd[name]:.2f} ({models[name]})"
        rows.append(
            f"| {name} | {r['params']:,} | {tuple(r['mid_channels'])} | {r['growth_rate']} "
            f"| {r['latent_dims']:,} | {r['macs'] / 1e6:.1f} "
            f"| {_pm(r['seconds_per_step'], r['seconds_per_step_std'], 2)} "
            f"| {_pm(r['bpd_single'], r['bpd_single_std'])} | {_pm(r['bpd_iw'], r['bpd_iw_std'])} "
            f"| {theirs} |"
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
