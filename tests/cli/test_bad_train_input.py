"""Bad input to training never costs work: every setting a user can get wrong is refused before
any work with one line (exit code 2, no traceback, no file touched), no checkpoint ever holds a
non-finite tensor, and one run at a time writes to a run folder."""

from __future__ import annotations

import errno
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset
from utils import assert_one_line, run_cli, snapshot, temporaries, tiny_run

from densflow import DenseFlow, DenseFlowConfig
from densflow.cli import build_parser
from densflow.io import load
from densflow.io.checkpoint import CheckpointError, read_checkpoint
from densflow.io.locks import MARKER_NAME, STAGING_NAME
from densflow.training import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    TrainingSetupError,
    read_metrics,
)
from densflow.training.rundir import LOCK_NAME
from densflow.training.state import TrainingState, save_training_checkpoint

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")

# A few seconds of the tiny model on the built-in photos.
SMOKE = ["train", "--preset", "smoke", "--max-steps", "2", "--no-progress"]


def assert_refused(argv: list[str], pattern: str, capsys, root: Path) -> str:
    """Exit code 2, one ``error:`` line matching ``pattern`` and nothing else, nothing written."""
    before = snapshot(root)
    code, out, err = run_cli(argv, capsys)
    assert code == 2, err
    assert out == ""
    assert_one_line(err, pattern)
    assert snapshot(root) == before
    return err.strip()


# ----------------------------------------------------------------------------- the table

# (extra argv, the error line): each is refused before any work. "{out}" is the run folder.
ROWS = {
    "lr inf": (
        ["--lr", "inf"],
        r"lr must be a finite number > 0\.0 and <= 10\.0, got inf; set --lr",
    ),
    "lr nan": (["--lr", "nan"], r"lr must be a finite number > 0\.0 .*, got nan; set --lr"),
    "lr negative": (["--lr", "-0.001"], r"lr must be a finite number > 0\.0 .*, got -0\.001"),
    "lr absurd": (["--lr", "1e30"], r"lr must be .* <= 10\.0, got 1e\+30; set --lr \(TrainConfig"),
    "finetune lr nan": (["--finetune-lr", "nan"], r"finetune_lr must be a finite .* --finetune-lr"),
    "grad clip nan": (
        ["--grad-clip", "nan"],
        r"grad_clip must be a finite number > 0\.0 .*got nan",
    ),
    "grad clip 0": (["--grad-clip", "0"], r"grad_clip must be a finite number > 0\.0 .*got 0\.0"),
    "gamma 0": (["--gamma", "0"], r"gamma must be a finite number > 0\.0 and <= 1\.0, got 0\.0"),
    "gamma above 1": (["--gamma", "1.5"], r"gamma must be .* <= 1\.0, got 1\.5; set --gamma"),
    "gamma inf": (["--gamma", "inf"], r"gamma must be a finite number"),
    "warmup negative": (["--warmup-steps", "-1"], r"warmup_steps must be an integer in \[0, .*-1"),
    "batch size 0": (
        ["--batch-size", "0"],
        r"batch_size must be an integer in \[1, 65536\], got 0",
    ),
    "batch size 2**20": (["--batch-size", str(2**20)], r"batch_size must be .*; set --batch-size"),
    "no epochs": (["--epochs", "0", "--finetune-epochs", "0"], r"epochs \+ finetune_epochs must"),
    "epochs 1e12": (["--epochs", str(10**12)], r"epochs must be an integer in \[0, 1000000\]"),
    "eval every negative": (["--eval-every", "-1"], r"eval_every must be an integer in \[0, "),
    "checkpoint every negative": (["--checkpoint-every", "-1"], r"checkpoint_every must be an in"),
    "log every 0": (["--log-every", "0"], r"log_every must be an integer in \[1, \d+\], got 0"),
    "max steps 0": (["--max-steps", "0"], r"max_steps must be an integer in \[1, \d+\], got 0"),
    "steps per epoch 0": (["--steps-per-epoch", "0"], r"steps_per_epoch must be an integer in"),
    "eval limit negative": (["--eval-limit", "-5"], r"eval_limit must be an integer in \[1, "),
    "iw samples 0": (["--iw-samples", "0"], r"iw_samples must be an integer in \[1, 1048576\]"),
    "iw samples 1e9": (["--iw-samples", str(10**9)], r"iw_samples must be .*; set --iw-samples"),
    "chunk size 0": (["--chunk-size", "0"], r"chunk_size must be an integer in \[1, 65536\]"),
    "max nonfinite 0": (["--max-nonfinite", "0"], r"max_nonfinite must be an integer in \[1, "),
    "workers negative": (["--num-workers", "-2"], r"num_workers must be an integer in \[0, 1024\]"),
    "image size 0": (["--image-size", "0"], r"image_size must be an integer in \[1, 1024\]"),
    "image size 2**20": (["--image-size", str(2**20)], r"image_size must be .*set --image-size"),
    "seed -1": (
        ["--seed", "-1"],
        r"^error: seed must be an integer in \[0, \d+\], got -1; set --seed",
    ),
    "seed 2**64": (["--seed", str(2**64)], rf"seed must be .*, got {2**64}; set --seed"),
    "model width 1e7": (
        ["--model-config", '{"image_size": 32, "mid_channels": [10000000, 8, 8]}'],
        r"mid_channels\[0\] must be an integer in \[1, 4096\], got 10000000; set DenseFlowConfig",
    ),
    "model depth 1e6": (
        ["--model-config", '{"image_size": 32, "coupling_dense_depth": 1000000}'],
        r"coupling_dense_depth must be an integer in \[1, 256\], got 1000000",
    ),
    "model config deeply nested": (
        ["--model-config", "{tmp}/deep.json"],
        r"--model-config: .*deep\.json is nested too deeply to be a DenseFlowConfig",
    ),
    "model config is a FIFO": (
        ["--model-config", "{tmp}/fifo.json"],
        r"--model-config: .*fifo\.json is not a regular file",
    ),
    "unknown device": (["--device", "gpu"], r"device must be 'auto', 'cpu', 'cuda'.*got 'gpu'"),
    "batch larger than the data": (
        ["--batch-size", "10000"],
        r"^error: batch_size 10000 is larger than the \d+ training images of photos; set "
        r"--batch-size \(batch_size\) to at most \d+$",
    ),
    "init from nothing": (
        ["--init-from", "{tmp}/nothing.pt"],
        r"^error: .*nothing\.pt: no such file or folder$",
    ),
    "out dir is a file": (
        ["--out-dir", "{tmp}/a_file"],
        r"^error: the run folder .*a_file is a file; choose another --out-dir",
    ),
    "out dir below a file": (
        ["--out-dir", "{tmp}/a_file/run"],
        r"^error: cannot create the run folder .*a_file/run: Not a directory; choose a writable",
    ),
}


@pytest.mark.parametrize("extra, pattern", list(ROWS.values()), ids=list(ROWS))
def test_bad_settings_are_refused_before_any_work(extra, pattern, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(tmp_path / "fifo.json")  # nobody writes it: reading it would wait for ever
    out = tmp_path / "run"
    argv = [*SMOKE, "--out-dir", str(out), *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    assert_refused(argv, pattern, capsys, tmp_path)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_refused(tmp_path, capsys):
    line = assert_refused(
        [*SMOKE, "--out-dir", str(tmp_path / "run"), "--device", "cuda"],
        r"^error: device 'cuda' asked for, but CUDA is not available on this machine; use "
        r"--device cpu",
        capsys,
        tmp_path,
    )
    assert line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_out_dir_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert_refused(
            [*SMOKE, "--out-dir", str(folder)],
            r"^error: cannot write to the run folder .*read_only: Permission denied",
            capsys,
            tmp_path,
        )
    finally:
        folder.chmod(0o755)


def test_the_python_api_refuses_the_same_settings():
    for name, value in [("lr", math.nan), ("lr", math.inf), ("finetune_lr", math.nan),
                        ("grad_clip", -math.inf), ("gamma", 0.0), ("batch_size", 2.5),
                        ("epochs", True), ("max_steps", 0), ("warmup_steps", -1)]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"^{name} must be .*got {value!r}; set --"):
            TrainConfig(**{name: value})
    with pytest.raises(ValueError, match=r"device must be .*got 'gpu'"):
        TrainConfig(device="gpu")
    # booleans from strings (a notebook's resume="no") are refused, not taken as true
    for name, value in [("resume", "no"), ("augmentation", "False"), ("progress", 1)]:
        with pytest.raises(ValueError, match=rf"^{name} must be True or False, got {value!r}"):
            TrainConfig(**{name: value})
    # Values that mean something are kept: 0 is "never" or "only at epoch ends" for these.
    cfg = TrainConfig(checkpoint_every=0, eval_every=0, warmup_steps=0, gamma=1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------- tiny runs

SETS = (
    TensorDataset(torch.randint(0, 256, (24, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8)),
    TensorDataset(torch.zeros(8, 3, 16, 16, dtype=torch.uint8)),
)  # fmt: skip


def config(out_dir, **overrides) -> TrainConfig:
    return tiny_run(out_dir, **{"checkpoint_every": 2, **overrides})


def trainer(cfg: TrainConfig) -> Trainer:
    return Trainer(cfg, train_set=SETS[0], test_set=SETS[1])


def poison_update_at(t: Trainer, step: int) -> None:
    """The optimizer update of ``step`` (1-based) makes one parameter NaN from a finite loss and
    gradient, as an overflow would."""
    real = t.optimizer.step

    def optimizer_step(*args, **kwargs):
        out = real(*args, **kwargs)
        if t.step + 1 == step:
            next(t.model.parameters()).data.view(-1)[0] = math.nan
        return out

    t.optimizer.step = optimizer_step


def assert_finite_checkpoint(path: Path, step: int) -> None:
    assert read_checkpoint(path)["progress"]["step"] == step
    assert all(torch.isfinite(v).all() for v in load(path).state_dict().values())


def test_an_update_that_makes_parameters_non_finite_stops_before_any_save(tmp_path):
    t = trainer(config(tmp_path))
    poison_update_at(t, 3)
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(
        TrainingDivergedError,
        match=rf"at step 3: its update made parameters non-finite .*; the last good checkpoint is "
        rf"{re.escape(str(path))} \(step 2\), left as it was\. Start a new run from its weights "
        rf"with a lower --lr.*--init-from {re.escape(str(path))} --out-dir NEW_DIR",
    ):
        t.fit()
    assert_finite_checkpoint(path, 2)
    assert read_metrics(tmp_path)[-1] == {**read_metrics(tmp_path)[-1], "event": "diverged"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, CHECKPOINT_NAME, METRICS_NAME]
    # The lock went with the run: the next one starts (and resumes from the good step 2).
    again = trainer(config(tmp_path, max_steps=3))
    assert again.step == 2
    again.fit()


def test_a_non_finite_update_right_before_a_save_writes_no_checkpoint(tmp_path):
    t = trainer(config(tmp_path))
    poison_update_at(t, 2)  # step 2 is a checkpoint step: the check before the save stops it
    with pytest.raises(TrainingDivergedError, match=r"at step 2: .*no checkpoint had been written"):
        t.fit()
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_save_training_checkpoint_refuses_non_finite_tensors(tmp_path):
    model = DenseFlow(DenseFlowConfig.tiny(16))
    path = tmp_path / CHECKPOINT_NAME
    state = TrainingState(1, 0, 1, 0, torch.zeros((), dtype=torch.float64), 1, 0, 1)
    save_training_checkpoint(path, model, train_config={}, optimizer={}, state=state)
    good = path.read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = math.inf
    with pytest.raises(CheckpointError, match=r"refusing to write .*: non-finite values in \S+;"):
        save_training_checkpoint(path, model, train_config={}, optimizer={}, state=state)
    assert path.read_bytes() == good and temporaries(tmp_path) == []


@pytest.mark.slow
def test_divergence_names_a_finite_checkpoint_and_init_from_starts_a_new_run(tmp_path, capsys):
    first = tmp_path / "first"
    t = trainer(config(first, max_nonfinite=2))
    real = t.model.log_prob

    def log_prob(x, generator=None, **kwargs):  # the loss of steps 4 and 5 is NaN
        out = real(x, generator, **kwargs)
        return out * math.nan if t.model.training and t.step + 1 in (4, 5) else out

    t.model.log_prob = log_prob
    good = first / CHECKPOINT_NAME
    with pytest.raises(TrainingDivergedError) as diverged:
        t.fit()
    # step 2's model had a finite loss at step 3; step 4's save was skipped (its loss was NaN)
    assert f"the last good checkpoint is {good} (step 2)" in str(diverged.value)
    assert f"--init-from {good} --out-dir NEW_DIR" in str(diverged.value)
    assert_finite_checkpoint(good, 2)

    # resuming refuses a lower lr; a new run from its weights takes it
    with pytest.raises(CheckpointError, match="lr: 0.001 in the checkpoint, 0.0005 now"):
        trainer(config(first, lr=5e-4))
    second = trainer(config(tmp_path / "second", lr=5e-4, init_from=str(good)))
    weights = load(good).state_dict()
    for name, x in second.model.state_dict().items():
        assert torch.equal(x, weights[name]), name
    assert second.step == 0 and second.optimizer.state_dict()["state"] == {}
    second.fit()
    assert_finite_checkpoint(tmp_path / "second" / CHECKPOINT_NAME, 12)

    # the command line has no --resume-from: resuming is the same command on the same --out-dir
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--resume-from", str(good)])
    capsys.readouterr()


def nan_loss_from(t: Trainer, step: int) -> None:
    """The loss of every training step from ``step`` (1-based) on is NaN, as after an update of
    ``lr=1e30`` that leaves finite but useless weights."""
    real = t.model.log_prob

    def log_prob(x, generator=None, **kwargs):
        out = real(x, generator, **kwargs)
        return out * math.nan if t.model.training and t.step + 1 >= step else out

    t.model.log_prob = log_prob


def test_a_checkpoint_whose_next_loss_is_nan_is_not_called_good(tmp_path):
    t = trainer(config(tmp_path, max_nonfinite=3))
    nan_loss_from(t, 3)  # the checkpoint of step 2 is written; its model's loss is NaN
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(TrainingDivergedError) as diverged:
        t.fit()
    message = str(diverged.value)
    assert "the last good checkpoint" not in message and "--init-from" not in message
    assert (
        f"the last checkpoint, {path} (step 2), is no good one: the loss of its model was already "
        "non-finite (step 3), and no earlier one is left. Start again in a new --out-dir"
    ) in message
    assert read_checkpoint(path)["progress"]["step"] == 2  # step 4's save was skipped


def test_no_checkpoint_is_written_while_the_loss_is_nan_and_the_good_one_stays(tmp_path):
    t = trainer(config(tmp_path, max_nonfinite=4))
    nan_loss_from(t, 4)  # step 2's model had a finite loss at step 3: a good checkpoint
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(TrainingDivergedError, match=rf"the last good checkpoint is "
                       rf"{re.escape(str(path))} \(step 2\), left as it was"):  # fmt: skip
        t.fit()
    assert_finite_checkpoint(path, 2)  # the saves of steps 4 and 6 were skipped


def test_init_from_refuses_another_model_and_non_finite_weights(tmp_path):
    other = tmp_path / "other.pt"
    model = DenseFlow(DenseFlowConfig.tiny(32))
    state = TrainingState(1, 0, 1, 0, torch.zeros((), dtype=torch.float64), 1, 0, 1)
    save_training_checkpoint(other, model, train_config={}, optimizer={}, state=state)
    with pytest.raises(CheckpointError, match=r"holds another model \(image_size: 32 there, 16 "):
        trainer(config(tmp_path / "run", init_from=str(other)))
    nan = tmp_path / "nan.pt"
    save_training_checkpoint(nan, DenseFlow(DenseFlowConfig.tiny(16)), train_config={},
                             optimizer={}, state=state)  # fmt: skip
    ckpt = read_checkpoint(nan)
    ckpt["model"][next(iter(ckpt["model"]))].fill_(math.nan)  # as an earlier version could write
    torch.save(ckpt, nan)
    with pytest.raises(CheckpointError, match=r"holds non-finite weights .*choose an earlier"):
        trainer(config(tmp_path / "run", init_from=str(nan)))
    assert not (tmp_path / "run").exists()  # refused at set-up: no trace


def test_init_from_takes_any_model_spec(tmp_path, monkeypatch):
    from densflow.io.pretrained import CACHE_ENV, save_pretrained

    torch.manual_seed(1)
    start = DenseFlow(DenseFlowConfig.tiny(16))
    save_pretrained(start, tmp_path / "cache" / "models" / "mine")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    for spec in ("mine", str(tmp_path / "cache" / "models" / "mine")):  # a name, a folder
        t = trainer(config(tmp_path / f"run_{len(spec)}", init_from=spec))
        for name, x in start.state_dict().items():
            assert torch.equal(t.model.state_dict()[name], x), name
        t._lock.release()


# ----------------------------------------------------------------------------- the run folder

HOLD = """
import sys
from densflow.training.rundir import RunFolderLock
lock = RunFolderLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_holder_frees_the_folder(tmp_path, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=env, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_refused(
            [*SMOKE, "--out-dir", str(run)],
            rf"^error: another densflow run \(pid {holder.pid}\) is writing to "
            rf"{re.escape(str(run))}; wait for it or choose another --out-dir$",
            capsys,
            tmp_path,
        )
    finally:
        holder.kill()  # as a crash would: no clean-up runs in the holder
        holder.wait(timeout=60)
    assert (run / LOCK_NAME).exists()  # left behind by the killed holder, and no obstacle
    code, out, err = run_cli([*SMOKE, "--out-dir", str(run)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, CHECKPOINT_NAME, METRICS_NAME]


def test_one_trainer_per_folder_in_one_process_too(tmp_path):
    first = trainer(config(tmp_path, max_steps=2))
    with pytest.raises(TrainingSetupError, match=rf"another densflow run \(pid {os.getpid()}\)"):
        trainer(config(tmp_path, max_steps=2))
    first.fit()  # the refused one changed nothing
    assert [e["event"] for e in read_metrics(tmp_path)] == ["start", "train", "train", "end"]
    trainer(config(tmp_path, max_steps=3)).fit()  # released at the end of fit


def test_stale_temporaries_of_this_run_are_removed_at_start(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    staging = run / STAGING_NAME
    staging.mkdir(parents=True)
    other.mkdir()
    (staging / MARKER_NAME).write_text("made by densflow")
    stale = staging / f".{CHECKPOINT_NAME}.k1ll3d_.tmp"  # what a save killed mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    kept = [run / f".{CHECKPOINT_NAME}.k1ll3d_.tmp", run / "notes.tmp", other / stale.name]
    for path in kept:  # a user's files, named like temporaries but outside the staging folder
        path.write_bytes(b"not ours")
    code, out, err = run_cli([*SMOKE, "--out-dir", str(run)], capsys)
    assert code == 0, err
    assert "removed 1 temporary file(s) of an interrupted save" in err
    assert not staging.exists() and all(p.read_bytes() == b"not ours" for p in kept)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    code, _, err = run_cli([*SMOKE, "--out-dir", str(run)], capsys)
    assert code == 0, err
    path = run / CHECKPOINT_NAME
    good = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith(METRICS_NAME)}
    code, out, err = run_cli([*SMOKE[:-3], "--max-steps", "4", "--no-progress", "--out-dir",
                              str(run)], capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [
        f"error: cannot write {path}: No space left on device; {path} is left as it was. To "
        "fix: free disk space, then run the same command again"
    ]
    assert path.read_bytes() == good and temporaries(run) == []
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith(METRICS_NAME)}
    assert after == before  # only the log grew (its lines past the checkpoint are cut on resume)


def test_the_lock_folder_check_happens_before_the_data_is_read(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the run folder was checked")

    monkeypatch.setattr("densflow.data.load_dataset", no_data)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingSetupError, match="is a file"):
        Trainer(config(tmp_path / "file"))
