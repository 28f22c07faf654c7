"""A paper reproduction, as the ``reproduce/`` notebooks run it.

Every reproduction notebook calls :func:`reproduce` with its parameters and shows what it returns:
check the data, train with the paper's protocol (or load a given checkpoint), evaluate the test
split with the single-sample and the importance-weighted bound, draw samples, and set the result
beside the paper's Table 1. The notebooks differ only in their parameters and prose; the steps are
also public here, one function each, for use outside a notebook.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import DATASETS, check_dataset, load_dataset, paper_datasets, paper_table1
from .evaluate import PAPER_IW_SAMPLES, EvalResult, evaluate, save_sample_grid
from .io.files import atomic_write_text
from .io.outputs import check_output_folder
from .io.resolve import locate
from .model import DenseFlow
from .noise import make_generator
from .performance import prepare_model
from .training import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    TrainResult,
    read_metrics,
    train,
    train_preset,
)
from .utils.errors import InputError
from .utils.runtime import first_images, log_to_stderr, resolve_device

__all__ = [
    "PAPER_RESULTS",
    "PAPER_COST",
    "Reproduction",
    "reproduce",
    "reproduction_config",
    "default_iw_samples",
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
    """The :class:`~densflow.training.TrainConfig` of a reproduction notebook's parameters.

    ``preset`` is a training preset of :data:`densflow.training.TRAIN_PRESETS` (``paper``,
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


def train_or_load(
    config: TrainConfig, checkpoint: str | os.PathLike | None = None
) -> tuple[DenseFlow, TrainResult | None]:
    """Train (resuming from ``config.out_dir`` if a run is there), or load ``checkpoint``.

    A loaded model gets the config's ``channels_last`` and ``compile`` switches, as a trained
    one has them from the Trainer, so that its evaluation runs as fast.
    """
    if checkpoint is not None:
        # A path, an official run folder, a model directory or cached name, or "official" for
        # the authors' model of this dataset; a model trained on another dataset is refused.
        device = resolve_device(config.device)
        model = locate(checkpoint, dataset=config.dataset).load(device).model
        return prepare_model(model, config.channels_last, config.compile), None
    result = train(config)
    return result.model, result


def evaluate_test_split(
    model: DenseFlow,
    config: TrainConfig,
    *,
    iw_samples: int | None,
    chunk_size: int = 50,
    limit: int | None = None,
    progress: bool | None = None,
) -> EvalResult:
    """Test bits/dim, single-sample and importance-weighted, resumable from ``out_dir``."""
    test = load_dataset(config.dataset, config.data_dir, "test", celeba_crop=config.celeba_crop)
    test = first_images(test, limit)
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
            raise InputError(f"{name} is {value}: the evaluation produced a non-finite bits/dim")
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
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


@dataclass
class Reproduction:
    """What :func:`reproduce` did.

    Attributes:
        dataset: the dataset name.
        data_summary: :func:`densflow.data.check_dataset`'s one-line summary.
        config: the training config (also that of a loaded checkpoint's evaluation).
        model: the trained or loaded model (eval mode).
        train_result: the training run (None when a checkpoint was evaluated).
        test: the test-split bits/dim.
        table: this run beside the paper's Table 1 (Markdown).
        samples: the PNG grid of samples.
        results: the ``results.json`` written.
    """

    dataset: str
    data_summary: str
    config: TrainConfig
    model: DenseFlow
    train_result: TrainResult | None
    test: EvalResult
    table: str
    samples: Path
    results: Path

    def summary(self) -> str:
        """The data, and what was trained or loaded."""
        if self.train_result is None:
            done = "evaluated a given checkpoint"
        else:
            r = self.train_result
            state = "all epochs done" if r.completed else "stopped before the last epoch"
            done = f"trained {r.step} steps ({state}) in {self.config.out_dir}"
        n = sum(p.numel() for p in self.model.parameters())
        return f"{self.data_summary}\n{n:,} parameters; {done}"

    def plot_learning_curve(self, ax: Any = None) -> Any:
        """Train and test bits/dim of the run (None when a checkpoint was evaluated)."""
        if self.train_result is None:
            return None
        ax = plot_learning_curve(self.config.out_dir, ax)
        ax.set_title(f"DenseFlow on {self.dataset}")
        return ax


def reproduce(
    dataset: str,
    *,
    data_dir: str | None,
    out_dir: str | os.PathLike,
    preset: str = "paper",
    device: str = "auto",
    resume: bool = True,
    checkpoint: str | os.PathLike | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    iw_samples: int | None = None,
    eval_limit: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    temperature: float = 1.0,
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    logger: str = "none",
) -> Reproduction:
    """A reproduction: check the data, train (resuming from ``out_dir``) or load ``checkpoint``,
    evaluate the test split, draw 64 samples and write ``results.json``, all in ``out_dir``.
    Progress shows as a bar and as ``logging`` lines on stderr.

    Arguments:
        dataset, data_dir: the data (:func:`densflow.data.load_dataset`).
        out_dir: the run folder.
        preset: the training preset (:data:`densflow.training.TRAIN_PRESETS`).
        device, resume, epochs, steps_per_epoch, batch_size, num_workers, seed: training
            settings, as the :class:`~densflow.training.TrainConfig` fields of the same names
            (None keeps the preset's).
        amp, channels_last, compile, cuda_graphs: the speed switches of the same names.
        logger: ``"tensorboard"`` also writes TensorBoard event files into
            ``out_dir/tensorboard`` while training (:mod:`densflow.training.loggers`).
        checkpoint: a model to evaluate instead of training: a densflow checkpoint, an official
            run folder, a model directory, a cached name, or ``"official"`` for the authors'
            model of ``dataset`` (anything :func:`densflow.io.load` takes).
        iw_samples: k of the importance-weighted bound (None: :func:`default_iw_samples`).
        eval_limit: evaluate the first N test images only (None: the whole split; ``smoke``: the
            preset's limit).
        temperature: of the samples.
    """
    with log_to_stderr():  # the training's log lines, also in a notebook's output
        # No output may land on an input (the model's files, the data): checked before any work.
        inputs = locate(checkpoint, dataset=dataset).files if checkpoint is not None else ()
        outputs = [CHECKPOINT_NAME, METRICS_NAME, "samples.png", "results.json"]
        check_output_folder("out_dir", out_dir, outputs, inputs, trees=[data_dir])
        summary = check_dataset(dataset, data_dir)
        overrides: dict[str, Any] = dict(
            amp=amp, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs,
            logger=logger,
        )  # fmt: skip
        if steps_per_epoch is not None:
            overrides["steps_per_epoch"] = steps_per_epoch
        if eval_limit is not None:
            overrides["eval_limit"] = eval_limit
        config = reproduction_config(
            dataset, data_dir=data_dir, preset=preset, out_dir=out_dir, device=device,
            resume=resume, epochs=epochs, batch_size=batch_size, num_workers=num_workers,
            seed=seed, **overrides,
        )  # fmt: skip
        model, train_result = train_or_load(config, checkpoint)
        k = iw_samples or default_iw_samples(dataset, preset)
        limit = eval_limit
        if limit is None and preset == "smoke":
            limit = config.eval_limit
        test = evaluate_test_split(
            model, config, iw_samples=k, chunk_size=config.chunk_size, limit=limit
        )
        samples = Path(out_dir) / "samples.png"
        generator = make_generator(model, seed)
        save_sample_grid(model, samples, n=64, temperature=temperature, generator=generator)
        results = write_results(out_dir, dataset, config, test, train_result, checkpoint)
        table = comparison_table(dataset, test)
        return Reproduction(
            dataset, summary, config, model, train_result, test, table, samples, results
        )
