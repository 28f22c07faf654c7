"""Resuming under torchrun: every rank starts from the same step with the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from densflow.training import TrainConfig, TrainingSetupError
from densflow.training import resume as resume_module


def test_ranks_that_disagree_on_the_step_or_the_settings_do_not_start(monkeypatch):
    config = TrainConfig(out_dir="runs/a", data_dir="/node0/data")
    ckpt = Path("runs/a/checkpoint.pt")

    def ranks(*others):
        local = {"data_dir", "out_dir", "device", "num_workers", "progress"}
        mine = {k: v for k, v in config.to_dict().items() if k not in local}
        monkeypatch.setattr(
            resume_module, "gather_objects", lambda obj: [obj, *[(s, mine | o) for s, o in others]]
        )

    ranks((3, {}))  # the same step and settings on rank 1
    resume_module.check_ranks_agree(3, config, ckpt)
    ranks((3, {}), (0, {}))  # rank 2 found no checkpoint
    with pytest.raises(
        TrainingSetupError, match=r"^rank 2 would start at step 0, rank 0 at step 3"
    ):
        resume_module.check_ranks_agree(3, config, ckpt)
    ranks((3, {"lr": 0.5, "seed": 4}))  # rank 1 was started with other options
    with pytest.raises(
        TrainingSetupError, match=r"^rank 1 was given other settings .*\(lr, seed\)"
    ):
        resume_module.check_ranks_agree(3, config, ckpt)
