"""The allowed range of every size, count and number a user can set, in one table, and the one
check that refuses a value outside it.

The table covers the architecture (:class:`~densflow.config.DenseFlowConfig`), the training run
(:class:`~densflow.training.TrainConfig`), the evaluation (:class:`~densflow.evaluation.EvalConfig`)
and the ablation study, whichever way the value comes in: a command-line option, a
``config.json``, a checkpoint's stored config, a notebook parameter or a Python call. Upper bounds
are far above any sensible run (the paper's largest model has widths of 64 and its largest image
side is 64) but refuse values that would allocate without end or run for ever, before any
allocation.

>>> RANGES["TrainConfig"]["lr"].describe()
'a finite number > 0.0 and <= 10.0'
>>> check_range("EvalConfig", "nrow", 8)
8
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from .errors import InputError

__all__ = ["MAX_SEED", "RANGES", "Range", "check_range"]

MAX_SEED = 2**64 - 1
"""The largest seed: ``torch.Generator.manual_seed`` takes 64-bit seeds."""


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``low < value`` with ``low_open``), an integer unless
    ``real``; ``example``: a value that works, for the message."""

    low: float
    high: float
    example: str
    real: bool = False
    low_open: bool = False

    def describe(self) -> str:
        if self.real:
            return f"a finite number {'>' if self.low_open else '>='} {self.low} and <= {self.high}"
        return f"an integer in [{self.low}, {self.high}]"

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(
            value, numbers.Real if self.real else numbers.Integral
        ):
            return False
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.low_open else value >= self.low


def _int(low: int, high: int, example: int) -> Range:
    return Range(low, high, str(example))


def _real(low: float, high: float, example: str, *, open_: bool = False) -> Range:
    return Range(low, high, example, real=True, low_open=open_)


_WIDTH = _int(1, 4096, 48)  # channels of a layer
_DEPTH = _int(1, 256, 4)  # layers, steps or modules in a row
_STEPS = 2**40  # optimizer steps (a million years of 30 steps a second)
_EPOCHS = 10**6

RANGES: dict[str, dict[str, Range]] = {
    "DenseFlowConfig": {
        "image_size": _int(1, 1024, 32),
        "block_config": _int(1, 64, 6),  # per entry, as the two below
        "layers_config": _DEPTH,
        "mid_channels": _WIDTH,
        "blocks": _int(1, 8, 3),  # len(block_config): each block halves the image side
        "growth_rate": _int(0, 1024, 10),
        "coupling_dense_depth": _DEPTH,
        "coupling_dense_growth": _WIDTH,
        "num_landmarks": _int(1, 4096, 4),
        "pinv_iterations": _int(1, 100, 6),
        "deq_num_steps": _DEPTH,
        "deq_context_channels": _WIDTH,
        "deq_mid_channels": _WIDTH,
        "deq_depth": _DEPTH,
        "deq_growth": _WIDTH,
        "deq_context_depth": _DEPTH,
        "deq_context_growth": _WIDTH,
    },
    "TrainConfig": {
        "image_size": _int(1, 1024, 32),
        "batch_size": _int(1, 2**16, 16),
        "epochs": _int(0, _EPOCHS, 4),
        "finetune_epochs": _int(0, _EPOCHS, 0),
        "steps_per_epoch": _int(1, _STEPS, 100),
        "max_steps": _int(1, _STEPS, 100),
        "lr": _real(0.0, 10.0, "1e-3", open_=True),
        "finetune_lr": _real(0.0, 10.0, "2e-5", open_=True),
        "warmup_steps": _int(0, _STEPS, 200),
        "gamma": _real(0.0, 1.0, "0.95", open_=True),
        "grad_clip": _real(0.0, 1e9, "1.0", open_=True),
        "num_workers": _int(0, 1024, 0),
        "seed": _int(0, MAX_SEED, 0),
        "checkpoint_every": _int(0, _STEPS, 100),
        "log_every": _int(1, _STEPS, 25),
        "eval_every": _int(0, _EPOCHS, 1),
        "eval_limit": _int(1, 2**31, 1000),
        "eval_batch_size": _int(1, 2**16, 64),
        "iw_samples": _int(1, 2**20, 200),
        "chunk_size": _int(1, 2**16, 50),
        "max_nonfinite": _int(1, 10**6, 20),
    },
    "EvalConfig": {
        "batch_size": _int(1, 2**16, 64),
        "iw_samples": _int(1, 2**20, 200),
        "chunk_size": _int(1, 2**16, 50),
        "limit": _int(1, 2**31, 1000),
        "seed": _int(0, MAX_SEED, 0),
        "n_samples": _int(1, 2**14, 64),
        "nrow": _int(1, 2**10, 8),
        "temperature": _real(0.0, 1e3, "1.0"),
        "num_workers": _int(0, 1024, 0),
        "save_interval_s": _real(0.0, 86400.0, "60"),
    },
    "ablations": {
        "steps": _int(1, _STEPS, 24),
        "batch_size": _int(1, 2**16, 16),
        "seeds": _int(0, MAX_SEED, 0),
        "timing_steps": _int(0, 10**4, 2),
    },
}
"""Owner (a config class's name, or ``ablations``) → field → :class:`Range`."""


def check_range(owner: str, name: str, value: Any, *, option: str | None = None) -> Any:
    """``value`` if it is None or in the range of ``owner``'s field ``name``; else an
    :class:`~densflow.utils.errors.InputError` in one line naming the field, its option (default
    ``--name``; a name without dashes, such as a config.json key, names the field only), the
    range, what was given and a value that works.

    ``name`` may carry an index (``mid_channels[1]``): the range is that of the field."""
    if value is None:
        return None
    rng = RANGES[owner][name.split("[")[0]]
    if rng.holds(value):
        return value
    field = name.split("[")[0]
    where = f"{owner}.{field}" if owner[0].isupper() else owner
    flag = option or "--" + field.replace("_", "-")
    hint = f"{flag} ({where})" if flag.startswith("-") else where
    raise InputError(
        f"{name} must be {rng.describe()}, got {value!r}; set {hint} to e.g. {rng.example}"
    )
