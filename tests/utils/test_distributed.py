"""Dist: a process's place in a torchrun job, read from the environment."""

from __future__ import annotations

import pytest
import torch

from densflow.utils.distributed import Dist
from densflow.utils.errors import InputError


def test_without_torchrun_a_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Dist.from_env() == Dist(0, 1, 0) and Dist().is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Dist.from_env() == Dist()


def test_torchrun_variables_are_read_and_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Dist.from_env() == Dist(3, 4, 1) and not Dist.from_env().is_main
    for rank in ("4", "-1", "x"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(InputError, match=r"^the torchrun environment is inconsistent .*RANK"):
            Dist.from_env()
    monkeypatch.delenv("RANK")
    with pytest.raises(InputError, match="RANK=None"):
        Dist.from_env()


def test_the_shards_of_all_ranks_are_the_items_in_order():
    for n in (0, 1, 7, 10, 64):
        for world in (1, 2, 3, 5):
            shards = [Dist(r, world).shard(n) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_the_device_is_one_gpu_per_process_under_torchrun(monkeypatch):
    assert Dist(1, 2, 1).device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Dist(1, 2, 1).device("auto") == torch.device("cpu")
    assert Dist().device(None) == torch.device("cpu")
