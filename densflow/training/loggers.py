"""Mirrors of the metrics log for live viewers: ``--logger tensorboard`` writes TensorBoard event
files into ``out_dir/tensorboard/`` (watch them with ``tensorboard --logdir runs/``).

``metrics.jsonl`` stays the source of truth: a logger only sees the records that
:meth:`~densflow.training.metrics.RunLog.event` has just written there, and turns them into

* scalars: every number of the ``train`` (bits/dim since the last log point, lr, images/s,
  non-finite steps, gradient norm), ``epoch`` (train bits/dim of the epoch, lr) and ``eval``
  (test bits/dim, single-sample and importance-weighted) records, tagged ``<event>/<field>``;
* an image ``samples``: a grid of samples drawn at each single-sample evaluation, from a generator
  seeded by the run's seed, so that the grids of one run show the same draws as training goes on;
* text ``config``: the run's :class:`~densflow.training.TrainConfig` at each start or resume.

**Resume without duplicates.** A resumed run continues at the checkpoint's step ``T`` and cuts
``metrics.jsonl`` back to what the checkpoint had seen. The new event file is opened with
``purge_step=T``: TensorBoard then hides every event of the earlier files at step ``T`` or later
(those written after the checkpoint, before a crash, are replayed by the run anyway), and the
logger writes again the kept records at step ``T`` (the sample grid of an evaluation at ``T`` is
drawn again from the checkpoint's model with the same seed, so it is the same image). A run first
resumed with a logger back-fills the scalars of its whole metrics log instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import require
from ..evaluate import draw_samples
from ..model import DenseFlow
from ..utils.errors import InputError
from .config import LOGGERS
from .metrics import read_metrics

__all__ = [
    "TENSORBOARD_DIR",
    "Logger",
    "TensorBoardLogger",
    "make_loggers",
    "sample_source",
    "scalars_of",
]

TENSORBOARD_DIR = "tensorboard"
"""The folder of the TensorBoard event files inside ``out_dir``."""

# The records whose numbers are scalars, and the fields that only place them (not plotted).
_SCALAR_EVENTS = ("train", "epoch", "eval")
_PLACE_FIELDS = frozenset({"event", "step", "epoch", "time", "n_images", "iw_samples", "steps"})


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one metrics record: tag ``<event>/<field>`` → value (None and
    non-numeric fields are left out)."""
    event = record.get("event")
    if event not in _SCALAR_EVENTS:
        return {}
    return {
        f"{event}/{key}": float(value)
        for key, value in record.items()
        if key not in _PLACE_FIELDS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


class Logger:
    """What :class:`~densflow.training.metrics.RunLog` calls: ``record`` after each line of
    ``metrics.jsonl``, ``close`` at the end of the run."""

    def record(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _summary_writer() -> type:
    # torch's writer imports the tensorboard package; without it, one line naming the extra.
    require("tensorboard", "tensorboard", "logger='tensorboard'")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``out_dir/tensorboard`` (see the module docstring).

    Arguments:
        out_dir: the run folder (holding ``metrics.jsonl``).
        samples: draws the uint8 sample images ``(n, 3, H, W)`` shown at each evaluation (None:
            no images).
        nrow: images per row of the grid.
    """

    def __init__(
        self, out_dir: str | Path, samples: Callable[[], Tensor] | None = None, nrow: int = 4
    ) -> None:
        self.out_dir = Path(out_dir)
        self.log_dir = self.out_dir / TENSORBOARD_DIR
        self.samples, self.nrow = samples, nrow
        self._writer_class = _summary_writer()  # fails here, before any training, when missing
        self.writer: Any = None

    def record(self, record: dict[str, Any]) -> None:
        if record.get("event") == "start":
            self._open(record)
            return
        if self.writer is None:
            return
        self._write(record)
        if record.get("event") in ("epoch", "eval", "end"):
            self.writer.flush()  # visible while the run goes on

    def _open(self, start: dict[str, Any]) -> None:
        step = int(start["step"])
        had_events = any(self.log_dir.glob("events.out.tfevents.*"))
        if self.writer is not None:
            self.writer.close()
        # Events of earlier files at steps >= step are hidden: they are written again below, or
        # come again from the resumed run.
        self.writer = self._writer_class(str(self.log_dir), purge_step=step)
        history = read_metrics(self.out_dir)[:-1]  # the kept records, before this start
        for rec in history:
            if rec.get("step", -1) == step or (not had_events and rec.get("event") != "start"):
                self._write(rec, images=rec.get("step") == step)
        config = json.dumps(start.get("config", {}), indent=2, default=str)
        # Indented lines render as a code block in TensorBoard's Markdown text view.
        text = "\n".join("    " + line for line in config.splitlines())
        self.writer.add_text("config", text, step)
        self.writer.flush()

    def _write(self, record: dict[str, Any], images: bool = True) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, step)
        if images and self.samples is not None and record.get("test_bpd") is not None:
            from torchvision.utils import make_grid

            grid = make_grid(self.samples().cpu(), nrow=self.nrow, padding=2)
            self.writer.add_image("samples", grid, step)  # uint8 CHW, shown as is

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def sample_source(model: DenseFlow, seed: int, n: int = 16) -> Callable[[], Tensor]:
    """Draws ``n`` samples of ``model`` from a fresh generator seeded with ``seed`` each call (the
    same noise each time; the global random state is not touched)."""

    def draw() -> Tensor:
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(seed)
        return draw_samples(model, n, generator=generator)

    return draw


def make_loggers(
    name: str, out_dir: str | Path, samples: Callable[[], Tensor] | None = None
) -> list[Logger]:
    """The loggers of ``TrainConfig.logger``: none for ``"none"``, else the one named."""
    if name not in LOGGERS:
        raise InputError(f"logger must be one of {LOGGERS}, got {name!r}")
    return [TensorBoardLogger(out_dir, samples)] if name == "tensorboard" else []
