"""The allowed range of every numeric :class:`~densflow.training.config.TrainConfig` field, and
the one-line error for a value outside it (naming the field, its option and a value that works).

>>> check_range("lr", 0.0, *RANGES["lr"])
Traceback (most recent call last):
...
ValueError: lr must be a finite number > 0.0, got 0.0; set --lr (TrainConfig.lr) to e.g. 1e-3
"""

from __future__ import annotations

import math
from typing import Any

from ..utils.errors import InputError

__all__ = ["FLOATS", "RANGES", "check_range"]

# Numeric fields: (lowest, highest, an example value for the fix); a bound in parentheses is
# excluded. None fields (where the type allows None) mean "not set" and are not checked.
RANGES: dict[str, tuple[tuple[float, bool] | None, tuple[float, bool] | None, str]] = {
    "image_size": ((1, True), None, "32"),
    "batch_size": ((1, True), None, "16"),
    "epochs": ((0, True), None, "4"),
    "finetune_epochs": ((0, True), None, "0"),
    "steps_per_epoch": ((1, True), None, "100"),
    "max_steps": ((1, True), None, "100"),
    "lr": ((0.0, False), None, "1e-3"),
    "finetune_lr": ((0.0, False), None, "2e-5"),
    "warmup_steps": ((0, True), None, "200"),
    "gamma": ((0.0, False), (1.0, True), "0.95"),
    "grad_clip": ((0.0, False), None, "1.0"),
    "num_workers": ((0, True), None, "0"),
    "seed": (None, None, "0"),
    "checkpoint_every": ((0, True), None, "100"),
    "log_every": ((1, True), None, "25"),
    "eval_every": ((0, True), None, "1"),
    "eval_limit": ((1, True), None, "1000"),
    "eval_batch_size": ((1, True), None, "64"),
    "iw_samples": ((1, True), None, "200"),
    "chunk_size": ((1, True), None, "50"),
    "max_nonfinite": ((1, True), None, "20"),
}  # fmt: skip
FLOATS = frozenset({"lr", "finetune_lr", "gamma", "grad_clip"})


def check_range(
    name: str, value: Any, low: tuple[float, bool] | None, high: tuple[float, bool] | None,
    example: str,
) -> None:  # fmt: skip
    """A ValueError naming the field, its option, the range and a value that works, unless
    ``value`` is None or a finite number (an integer for integer fields) in the range."""
    if value is None:
        return
    is_float = name in FLOATS
    kind = "a finite number" if is_float else "an integer"
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low[1] else '>'} {low[0]}")
    if high is not None:
        parts.append(f"{'<=' if high[1] else '<'} {high[0]}")
    wanted = kind + (" " + " and ".join(parts) if parts else "")
    if not is_float and high is None and low in ((1, True), (0, True)):
        wanted = f"{'positive' if low[0] else 'non-negative'} ({wanted})"
    number = (int, float) if is_float else int
    ok = isinstance(value, number) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low[0] if low[1] else value > low[0]
    if ok and high is not None:
        ok = value <= high[0] if high[1] else value < high[0]
    if not ok:
        flag = "--" + name.replace("_", "-")
        raise InputError(
            f"{name} must be {wanted}, got {value!r}; set {flag} (TrainConfig.{name}) to e.g. "
            f"{example}"
        )
