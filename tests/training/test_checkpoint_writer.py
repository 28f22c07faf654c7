"""The background checkpoint writer: the file is the synchronous write's, byte for byte, from a
copy that later updates do not touch; a failed write is raised once, as the synchronous error,
and keeps the previous file; the Trainer waits for the write in flight before it returns, stops
or names its last good checkpoint; a process killed mid-write leaves the previous checkpoint."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset
from utils import assert_same_training_state, perturb, temporaries, tiny_run

from densflow import DenseFlow, DenseFlowConfig
from densflow.io.checkpoint import read_checkpoint
from densflow.io.files import WriteError
from densflow.io.locks import STAGING_NAME
from densflow.training import (
    CHECKPOINT_NAME,
    Trainer,
    TrainingDivergedError,
    checkpoint_writer,
    read_metrics,
)
from densflow.training.checkpoint_writer import CheckpointWriter
from densflow.training.rundir import RunFolderLock
from densflow.training.state import TrainingState, save_training_checkpoint, training_checkpoint

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(channels_last: bool = False) -> tuple[DenseFlow, torch.optim.Optimizer]:
    """The tiny model after two Adamax updates from drawn gradients: every optimizer entry
    filled."""
    model = perturb(DenseFlow(DenseFlowConfig.tiny(16)))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3, foreach=True)
    update(model, optimizer, seed=0)
    update(model, optimizer, seed=1)
    return model, optimizer


def update(model: DenseFlow, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p.device)
    optimizer.step()


def state(step: int) -> TrainingState:
    return TrainingState(step, 0, step, 0, torch.tensor(1.25, dtype=torch.float64), step, 77, 1)


def checkpoint_of(model, optimizer, step: int, progress: TrainingState | None = None) -> dict:
    return training_checkpoint(
        model, train_config={"lr": 1e-3}, optimizer=optimizer.state_dict(),
        state=progress or state(step),
    )  # fmt: skip


def write_synchronously(path: Path, model, optimizer, step: int) -> None:
    save_training_checkpoint(path, model, train_config={"lr": 1e-3},
                             optimizer=optimizer.state_dict(), state=state(step))  # fmt: skip


class Gate:
    """Holds the background write of ``step`` (of every step when None), before its first byte,
    until :meth:`open`; ``entered`` is set when a write is held."""

    def __init__(self, monkeypatch, step: int | None = None) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        real = checkpoint_writer.atomic_save

        def held(obj, path, **kwargs):
            if step is None or obj["progress"]["step"] == step:
                self.entered.set()
                assert self.opened.wait(60), "the gate was never opened"
            real(obj, path, **kwargs)

        monkeypatch.setattr(checkpoint_writer, "atomic_save", held)

    def open(self, after_s: float = 0.0) -> None:
        threading.Timer(after_s, self.opened.set).start()


def slow_writes(monkeypatch, seconds: float = 0.5) -> None:
    """Each background write starts ``seconds`` late: a caller that does not wait for it finds
    no file."""
    real = checkpoint_writer.atomic_save

    def slow(obj, path, **kwargs):
        time.sleep(seconds)
        real(obj, path, **kwargs)

    monkeypatch.setattr(checkpoint_writer, "atomic_save", slow)


# ----------------------------------------------------------------------------- the writer


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_background_file_is_the_synchronous_one_byte_for_byte(tmp_path, channels_last):
    model, optimizer = trained(channels_last)
    writer = CheckpointWriter()
    files = []
    for step in (2, 3):  # the second save reuses the first one's host buffers
        sync, background = tmp_path / f"sync{step}.pt", tmp_path / f"background{step}.pt"
        write_synchronously(sync, model, optimizer, step)
        writer.save(background, step, checkpoint_of(model, optimizer, step))
        writer.wait()
        assert background.read_bytes() == sync.read_bytes()
        files.append(sync.read_bytes())
        update(model, optimizer, seed=step)
    assert files[0] != files[1]
    ckpt = read_checkpoint(tmp_path / "background3.pt")
    assert ckpt["model"]._metadata == model.state_dict()._metadata  # module versions kept
    weight = next(t for t in ckpt["model"].values() if t.dim() == 4 and min(t.shape[1:]) > 1)
    assert weight.is_contiguous() != channels_last  # the layout is the model's


def test_the_copy_is_not_touched_by_the_updates_that_follow(tmp_path, monkeypatch):
    model, optimizer = trained()
    progress = state(2)
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_optimizer = {
        i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()
    }
    gate = Gate(monkeypatch)
    writer = CheckpointWriter()
    path = tmp_path / CHECKPOINT_NAME
    writer.save(path, 2, checkpoint_of(model, optimizer, 2, progress))
    assert gate.entered.wait(60)
    update(model, optimizer, seed=5)  # in place, while the write is held
    with torch.no_grad():  # and the buffers (BatchNorm statistics) too
        for buffer in model.buffers():
            buffer.add_(1)
    progress.epoch_sum += 1.0  # the trainer's running sum is updated in place too
    for name, v in model.state_dict().items():
        assert not torch.equal(v, expected_model[name]), name  # really changed
    gate.open()
    writer.wait()
    ckpt = read_checkpoint(path)
    assert_same_training_state(
        ckpt["model"], ckpt["optimizer"]["state"], expected_model, expected_optimizer
    )
    assert ckpt["progress"]["epoch_sum"].item() == 1.25


def test_a_failed_write_is_raised_once_as_the_synchronous_error_and_keeps_the_file(
    tmp_path, monkeypatch
):
    model, optimizer = trained()
    path = tmp_path / CHECKPOINT_NAME
    writer = CheckpointWriter()
    writer.save(path, 2, checkpoint_of(model, optimizer, 2))
    writer.wait()
    good = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError) as synchronous:
        write_synchronously(path, model, optimizer, 3)
    writer.save(path, 3, checkpoint_of(model, optimizer, 3))  # fails in the background
    with pytest.raises(WriteError) as background:
        writer.save(path, 4, checkpoint_of(model, optimizer, 4))  # raised here, nothing started
    assert str(background.value) == str(synchronous.value)
    assert str(background.value).startswith(f"cannot write {path}: No space left on device; ")
    assert background.value.errno == errno.ENOSPC
    assert path.read_bytes() == good and temporaries(path.parent) == []
    writer.wait()  # reported once
    assert writer.submitted == (path, 3)

    writer.save(path, 5, checkpoint_of(model, optimizer, 5))
    assert (
        writer.settle() == "the checkpoint of step 5 could not be written (No space left on device)"
    )
    writer.wait()  # settle reported it
    monkeypatch.undo()
    writer.save(path, 6, checkpoint_of(model, optimizer, 6))
    writer.wait()
    assert read_checkpoint(path)["progress"]["step"] == 6


def test_a_non_finite_copy_is_refused_in_the_training_thread(tmp_path):
    model, optimizer = trained()
    path = tmp_path / CHECKPOINT_NAME
    with torch.no_grad():
        next(model.parameters())[0] = math.nan
    writer = CheckpointWriter()
    with pytest.raises(Exception, match=r"refusing to write .*: non-finite values in \S+;"):
        writer.save(path, 2, checkpoint_of(model, optimizer, 2))
    writer.wait()
    assert not path.exists() and writer.submitted is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_state_is_copied_to_pinned_memory_before_save_returns(tmp_path):
    torch.manual_seed(0)
    model = perturb(DenseFlow(DenseFlowConfig.tiny(16))).cuda()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3, foreach=True)
    update(model, optimizer, seed=0)
    sync, background = tmp_path / "sync.pt", tmp_path / "background.pt"
    write_synchronously(sync, model, optimizer, 1)
    writer = CheckpointWriter()
    writer.save(background, 1, checkpoint_of(model, optimizer, 1))
    update(model, optimizer, seed=1)  # at once: the file must still hold the state of step 1
    writer.wait()
    a, b = read_checkpoint(sync), read_checkpoint(background)
    assert_same_training_state(
        a["model"], a["optimizer"]["state"], b["model"], b["optimizer"]["state"]
    )
    assert all(torch.equal(x, y) for x, y in zip(a["rng"]["cuda"], b["rng"]["cuda"], strict=True))
    name = next(iter(dict(model.named_parameters())))
    assert writer._buffers[("model", name)].is_pinned()


# ----------------------------------------------------------------------------- in the Trainer

SETS = (
    TensorDataset(torch.randint(0, 256, (24, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8)),
    TensorDataset(torch.zeros(8, 3, 16, 16, dtype=torch.uint8)),
)  # fmt: skip


def trainer(out_dir: Path, **overrides) -> Trainer:
    cfg = tiny_run(out_dir, **{"checkpoint_every": 2, **overrides})
    return Trainer(cfg, train_set=SETS[0], test_set=SETS[1])


def assert_unlocked(folder: Path) -> None:
    """No run holds the run folder's lock any more."""
    with RunFolderLock(folder):
        pass


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "densflow-checkpoint"]


def test_fit_returns_with_its_last_checkpoint_in_place(tmp_path, monkeypatch, caplog):
    slow_writes(monkeypatch)
    t = trainer(tmp_path, max_steps=3)
    with caplog.at_level(logging.INFO, logger="densflow"):
        result = t.fit()
    assert result.step == 3
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["progress"]["step"] == 3
    assert temporaries(tmp_path) == [] and writer_threads() == []
    assert_unlocked(tmp_path)  # the lock went after the write
    logged = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert logged == [f"step {s}  checkpoint {tmp_path / CHECKPOINT_NAME}" for s in (2, 3)]
    assert t._guard.last_checkpoint == (tmp_path / CHECKPOINT_NAME, 3)


def disk_full_at_write(monkeypatch, n: int) -> None:
    """The ``n``-th fsync of a file (the ``n``-th checkpoint write) finds the disk full."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.extend([fd] if stat.S_ISREG(os.fstat(fd).st_mode) else [])  # not the folder's
        if len(calls) == n and stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("write_fails", [False, True])
def test_divergence_waits_for_the_write_in_flight_before_naming_the_last_good_one(
    tmp_path, monkeypatch, write_fails
):
    gate = Gate(monkeypatch, step=6)  # the epoch end's write is held until the guard asks
    if write_fails:
        disk_full_at_write(monkeypatch, 3)  # the writes of steps 2 and 4 succeed
    t = trainer(tmp_path, max_nonfinite=2)
    real_log_prob, settle = t.model.log_prob, t._guard.settle

    def log_prob(x, generator=None, **kwargs):  # the losses of steps 8 and 9 are NaN
        out = real_log_prob(x, generator, **kwargs)
        return out * math.nan if t.model.training and t.step + 1 in (8, 9) else out

    def asked():
        assert gate.entered.wait(60) and writer_threads()  # step 6 still in flight
        gate.open(after_s=0.3)  # so the guard must wait for it
        return settle()

    t.model.log_prob, t._guard.settle = log_prob, asked
    path = tmp_path / CHECKPOINT_NAME
    # step 7's loss was finite: step 6's checkpoint is a good one (step 8's save is skipped)
    with pytest.raises(TrainingDivergedError, match="at step 9: 2 non-finite") as diverged:
        t.fit()
    message = str(diverged.value)
    if write_fails:
        assert (
            "the checkpoint of step 6 could not be written (No space left on device); the last "
            f"good checkpoint is {path} (step 4), left as it was" in message
        )
        assert read_checkpoint(path)["progress"]["step"] == 4
    else:
        assert f"; the last good checkpoint is {path} (step 6), left as it was" in message
        assert read_checkpoint(path)["progress"]["step"] == 6
    assert temporaries(path.parent) == [] and writer_threads() == []
    assert read_metrics(tmp_path)[-1]["event"] == "diverged"


@pytest.mark.parametrize("write_fails", [False, True])
def test_an_interrupt_waits_for_the_write_in_flight(tmp_path, monkeypatch, caplog, write_fails):
    slow_writes(monkeypatch)
    if write_fails:
        disk_full_at_write(monkeypatch, 2)
    t = trainer(tmp_path, max_steps=6)
    account = t._account

    def interrupted_at_step_5(loss):  # Ctrl-C while the checkpoint of step 4 is written
        account(loss)
        if t.step == 5:
            raise KeyboardInterrupt

    t._account = interrupted_at_step_5
    path = tmp_path / CHECKPOINT_NAME
    with caplog.at_level(logging.ERROR, logger="densflow"):
        with pytest.raises(KeyboardInterrupt) as interrupt:  # not replaced by a write error
            t.fit()
    assert writer_threads() == [] and temporaries(path.parent) == []
    assert_unlocked(tmp_path)
    clause = "the checkpoint of step 4 could not be written (No space left on device)"
    if write_fails:
        assert read_checkpoint(path)["progress"]["step"] == 2
        assert getattr(interrupt.value, "__notes__", []) == [clause]
        assert [r.getMessage() for r in caplog.records] == [clause]
    else:
        assert read_checkpoint(path)["progress"]["step"] == 4
        assert not hasattr(interrupt.value, "__notes__") and caplog.records == []


# ----------------------------------------------------------------------------- a killed process

KILLED_MID_WRITE = """
import json, sys, threading, torch
from densflow.training import TrainConfig, Trainer
real_save, calls = torch.save, []

def save(obj, f, *args, **kwargs):  # the second write stops halfway, for good
    calls.append(1)
    if len(calls) == 1:
        return real_save(obj, f, *args, **kwargs)
    f.write(b"half a checkpoint")
    f.flush()
    threading.Event().wait()

torch.save = save
Trainer(TrainConfig.from_dict(json.loads(sys.argv[1]))).fit()
"""


def logged(out_dir: Path) -> list[tuple]:
    drop = {"time", "images_per_s", "elapsed_s", "config", "resumed"}
    return [
        tuple(sorted((k, v) for k, v in e.items() if k not in drop))
        for e in read_metrics(out_dir)
        if e["event"] not in ("start", "end")
    ]


@pytest.mark.slow
def test_a_process_killed_during_a_background_write_resumes_exactly(tmp_path):
    settings = dict(image_size=32, checkpoint_every=2, max_steps=6)  # the photos are 32×32
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cfg = tiny_run(killed, **settings)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_WRITE, json.dumps(cfg.to_dict())], env=env
    )

    def killable() -> bool:  # step 4's write is half done and training went on to step 6
        half = [p.read_bytes() for p in (killed / STAGING_NAME).glob("*.tmp")]
        six = any(e["event"] == "train" and e["step"] == 6 for e in read_metrics(killed))
        return six and half == [b"half a checkpoint"]

    try:
        deadline = time.monotonic() + 240
        while not killable():
            assert process.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "the run never reached step 6 mid-write"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert read_checkpoint(killed / CHECKPOINT_NAME)["progress"]["step"] == 2  # the previous one

    resumed = Trainer(cfg)  # takes the lock, removes the temporary
    assert resumed.step == 2 and temporaries(killed) == []
    resumed.fit()
    reference = Trainer(tiny_run(tmp_path / "reference", **settings))
    reference.fit()
    assert_same_training_state(
        reference.model.state_dict(), reference.optimizer.state_dict()["state"],
        resumed.model.state_dict(), resumed.optimizer.state_dict()["state"],
    )  # fmt: skip
    assert logged(killed) == logged(tmp_path / "reference")  # steps 3-6 not logged twice
