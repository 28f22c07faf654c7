"""The steps of a paper reproduction, shared by the ``reproduce/`` notebooks and the CLI.

A reproduction notebook is a thin, readable sequence of calls into this module (and into
:mod:`densflow.train` / :mod:`densflow.evaluate`): check the data, train with the paper's protocol
(or load a given checkpoint), evaluate the test split with the single-sample and the
importance-weighted bound, draw samples, and set the result beside the paper's Table 1. No step
lives only in a notebook.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from .checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from .data import DATASETS, load_dataset, paper_datasets, paper_table1
from .evaluate import PAPER_IW_SAMPLES, EvalResult, evaluate
from .model import DenseFlow
from .official import load_official, locate_official, read_official_args
from .performance import prepare_model
from .train import TrainConfig, TrainResult, read_metrics, train, train_preset

__all__ = [
    "PAPER_RESULTS",
    "PAPER_COST",
    "reproduction_config",
    "default_iw_samples",
    "load_any_checkpoint",
    "train_or_load",
    "evaluate_test_split",
    "comparison_table",
    "plot_learning_curve",
    "write_results",
]

PAPER_RESULTS: dict[str, dict[str, float | None]] = paper_table1()
"""Published test bits/dim of DenseFlow and the flows the paper compares with."""

PAPER_COST: dict[str, str] = {name: d.paper.cost for name, d in paper_datasets().items()}
"""Training time the paper reports for each dataset."""


def reproduction_config(
    dataset: str,
    *,
    data_dir: str | None,
    preset: str = "paper",
    out_dir: str | os.PathLike,
    device: str = "auto",
    resume: bool = True,
    epochs: int | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    **overrides: Any,
) -> TrainConfig:
    """The :class:`~densflow.train.TrainConfig` of a reproduction notebook's parameters.

    ``preset`` is a training preset of :data:`densflow.train.TRAIN_PRESETS` (``paper``,
    ``official``, ``smoke``, ``quickstart``); ``None`` values keep the preset's setting.
    """
    changes: dict[str, Any] = dict(
        data_dir=data_dir,
        out_dir=str(out_dir),
        device=device,
        resume=resume,
        num_workers=num_workers,
        seed=seed,
        **overrides,
    )
    if epochs is not None:
        changes["epochs"] = epochs
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return train_preset(dataset, preset, **changes)


def default_iw_samples(dataset: str, preset: str) -> int:
    """The paper's k for ``dataset`` (1000 for CIFAR-10, 200 otherwise); 8 for minutes-long
    ``smoke`` runs and for datasets outside the paper."""
    if preset == "smoke":
        return 8
    return PAPER_IW_SAMPLES.get(dataset, 8)


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def load_any_checkpoint(
    path: str | os.PathLike, device: str = "auto"
) -> tuple[DenseFlow, str | None]:
    """A model from a densflow checkpoint or an official run folder / checkpoint file, and the
    dataset it was trained on when the files record it."""
    path, device = Path(path), _device(device)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: expected a densflow checkpoint (.pt) or an "
            "official DenseFlow run folder (args.pickle + check/checkpoint.pt)"
        )
    if path.is_file():
        try:
            ckpt = read_checkpoint(path, device)
        except CheckpointError:
            ckpt = None  # not ours: try the official format, which explains its own failures
        if ckpt is not None:
            dataset = (ckpt.get("train_config") or {}).get("dataset")
            return model_from_checkpoint(ckpt, path, device), dataset
    model = load_official(path, map_location=device)
    _, args_file = locate_official(path)
    return model, read_official_args(args_file).dataset if args_file is not None else None


def train_or_load(
    config: TrainConfig, checkpoint: str | os.PathLike | None = None
) -> tuple[DenseFlow, TrainResult | None]:
    """Train (resuming from ``config.out_dir`` if a run is there), or load ``checkpoint``.

    A loaded model gets the config's ``channels_last`` and ``compile`` switches, as a trained
    one has them from the Trainer, so that its evaluation runs as fast.
    """
    if checkpoint is not None:
        model, trained_on = load_any_checkpoint(checkpoint, config.device)
        if trained_on is not None and trained_on != config.dataset:
            raise ValueError(f"{checkpoint} was trained on {trained_on}, not {config.dataset}")
        return prepare_model(model.eval(), config.channels_last, config.compile), None
    result = train(config)
    return result.model, result


def evaluate_test_split(
    model: DenseFlow,
    config: TrainConfig,
    *,
    iw_samples: int | None,
    chunk_size: int = 50,
    limit: int | None = None,
    progress: bool | None = True,
) -> EvalResult:
    """Test bits/dim, single-sample and importance-weighted, resumable from ``out_dir``."""
    test = load_dataset(config.dataset, config.data_dir, "test", celeba_crop=config.celeba_crop)
    if limit is not None and limit < len(test):
        test = Subset(test, range(limit))
    batch = config.eval_batch_size or config.batch_size
    # The IW bound forwards batch × chunk images at once; keep that near a training batch.
    if iw_samples:
        batch = max(1, min(batch, (config.batch_size * 8) // min(chunk_size, iw_samples)))
    partial = Path(config.out_dir) / f"eval_k{iw_samples or 1}_n{len(test)}.partial.pt"
    return evaluate(
        model,
        test,
        batch_size=batch,
        iw_samples=iw_samples,
        chunk_size=chunk_size,
        seed=config.seed,
        progress=progress,
        partial_path=partial,
        num_workers=config.num_workers,
    )


def comparison_table(dataset: str, result: EvalResult) -> str:
    """Markdown table: this run beside the paper's Table 1 rows for ``dataset``."""

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    rows = ["| model | test bits/dim |", "|---|---|"]
    k = f"IW bound, k={result.iw_samples}" if result.iw_samples else None
    rows.append(f"| this run, single-sample bound | {fmt(result.bpd_single)} |")
    if k:
        rows.append(f"| this run, {k} | {fmt(result.bpd_iw)} |")
    if dataset in DATASETS and dataset in PAPER_RESULTS["DenseFlow-74-10"]:
        for name, table in PAPER_RESULTS.items():
            rows.append(f"| {name} (paper, Table 1) | {fmt(table[dataset])} |")
    return "\n".join(rows)


def plot_learning_curve(out_dir: str | os.PathLike, ax: Any = None) -> Any:
    """Train and test bits/dim per epoch from ``out_dir``'s metrics log."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    events = read_metrics(out_dir)
    train_pts = [
        (e["step"], e["bpd"])
        for e in events
        if e.get("event") == "train" and e.get("bpd") is not None
    ]
    test_pts = [
        (e["step"], e["test_bpd"])
        for e in events
        if e.get("event") == "eval" and e.get("test_bpd") is not None
    ]
    if train_pts:
        ax.plot(*zip(*train_pts, strict=True), label="train (mean since the last log point)", lw=1)
    if test_pts:
        ax.plot(*zip(*test_pts, strict=True), "o-", label="test (single-sample)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.legend()
    return ax


def write_results(
    out_dir: str | os.PathLike,
    dataset: str,
    config: TrainConfig,
    result: EvalResult,
    train_result: TrainResult | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Write ``out_dir/results.json``; every bits/dim must be finite (else ``ValueError``)."""
    for name, value in (("bpd_single", result.bpd_single), ("bpd_iw", result.bpd_iw)):
        if value is not None and not (value == value and abs(value) != float("inf")):
            raise ValueError(f"{name} is {value}: the evaluation produced a non-finite bits/dim")
    paper = PAPER_RESULTS["DenseFlow-74-10"].get(dataset)
    summary = {
        "dataset": dataset,
        "test": result.to_dict(),
        "paper_denseflow_bpd": paper,
        "train": None
        if train_result is None
        else {
            "steps": train_result.step,
            "epochs": train_result.epoch,
            "completed": train_result.completed,
            "train_bpd": train_result.train_bpd,
            "checkpoint": str(train_result.checkpoint),
        },
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "config": config.to_dict(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = Path(out_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
