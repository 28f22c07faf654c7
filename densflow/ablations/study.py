"""Running the study: every (variant, seed) trained and evaluated, resumably, and
``results.json``."""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import DenseFlowConfig
from ..data import dataset_info, load_dataset, paper_datasets
from ..data.types import PAPER_MODEL
from ..evaluation import evaluate
from ..io.files import atomic_write_text
from ..training import TrainConfig, read_metrics, train
from ..utils.errors import InputError
from ..utils.ranges import check_range
from ..utils.runtime import first_images, log_to_stderr
from .measure import cost, count_parameters, latent_dims, multiply_accumulates
from .variants import (
    ABLATION_PRESETS,
    PARAM_TOLERANCE,
    REFERENCE,
    AblationPreset,
    reference_config,
    variant_configs,
)

__all__ = [
    "PAPER_STAND_INS",
    "notebook_parameters",
    "paper_reference",
    "run",
    "run_one",
    "summarize",
]

PAPER_STAND_INS = {REFERENCE: PAPER_MODEL, "input": "VFlow", "glow": "Glow"}
"""Variant → the published model of Table 1 that stands for it: VFlow appends all its noise
channels to the input once (the ``input`` variant), Glow is a flow without augmentation
(``glow``)."""


def paper_reference(dataset: str) -> dict[str, Any]:
    """What the paper reports for the contrasts of this study, on ``dataset`` (on ImageNet32 when
    ``dataset`` is not one of the paper's): Table 1's test bits/dim of DenseFlow-74-10 and of
    the published models that stand for the ``input`` and ``glow`` variants
    (:data:`PAPER_STAND_INS`).

    They are models of their own sizes and budgets, not a matched ablation; the paper's matched
    ablations sit in its experimental section, which the text consulted for this kit (Secs. 1–2,
    Appendices A–G) does not contain, so none of their numbers is shown rather than one from
    memory. The coupling-network and growth-rate variants therefore have no paper number.

    Example:
        >>> paper_reference("imagenet32")["bpd"]
        {'denseflow': 3.63, 'input': 3.83, 'glow': 4.09}
    """
    name = dataset if dataset in paper_datasets() else "imagenet32"
    info = dataset_info(name)
    published = {PAPER_MODEL: info.paper.bpd, **dict(info.paper.compared)}
    protocol = info.protocol
    return {
        "dataset": name,
        "source": "Table 1 of Grcić, Grubišić & Šegvić (NeurIPS 2021, arXiv 2106.04627)",
        "bpd": {
            variant: published[model]
            for variant, model in PAPER_STAND_INS.items()
            if published.get(model) is not None
        },
        "models": dict(PAPER_STAND_INS),
        "scale": (
            f"{PAPER_MODEL} (130,647,294 parameters at 32x32) trained on {name} for "
            f"{protocol.epochs} epochs of batch {protocol.batch_size} plus "
            f"{protocol.finetune_epochs} fine-tuning epochs (Appendix C), evaluated with IW "
            f"k={info.paper.iw_samples}; VFlow and Glow as published, at their own sizes"
        ),
        "note": (
            "published models of their own sizes, not a matched ablation; the paper's matched "
            "ablations (its experimental section) are not in the text this kit consulted, so no "
            "number of theirs is shown"
        ),
    }


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
    # As many passes over the training split as ``steps`` needs; max_steps stops mid-epoch.
    epoch_steps = max(1, dataset_info(dataset).train_size // batch_size)
    return TrainConfig(
        dataset=dataset,
        data_dir=data_dir,
        model_config=config,
        batch_size=batch_size,
        epochs=-(-steps // epoch_steps),
        max_steps=steps,
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
    if trained.step < steps:  # the epochs above assumed a complete train split
        raise InputError(
            f"{name} seed {seed}: trained {trained.step} of {steps} steps, so the {dataset} train "
            f"split holds fewer than its {dataset_info(dataset).train_size:,} images; check it "
            f"with python -m densflow data check {dataset}"
        )
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
            raise InputError(
                f"{name} seed {seed}: {metric} is {record[metric]} (training diverged)"
            )
    atomic_write_text(done, json.dumps(record, indent=2) + "\n")
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


def notebook_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The arguments of :func:`run` that ``namespace`` (the ablation notebook's ``globals()``,
    holding its parameters cell) defines: the parameters cell is the one list, and the call
    passes it on with ``run(**notebook_parameters(globals()))``."""
    names = [name for name in inspect.signature(run).parameters if name != "log"]
    return {name: namespace[name] for name in names if name in namespace}


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
        raise InputError(
            f"unknown ablation preset {preset!r}; choose one of {sorted(ABLATION_PRESETS)}"
        )
    p = ABLATION_PRESETS[preset]
    seeds = tuple(
        check_range("ablations", "seeds", s) for s in (p.seeds if seeds is None else seeds)
    )
    if not seeds:
        raise InputError("seeds is empty; give at least one seed, e.g. [0, 1, 2]")
    steps = check_range("ablations", "steps", p.steps if steps is None else steps)
    batch_size = check_range(
        "ablations", "batch_size", p.batch_size if batch_size is None else batch_size
    )
    timing_steps = check_range("ablations", "timing_steps", timing_steps)
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
    costs = cost(
        configs.get(REFERENCE) or reference_config(p, image_size),
        growth_rates=p.growth_rates, cost_units=p.cost_units, batch_size=batch_size,
        timing_steps=timing_steps,
    )  # fmt: skip
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
        "paper": paper_reference(dataset),
        "torch": torch.__version__,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(
        Path(out_dir) / "results.json", json.dumps(results, indent=2, default=str) + "\n"
    )
    return results
