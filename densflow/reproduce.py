"""A paper reproduction, as the ``reproduce/`` notebooks run it.

Every reproduction notebook calls :func:`reproduce` with its parameters and shows what it returns:
check the data, train with the paper's protocol (or load a given checkpoint), evaluate the test
split with the single-sample and the importance-weighted bound, draw samples, and set the result
beside the paper's Table 1. The notebooks differ only in their parameters and prose; the steps are
also public here, one function each, for use outside a notebook.
"""

from __future__ import annotations

import difflib
import json
import os
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .data import DATASETS, check_dataset, load_dataset, paper_datasets, paper_table1
from .evaluation import EvalConfig, EvalResult, evaluate, paper_iw_samples, save_sample_grid
from .io.files import atomic_write_text
from .io.outputs import check_output_folder
from .io.resolve import locate
from .model import DenseFlow
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
from .utils.distributed import Dist, broadcast_buffers, join_process_group
from .utils.errors import InputError
from .utils.provenance import provenance
from .utils.runtime import first_images, log_to_stderr

__all__ = [
    "PARAMETERS",
    "PAPER_RESULTS",
    "PAPER_COST",
    "Reproduction",
    "reproduce",
    "check_overrides",
    "notebook_parameters",
    "override_fields",
    "reproduction_config",
    "reproduction_eval_config",
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


PARAMETERS: tuple[str, ...] = ("dataset", "preset", "checkpoint")
""":func:`reproduce`'s own arguments; every other one is a field of
:class:`~densflow.training.TrainConfig` or an evaluation-only field of
:class:`~densflow.evaluation.EvalConfig` (:func:`override_fields`)."""


def override_fields() -> dict[str, type]:
    """The settings :func:`reproduce` takes as ``**overrides``, with the config class of each:
    every :class:`~densflow.training.TrainConfig` field, and the
    :class:`~densflow.evaluation.EvalConfig` fields that only the evaluation and the samples
    have (``temperature``, ``n_samples``...). The evaluation's shared settings (seed, batch,
    chunk, k, limit) come from the training config's fields of the same meaning."""
    train_fields = {f.name: TrainConfig for f in fields(TrainConfig)}
    shared = {"batch_size", "iw_samples", "chunk_size", "limit", "seed", "num_workers", "progress"}
    speed = {f.name for f in fields(EvalConfig) if f.metadata.get("speed")}
    evals = {f.name: EvalConfig for f in fields(EvalConfig) if f.name not in shared | speed}
    return {**train_fields, **evals}


def notebook_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The arguments of :func:`reproduce` that ``namespace`` (a notebook's ``globals()``,
    holding its parameters cell) defines: a reproduction notebook's parameters cell is the one
    list of its parameters, and its call passes them on with
    ``reproduce(**notebook_parameters(globals()))``."""
    names = (*PARAMETERS, *override_fields())
    return {name: namespace[name] for name in names if name in namespace}


def reproduction_config(dataset: str, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The :class:`~densflow.training.TrainConfig` of the training ``preset``
    (:data:`densflow.training.TRAIN_PRESETS`: ``paper``, ``official``, ``smoke``,
    ``quickstart``) for ``dataset`` with ``overrides`` of its fields; ``None`` keeps the preset's
    setting, an unknown name is refused with the close ones."""
    check_overrides(overrides)
    known = override_fields()
    changes = {k: v for k, v in overrides.items() if v is not None and known[k] is TrainConfig}
    return train_preset(dataset, preset, **changes)


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse, in one line, a name that is neither a field of the training config nor an
    evaluation-only field of the evaluation config, naming the close ones."""
    known = override_fields()
    for name in overrides:
        if name not in known:
            close = difflib.get_close_matches(name, [*known, *PARAMETERS], n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            evals = ", ".join(n for n, owner in known.items() if owner is EvalConfig)
            raise InputError(
                f"unknown reproduction setting {name!r}; {hint}the settings are the fields of "
                f"TrainConfig and the evaluation-only fields of EvalConfig ({evals})"
            )


def reproduction_eval_config(config: TrainConfig, preset: str, **overrides: Any) -> EvalConfig:
    """The :class:`~densflow.evaluation.EvalConfig` of the test-split evaluation and the samples
    of a reproduction: the training config's evaluation fields (``iw_samples``, default
    :func:`default_iw_samples`; ``eval_batch_size``; ``chunk_size``; ``seed``; ``num_workers``;
    ``progress``), ``eval_limit`` where ``overrides`` give it (else the whole split; ``smoke``:
    the preset's), and the evaluation-only ``overrides`` (``temperature``...)."""
    check_overrides(overrides)
    known = override_fields()
    changes = {k: v for k, v in overrides.items() if v is not None and known[k] is EvalConfig}
    k = config.iw_samples or default_iw_samples(config.dataset, preset)
    # The reported bound is on the whole test split unless eval_limit is given; a smoke run keeps
    # its preset's limit (the preset's eval_limit otherwise only limits the training's evaluations).
    limit = overrides.get("eval_limit") or (config.eval_limit if preset == "smoke" else None)
    batch = config.eval_batch_size or config.batch_size
    # The IW bound forwards batch × chunk images at once; keep that near a training batch.
    batch = max(1, min(batch, (config.batch_size * 8) // min(config.chunk_size, k)))
    return EvalConfig(
        batch_size=batch, iw_samples=k, chunk_size=config.chunk_size, limit=limit,
        seed=config.seed, num_workers=config.num_workers, progress=config.progress,
        **{"n_samples": 64, **changes},
    )  # fmt: skip


def default_iw_samples(dataset: str, preset: str) -> int:
    """The paper's k for ``dataset`` (1000 for CIFAR-10, 200 otherwise); 8 for minutes-long
    ``smoke`` runs and for datasets outside the paper."""
    k = paper_iw_samples(dataset)
    return 8 if preset == "smoke" or k is None else k


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
        device = Dist.from_env().device(config.device)  # under torchrun: this process's GPU
        model = locate(checkpoint, dataset=config.dataset).load(device).model
        return prepare_model(model, config.channels_last, config.compile), None
    result = train(config)
    return result.model, result


def evaluate_test_split(
    model: DenseFlow, config: TrainConfig, settings: EvalConfig, *, dist: Dist | None = None
) -> EvalResult:
    """Test bits/dim, single-sample and importance-weighted (``settings``, e.g.
    :func:`reproduction_eval_config`), resumable from ``config.out_dir``; ``dist``: sharded over
    the processes of a ``torchrun`` job (every one must call it)."""
    test = load_dataset(config.dataset, config.data_dir, "test", celeba_crop=config.celeba_crop)
    test = first_images(test, settings.limit)
    k = settings.iw_samples or 1
    partial = Path(config.out_dir) / f"eval_k{k}_n{len(test)}.partial.pt"
    return evaluate(model, test, settings, partial_path=partial, dist=dist)


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
    """Write ``out_dir/results.json``; every bits/dim must be finite (else
    :class:`~densflow.evaluation.NonFiniteError`, and nothing is written)."""
    result.check_finite()
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
        "provenance": provenance(),  # densflow's version and commit, and torch's
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
    preset: str = "paper",
    *,
    checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> Reproduction:
    """A reproduction: check the data, train (resuming from ``out_dir``) or load ``checkpoint``,
    evaluate the test split, draw 64 samples and write ``results.json``, all in ``out_dir``.
    Progress shows as a bar and as ``logging`` lines on stderr. Under ``torchrun`` every process
    runs it: training is data-parallel, the evaluation and the samples are sharded, rank 0
    writes the files, and every process returns the same numbers (docs/evaluation.md).

    Every setting is checked before any work, with the rules of the command line.

    Arguments:
        dataset: the dataset (:func:`densflow.data.load_dataset`).
        preset: the training preset (:data:`densflow.training.TRAIN_PRESETS`).
        checkpoint: a model to evaluate instead of training: a densflow checkpoint, an official
            run folder, a model directory, a cached name, or ``"official"`` for the authors'
            model of ``dataset`` (anything :func:`densflow.io.load` takes).
        overrides: fields of :class:`~densflow.training.TrainConfig` (``data_dir``,
            ``out_dir``, ``epochs``, ``iw_samples``, ``eval_limit``, the speed switches...;
            ``None`` keeps the preset's) and the evaluation-only fields of
            :class:`~densflow.evaluation.EvalConfig` (``temperature``, ``n_samples``...), see
            :func:`override_fields`. ``iw_samples`` is the k of the test bound (None:
            :func:`default_iw_samples`), ``eval_limit`` its number of test images (None: all;
            ``smoke``: the preset's).
    """
    with log_to_stderr():  # the training's log lines, also in a notebook's output
        config = reproduction_config(dataset, preset, **overrides)
        settings = reproduction_eval_config(config, preset, **overrides)
        out_dir, data_dir = config.out_dir, config.data_dir
        # No output may land on an input (the model's files, the data): checked before any work.
        inputs = locate(checkpoint, dataset=dataset).files if checkpoint is not None else ()
        outputs = [CHECKPOINT_NAME, METRICS_NAME, "samples.png", "results.json"]
        check_output_folder("out_dir", out_dir, outputs, inputs, trees=[data_dir])
        summary = check_dataset(dataset, data_dir)
        # The test bound is this function's step (resumable from its progress file), not the
        # trainer's end-of-run evaluation.
        model, train_result = train_or_load(config.replace(iw_samples=None), checkpoint)
        dist = Dist.from_env()  # under torchrun: each process evaluates and samples its share
        if dist.world_size > 1:  # every rank holds rank 0's model (BatchNorm saw each shard)
            join_process_group(next(model.parameters()).device)
            broadcast_buffers(model)
        test = evaluate_test_split(model, config, settings, dist=dist)
        test.check_finite()  # before anything is written
        samples = Path(out_dir) / "samples.png"
        save_sample_grid(model, samples, settings, dist=dist)
        results = Path(out_dir) / "results.json"
        if dist.is_main:
            write_results(out_dir, dataset, config, test, train_result, checkpoint)
        table = comparison_table(dataset, test)
        return Reproduction(
            dataset, summary, config, model, train_result, test, table, samples, results
        )
