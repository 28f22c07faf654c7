"""Training under ``torchrun``: two CPU processes (gloo, over loopback) stay in step and resume
exactly, as the single-process runs of ``test_trainer.py`` do; on one launcher, or on two "nodes"
(two launchers meeting at a c10d rendezvous on localhost)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from utils import assert_same_training_state, torchrun

from densflow.io.checkpoint import read_checkpoint
from densflow.training import CHECKPOINT_NAME, read_metrics

pytestmark = pytest.mark.slow  # seven torchrun launches, ≈ 2.5 minutes

# Each rank trains the tiny model on the same 24 random 16×16 images (its shard: 12), then saves
# what it ends with, so that the ranks can be compared.
RANK_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from torch.utils.data import TensorDataset
    from densflow import performance
    from densflow.training import TrainConfig, Trainer, optim
    from densflow.training import step as step_module

    out_dir, max_steps, fast = sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["fast"]
    if os.environ["RANK"] == "1":  # a node whose out_dir is a disk of its own, if the test says so
        out_dir = os.environ.get("RANK1_OUT_DIR", out_dir)
    if fast:  # aot_eager: dynamo and AOTAutograd's graphs without code generation (seconds)
        step_module.compile_model = lambda m: performance.compile_model(m, backend="aot_eager")
        step_module.compile_optimizer = lambda o: optim.compile_optimizer(
            o, backend="aot_eager")
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(dataset="photos", model="tiny", image_size=16, batch_size=2, epochs=1,
                      warmup_steps=2, out_dir=out_dir, log_every=1, checkpoint_every=1,
                      eval_every=0, max_steps=max_steps, progress=False,
                      compile=fast, channels_last=fast)
    trainer = Trainer(cfg, train_set=TensorDataset(x[:24]), test_set=TensorDataset(x[24:]))
    trainer.fit()
    torch.save({"params": dict(trainer.model.named_parameters()),
                "optimizer": trainer.optimizer.state_dict()["state"],
                "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]},
               os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
""")


def train(script: Path, out_dir: Path, max_steps: int, *options: str, nodes: int = 1) -> str:
    """Run ``script`` on two ranks (``nodes`` launchers); returns their output."""
    launched = torchrun(str(script), str(out_dir), str(max_steps), *options, nodes=nodes)
    for run in launched:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return "".join(run.stdout + run.stderr for run in launched)


def final_state(out_dir: Path, rank: int) -> dict:
    return torch.load(out_dir / f"rank{rank}.pt", weights_only=True)


def assert_equal_states(a: dict, b: dict) -> None:
    # Parameters, not the whole state dict: each rank's BatchNorm statistics saw its own shard.
    assert_same_training_state(a["params"], a["optimizer"], b["params"], b["optimizer"])


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("script") / "rank.py"
    path.write_text(RANK_SCRIPT)
    return path


@pytest.fixture(scope="module")
def full(script, tmp_path_factory) -> Path:
    """The uninterrupted eager run of 4 steps, which both tests compare with."""
    out_dir = tmp_path_factory.mktemp("full")
    train(script, out_dir, 4)
    return out_dir


@pytest.mark.slow
def test_two_ranks_stay_in_step_and_resume_exactly(script, full, tmp_path):
    split = tmp_path / "split"
    train(script, split, 2)
    after_two = read_checkpoint(split / CHECKPOINT_NAME)
    train(script, split, 4)  # resumes from step 2

    ranks = [final_state(full, r) for r in (0, 1)]
    assert_equal_states(*ranks)  # DDP averaged the gradients of two different shards
    for r in (0, 1):  # a resumed distributed run is the uninterrupted one, on every rank
        assert_equal_states(ranks[r], final_state(split, r))

    checkpoint = read_checkpoint(full / CHECKPOINT_NAME)  # written by rank 0 alone
    assert checkpoint["progress"]["step"] == 4
    assert checkpoint["data_order"]["world_size"] == 2
    for name, value in ranks[0]["params"].items():
        assert torch.equal(checkpoint["model"][name], value), name
    moved = [n for n, v in ranks[0]["params"].items() if not torch.equal(after_two["model"][n], v)]
    assert len(moved) > len(ranks[0]["params"]) // 2  # steps 3-4 trained

    steps = [e["step"] for e in read_metrics(full) if e["event"] == "train"]
    assert steps == [1, 2, 3, 4]  # one log per step, from rank 0 only


@pytest.mark.compile
def test_compiled_channels_last_ranks_stay_in_step_and_follow_eager(script, full, tmp_path):
    # --compile --channels-last under torchrun: the compiled flow inside DDP, whose gradient
    # buckets take the channels_last parameters' strides.
    fast = tmp_path / "fast"
    output = train(script, fast, 4, "fast")
    ranks = [final_state(fast, r) for r in (0, 1)]
    assert "torch.compile failed" not in output
    assert ranks[0]["graphs"] == 2  # the flow's likelihood and the optimizer step, one graph each
    assert_equal_states(*ranks)
    for name, x in final_state(full, 0)["params"].items():
        assert torch.allclose(ranks[0]["params"][name], x, rtol=1e-4, atol=1e-6), name
    # Only nominal stride differences, which the step silences (see wrap_distributed).
    assert "Grad strides do not match" not in output


def test_two_nodes_resume_exactly_as_one_node(script, full, tmp_path):
    # Two launchers of one process each (torchrun --nnodes 2), as on two machines: rank 0 and
    # rank 1 of the same job, so the same numbers as one launcher of two processes.
    split = tmp_path / "nodes"
    train(script, split, 2, nodes=2)
    train(script, split, 4, nodes=2)  # resumes from step 2
    starts = [e for e in read_metrics(split) if e["event"] == "start"]
    assert [(e["step"], e["resumed"], e["world_size"]) for e in starts] == [
        (0, False, 2),
        (2, True, 2),
    ]
    for r in (0, 1):
        assert_equal_states(final_state(full, r), final_state(split, r))
    assert read_checkpoint(split / CHECKPOINT_NAME)["data_order"]["world_size"] == 2


def test_ranks_that_do_not_see_the_same_checkpoint_do_not_start(
    script, full, tmp_path, monkeypatch
):
    shared = tmp_path / "shared"
    shutil.copytree(full, shared)  # rank 0 resumes from step 4 here
    monkeypatch.setenv("RANK1_OUT_DIR", str(tmp_path / "local"))  # rank 1 sees no checkpoint
    [run] = torchrun(str(script), str(shared), "6")
    assert run.returncode != 0
    assert "rank 1 would start at step 0, rank 0 at step 4: they do not see the same" in run.stderr
    assert "put out_dir on a file system that every node shares" in run.stderr
    assert read_checkpoint(shared / CHECKPOINT_NAME)["progress"]["step"] == 4  # nothing trained
