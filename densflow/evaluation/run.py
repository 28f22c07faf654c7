r"""Test-set bits/dim: :func:`evaluate`, resumable and sharded over ``torchrun``'s processes.

Two bounds on :math:`-\log_2 P(x) / D` (lower is better), averaged over the images: the
single-sample bound (one draw of the dequantization and cross-unit noise; the training
objective) and the importance-weighted bound with :math:`k` samples, which the paper reports
(:func:`~densflow.bounds.importance_weighted_log_prob`). Image :math:`i`'s draws depend on the
seed and :math:`i` alone (:mod:`~densflow.evaluation.draws`), so the numbers do not depend on the
batch size, the chunk size, the number of processes or an interruption.

One evaluation, in order: the settings are checked and the progress files read, before any work
(:func:`evaluate`); the pass is chosen once (:func:`~densflow.evaluation.passes.make_pass`); each
process evaluates its shard batch by batch (:func:`_evaluate_shard`, :func:`batch_bounds`),
keeping its progress (:mod:`~densflow.evaluation.partial`); the per-image values are gathered in
dataset order (:mod:`~densflow.evaluation.distributed`) into an :class:`EvalResult`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..bounds import bits_per_dim, importance_weighted_log_prob
from ..model import DenseFlow
from ..utils.distributed import Dist
from ..utils.errors import InputError
from ..utils.runtime import collate_images, first_images, resolve_device
from ..utils.signals import sigterm_as_interrupt, stopping
from .config import EvalConfig
from .distributed import Group, GroupProgress
from .draws import IndexedDraws
from .partial import ProgressFiles, fingerprint
from .passes import Pass, make_pass
from .result import EvalResult

__all__ = ["batch_bounds", "evaluate"]


def evaluate(
    model: DenseFlow,
    dataset: Dataset,
    config: EvalConfig | None = None,
    *,
    device: str | torch.device | None = None,
    partial_path: str | os.PathLike | None = None,
    dist: Dist | None = None,
    **changes: Any,
) -> EvalResult:
    """Bits/dim of ``model`` on ``dataset``: single-sample and, with ``iw_samples``,
    importance-weighted.

    Runs in eval mode (BatchNorm uses its running statistics) without gradients, and puts the model
    back in the mode it was in.

    Arguments:
        model: the flow (evaluated where it is, or moved to ``device``). For ``channels_last``
            and ``compile``, prepare it first (:func:`~densflow.performance.prepare_model`).
        dataset: uint8 ``(3, H, W)`` images (or tuples starting with one), e.g.
            ``densflow.data.load_dataset(name, data_dir, "test")``.
        config: the settings (:class:`EvalConfig`; its defaults when None), of which
            ``changes`` replace fields, e.g. ``evaluate(model, test, iw_samples=200)``.
        device: where to run (default: where the model's parameters are; ``"auto"``: CUDA when
            available).
        partial_path: where to keep progress (:mod:`~densflow.evaluation.partial`): written
            atomically at most every ``save_interval_s`` seconds, on Ctrl-C, SIGTERM and errors,
            read back by the same call (with any batch size or number of processes), and deleted
            when the evaluation completes. A file there that is not such a progress file is
            refused before any work; the progress of another model or other settings is
            replaced, with a warning.
        dist: this process's place in a ``torchrun`` job
            (:meth:`Dist.from_env() <densflow.utils.distributed.Dist.from_env>`): every process
            must then call ``evaluate`` alike; each evaluates a shard and every one returns the
            whole result. Default: a single process, which evaluates everything.

    Returns:
        An :class:`EvalResult`, per-image values in dataset order.
    """
    config = (config or EvalConfig()).replace(**changes)
    if config.iw_samples is None and not config.single:
        raise InputError("nothing to compute: single=False and no iw_samples; set iw_samples")
    if config.iw_samples == "paper":
        raise InputError(
            "iw_samples='paper' needs the dataset's name: pass config.for_dataset(name)"
        )
    images = first_images(dataset, config.limit)
    n = len(images)
    if n == 0:
        raise InputError("dataset is empty: there is no image to evaluate")
    dist = dist or Dist()
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    shard = dist.shard(n)
    files = None
    if partial_path is not None:  # read (and a foreign file refused) before any work
        key = {"n_images": n, "iw_samples": config.iw_samples, "single": config.single,
               "seed": config.seed, "amp": config.amp, "device": device.type,
               "model": fingerprint(model)}  # fmt: skip
        files = ProgressFiles(Path(partial_path), dist, key)
    group = Group(dist, device)
    run_pass = make_pass(model, config.amp, config.cuda_graphs, min(config.batch_size, len(shard)))
    was_training = model.training
    model.eval()
    try:
        shards = _evaluate_shard(model, images, shard, config, run_pass, group, files)
    finally:
        model.train(was_training)
    if files is not None:
        files.remove(Path(partial_path))
    return _result(shards, n, config.iw_samples)


def _evaluate_shard(
    model: DenseFlow, images: Dataset, shard: range, config: EvalConfig, run_pass: Pass,
    group: Group, files: ProgressFiles | None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:  # fmt: skip
    """This process's shard, batch by batch in lockstep with the others, then every process's
    values; progress is saved along the way and whenever the run stops short."""
    single, iw = files.resume(shard) if files is not None else ([], [])
    done = len(single[0]) if single else len(iw[0]) if iw else 0
    todo = range(shard.start + done, shard.stop)
    loader = DataLoader(
        Subset(images, todo), batch_size=config.batch_size, num_workers=config.num_workers,
        collate_fn=collate_images,
    )  # fmt: skip
    rounds = group.max(math.ceil(len(todo) / config.batch_size))
    report = GroupProgress(group.dist, len(images), group.sum(done), enabled=config.progress)
    device = model.prior.loc.device
    last_save, batches = time.monotonic(), iter(loader)
    with torch.no_grad(), sigterm_as_interrupt():
        try:
            for _ in range(rounds):
                x = next(batches, None)
                if x is not None:
                    indices = range(shard.start + done, shard.start + done + len(x))
                    s, w = batch_bounds(model, run_pass, x.to(device), indices, config)
                    single += [s] if s is not None else []
                    iw += [w] if w is not None else []
                    done += len(x)
                    if (
                        files is not None
                        and done < len(shard)
                        and (time.monotonic() - last_save >= config.save_interval_s)
                    ):
                        files.save(shard.start, single, iw)
                        last_save = time.monotonic()
                report.update(group.sum(done))
            return group.gather((shard.start, _values(single), _values(iw)))
        except BaseException:
            stopping()  # a SIGTERM from here on (torchrun's, after a broken collective) waits
            if files is not None and done > 0:  # the same command resumes from here
                files.save(shard.start, single, iw)
            raise
        finally:
            report.close()


def batch_bounds(
    model: DenseFlow, run_pass: Pass, x: Tensor, indices: range, config: EvalConfig
) -> tuple[Tensor | None, Tensor | None]:
    """The single-sample and the importance-weighted bits/dim ``(B,)`` (float64, on the CPU;
    None when not asked for) of the uint8 batch ``x`` of images ``indices``, each image with its
    own draws (:class:`~densflow.evaluation.draws.IndexedDraws`)."""
    b, shape = len(x), model.image_shape
    single = iw = None
    if config.single:
        noise = IndexedDraws(model, config.seed, "single", indices).next()
        single = bits_per_dim(run_pass(x, noise, b), shape).double().cpu()
    if config.iw_samples is not None:
        draws = IndexedDraws(model, config.seed, "iw", indices)

        def log_prob(repeated: Tensor, start: int) -> Tensor:
            return run_pass(repeated, draws.next(len(repeated) // b), b)

        log_p = importance_weighted_log_prob(log_prob, x, config.iw_samples, config.chunk_size)
        iw = bits_per_dim(log_p, shape).double().cpu()
    return single, iw


def _values(parts: list[Tensor]) -> np.ndarray:
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def _result(shards: list[tuple[int, np.ndarray, np.ndarray]], n: int, k: int | None) -> EvalResult:
    """The :class:`EvalResult` of every process's values, put in dataset order."""
    shards = sorted(shards, key=lambda s: s[0])

    def whole(column: int) -> np.ndarray | None:
        values = np.concatenate([s[column] for s in shards])
        if len(values) == 0:
            return None
        assert len(values) == n, f"gathered {len(values)} of {n} per-image values"
        return values

    single, iw = whole(1), whole(2)

    def mean(values: np.ndarray | None) -> float | None:
        return None if values is None else float(values.mean())

    return EvalResult(mean(single), mean(iw), n, k, single, iw)
