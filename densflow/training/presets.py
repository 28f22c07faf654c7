"""Named training presets per dataset: the paper's protocol, what the official scripts run, a
minutes-long smoke run of every code path, and the CPU quickstart on the built-in photos."""

from __future__ import annotations

from typing import Any

from .. import data
from ..utils.errors import InputError
from .config import TrainConfig

__all__ = ["TRAIN_PRESETS", "train_preset"]

# What every paper preset shares beyond the dataset's protocol (epochs, batch, decay, lr and warm-up
# live in the dataset's registry entry, densflow.data.DATASETS[name].protocol, Appendix C).
_PAPER_COMMON: dict[str, Any] = dict(
    model="denseflow-74-10",
    schedule="paper",
    augmentation=True,
    checkpoint_every=1000,
    log_every=100,
)


def _paper(dataset: str, official: bool = False, **changes: Any) -> dict[str, Any]:
    protocol = data.DATASETS[dataset].protocol.train_fields(official=official)
    return {"dataset": dataset, **_PAPER_COMMON, **protocol, **changes}


TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's protocol with DenseFlow-74-10. CIFAR-10 is evaluated every 10th epoch only
    # (every epoch would add about 7 % to its 650). The importance-weighted test bound is left to
    # `python -m densflow eval`.
    "paper": {d: _paper(d) for d in data.paper_datasets()},
    # What the official scripts run: the warm-up overwrites the decay (constant lr 1e-3 after it),
    # and CIFAR-10 trains 400 (+20) epochs instead of the paper's 580 (+70).
    "official": {d: _paper(d, official=True, schedule="official_constant")
                 for d in data.paper_datasets()},
    # Minutes on a CPU: every code path (warm-up, epoch end, evaluation, fine-tuning, checkpoints)
    # with the tiny model and 2 short epochs. Not for results.
    "smoke": {d: dict(dataset=d, model="tiny", batch_size=16, epochs=1, finetune_epochs=1,
                      steps_per_epoch=10, warmup_steps=10, checkpoint_every=10, log_every=5,
                      eval_limit=64) for d in data.DATASETS},
    # The TrainConfig defaults (the small model, 4 epochs of 147 steps, warm-up 200 steps),
    # evaluated on the first 256 test patches: minutes on one CPU core.
    "quickstart": {"photos": dict(dataset="photos", eval_limit=256)},
}  # fmt: skip
"""Preset name → dataset → :class:`TrainConfig` fields. ``out_dir`` defaults to
``runs/<dataset>-<preset>``."""


def train_preset(dataset: str, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a named preset for ``dataset``, with ``overrides`` applied.

    Example:
        >>> cfg = train_preset("cifar10", "paper")
        >>> cfg.epochs, cfg.finetune_epochs, cfg.batch_size, cfg.gamma
        (580, 70, 64, 0.9975)
    """
    if preset not in TRAIN_PRESETS:
        raise InputError(
            f"unknown training preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}"
        )
    if dataset not in TRAIN_PRESETS[preset]:
        raise InputError(
            f"preset {preset!r} has no settings for {dataset!r}; it covers "
            f"{sorted(TRAIN_PRESETS[preset])}"
        )
    fields = {"out_dir": f"runs/{dataset}-{preset}", **TRAIN_PRESETS[preset][dataset], **overrides}
    return TrainConfig(**fields)
