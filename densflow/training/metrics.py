"""What a run reports: the metrics log ``metrics.jsonl`` (the source of truth, read back by
:func:`read_metrics`), one ``logging`` line per log point, evaluation and checkpoint (logger
``densflow``), a progress bar where someone watches (:func:`densflow.utils.runtime.progress_bar`),
and the running sums behind them, kept on the device and read only at log points.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..utils.runtime import progress_bar
from .config import METRICS_NAME

__all__ = ["HEARTBEAT_S", "RunLog", "RunningMean", "read_metrics"]

logger = logging.getLogger("densflow")

HEARTBEAT_S = 20.0
"""The longest a training run stays silent: when no line was logged for this long, the next step
logs its progress (step, images/s, ETA; no loss, which would cost a host read). A run watched
through its log alone (``papermill --log-output``, a batch job's file) shows it is alive however
slow its steps are."""


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The events of ``out_dir/metrics.jsonl``, oldest first.

    Events (key ``event``): ``start``; ``train`` (every ``log_every`` steps: ``bpd`` averaged
    since the last one, ``lr``, ``images_per_s``, ``nonfinite``, ``grad_norm``: the mean gradient
    norm before clipping over the finite steps since the last one); ``nonfinite`` (a skipped step);
    ``epoch`` (``train_bpd`` of the epoch); ``eval`` (``test_bpd``, and ``test_bpd_iw`` after the
    last epoch when ``iw_samples`` is set); ``end``. All carry ``step``, ``epoch`` and ``time``
    (Unix seconds). A line torn by a crash is ignored.
    """
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # only a crash mid-write leaves such a line, and only last
            continue
    return events


class RunningMean:
    """A sum and a count of losses on the device: adding never synchronises with the host."""

    def __init__(self, device: torch.device) -> None:
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, loss: Tensor) -> None:
        self.sum += loss
        self.count += 1

    def mean(self) -> float | None:
        """The mean so far (one host read), None when empty."""
        return (self.sum / self.count).item() if self.count else None

    def reset(self) -> None:
        self.sum.zero_()
        self.count = 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class RunLog:
    """The reports of one run. Only the main process (``enabled``) writes the metrics log and
    shows a bar; every line is also a ``logging`` record of the logger ``densflow``.

    Arguments:
        out_dir: the run folder.
        keep_bytes: the size of the metrics log the checkpoint had seen; the rest (steps replayed
            after a crash) is cut, so that nothing is logged twice.
        enabled: whether this process reports (rank 0).
        total_steps, done_steps: the plan of this call and the steps already done.
        images_per_step: images per step over all processes (for images/s).
        progress: the bar's switch (None: on a terminal and in notebooks).
        loggers: mirrors of the metrics log (:mod:`densflow.training.loggers`): each gets every
            record just written, and is closed with the log.
    """

    def __init__(
        self, out_dir: Path, keep_bytes: int, *, enabled: bool, total_steps: int, done_steps: int,
        images_per_step: int, progress: bool | None, device: torch.device,
        loggers: Sequence[Any] = (),
    ) -> None:  # fmt: skip
        self.path, self.enabled = Path(out_dir) / METRICS_NAME, enabled
        self.loggers = list(loggers) if enabled else []
        self.total_steps, self.images_per_step = total_steps, images_per_step
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
                f.truncate(keep_bytes)
        self.bar = progress_bar(
            total_steps, initial=min(done_steps, total_steps), desc="train", unit="step",
            enabled=progress if enabled else False,
        )  # fmt: skip
        self.window = RunningMean(device)  # losses since the last log point
        self.window_grad = RunningMean(device)  # gradient norms of its finite steps
        self.window_steps = self.window_nonfinite = 0
        self.window_start = self.last_line = time.perf_counter()
        self.steps_done = done_steps

    def offset(self) -> int:
        """Bytes of the metrics log so far (stored in checkpoints)."""
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0

    def event(self, event: str, **values: Any) -> None:
        """One line of ``metrics.jsonl``, then the same record to each logger."""
        if self.enabled:
            record = {"event": event, **values, "time": time.time()}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for mirror in self.loggers:
                mirror.record(record)

    def info(self, message: str, *args: Any) -> None:
        if self.enabled:
            logger.info(message, *args)
            self.last_line = time.perf_counter()

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{total_epochs}")

    def step_done(self, loss: Tensor | None) -> None:
        """Count a finished step (``loss`` None: skipped as non-finite)."""
        self.window_steps += 1
        self.steps_done += 1
        if loss is None:
            self.window_nonfinite += 1
        else:
            self.window.add(loss)
        self.bar.update(1)
        now = time.perf_counter()
        if self.enabled and now - self.last_line >= HEARTBEAT_S:
            rate, eta = self._pace(now)
            self.info(
                "step %d/%d  %.1f images/s  ETA %s",
                self.steps_done, self.total_steps, rate, _duration(eta),
            )  # fmt: skip

    def grad_norm(self, norm: Tensor | None) -> None:
        """The gradient norm of a step (None: a skipped step, whose norm may be non-finite)."""
        if norm is not None:
            self.window_grad.add(norm)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation) out of the images/s of this window."""
        self.window_start += seconds

    def train(self, step: int, epoch: int, lr: float) -> None:
        """The log point after ``step``: mean bits/dim since the last one, lr, images/s, ETA."""
        now = time.perf_counter()
        bpd = self.window.mean()
        rate, eta = self._pace(now)
        self.event(
            "train", step=step, epoch=epoch, bpd=bpd, lr=lr, images_per_s=rate,
            nonfinite=self.window_nonfinite, grad_norm=self.window_grad.mean(),
        )  # fmt: skip
        self.info(
            "step %d/%d  epoch %d  bits/dim %s  lr %.3g  %.1f images/s  ETA %s",
            step, self.total_steps, epoch + 1, "nan" if bpd is None else f"{bpd:.4f}", lr, rate,
            _duration(eta),
        )  # fmt: skip
        self.bar.set_postfix(bpd="nan" if bpd is None else f"{bpd:.3f}", img_s=f"{rate:.1f}")
        self.window.reset()
        self.window_grad.reset()
        self.window_steps = self.window_nonfinite = 0
        self.window_start = now

    def _pace(self, now: float) -> tuple[float, float]:
        """Images/s of this window, and the seconds the steps left would take at its pace."""
        elapsed = max(now - self.window_start, 1e-9)
        per_step = elapsed / max(self.window_steps, 1)
        left = max(self.total_steps - self.steps_done, 0)
        return self.window_steps * self.images_per_step / elapsed, left * per_step

    def evaluation(self, step: int, epoch: int, n_images: int, **values: Any) -> None:
        self.event("eval", step=step, epoch=epoch, n_images=n_images, **values)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        self.info("step %d  evaluation on %d test images: %s", step, n_images, shown)

    def checkpoint(self, path: Path, step: int) -> None:
        self.info("step %d  checkpoint %s", step, path)

    def close(self) -> None:
        self.bar.close()
        for mirror in self.loggers:
            mirror.close()
