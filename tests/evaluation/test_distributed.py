"""Evaluation and sampling under ``torchrun``: two CPU processes (gloo, over loopback), on one
launcher or on two "nodes" (the Slurm script's two launchers meeting at a c10d rendezvous on
localhost), give the numbers of one process; a process killed mid-way leaves its progress and
the same command resumes every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from utils import free_port, run_cli, subprocess_env, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]

# densflow's command line, once per group of arguments ("--then" between groups), in one process;
# with "--kill-rank R --at-batch B", rank R kills itself (SIGKILL) when its batch B starts.
COMMANDS = textwrap.dedent("""
    import os, signal, sys
    from densflow.cli import main
    from densflow.evaluation import run

    args = sys.argv[1:]
    if args[0] == "--kill-rank":
        rank, at, args = args[1], int(args[3]), args[4:]
        real, calls = run.batch_bounds, []

        def batch_bounds(*a, **k):
            calls.append(1)
            if os.environ["RANK"] == rank and len(calls) == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)

        run.batch_bounds = batch_bounds
    groups, group = [], []
    for arg in args:
        if arg == "--then":
            groups.append(group)
            group = []
        else:
            group.append(arg)
    for argv in [*groups, group]:
        status = main(argv)
        if status:
            sys.exit(status)
""")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A folder with a tiny 32×32 model (its ActNorm initialised) trained on ``photos``."""
    from densflow import DenseFlow, DenseFlowConfig
    from densflow.io.checkpoint import save_model

    torch.manual_seed(0)
    model = DenseFlow(DenseFlowConfig.tiny(image_size=32))
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        model.train()(x, torch.Generator().manual_seed(0))
    save_model(model.eval(), tmp_path / "m.pt", train_config={"dataset": "photos"})
    (tmp_path / "commands.py").write_text(COMMANDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_one_process_is_a_group_of_one_and_rank_0_reports_progress(caplog, monkeypatch):
    import logging

    from densflow.evaluation.distributed import Group, GroupProgress
    from densflow.utils.distributed import Dist

    group = Group(Dist(), torch.device("cpu"))
    assert (group.max(3), group.sum(4), group.gather("x")) == (3, 4, ["x"])
    clock = iter([0.0, 10.0, 30.0, 40.0, 50.0, 50.0])
    monkeypatch.setattr("densflow.evaluation.distributed.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="densflow"):
        progress = GroupProgress(Dist(), 100, 20, enabled=False, interval_s=15.0)  # at 0 s
        progress.update(40)  # 10 s: too soon for a line
        progress.update(60)  # 30 s: 40 images in 30 s
        progress.update(100)  # 40 s: done, after a line: the last one
        progress.close()
        GroupProgress(Dist(1, 2), 10, 0, enabled=None, interval_s=0.0).update(10)  # not rank 0
    assert [r.getMessage() for r in caplog.records] == [
        "evaluate: 60/100 images (60.0%), 1.33 images/s, 0m30s left",
        "evaluate: 100/100 images (100.0%), 2.00 images/s, 0m00s left",
    ]


# 8 test images in 2 shards of 4, batches of 2: the shapes of one process's batches of 2.
EVAL = ["eval", "m.pt", "--limit", "8", "--batch-size", "2", "--iw-samples", "3",
        "--chunk-size", "2", "--device", "cpu", "--save-interval-s", "0"]  # fmt: skip
SAMPLE = ["sample", "m.pt", "--n-samples", "5", "--nrow", "5", "--seed", "3", "--device", "cpu"]


@pytest.mark.slow
def test_torchrun_eval_is_one_process_eval_and_a_killed_rank_resumes(workdir, capsys):
    assert run_cli([*EVAL, "--out", "one.json"], capsys)[0] == 0
    assert run_cli([*SAMPLE, "--out", "one.png"], capsys)[0] == 0

    # Rank 1 dies (SIGKILL) as its second batch starts; torchrun stops rank 0 (SIGTERM).
    [killed] = torchrun("commands.py", "--kill-rank", "1", "--at-batch", "2",
                        *EVAL, "--out", "two.json", cwd=workdir)  # fmt: skip
    assert killed.returncode != 0 and not (workdir / "two.json").exists()
    assert "the partial file two.json.partial.rank0 lets the same command resume" in killed.stderr
    progress = [torch.load(f"two.json.partial.rank{r}", weights_only=True) for r in (0, 1)]
    assert [p["start"] for p in progress] == [0, 4]
    assert len(progress[1]["iw"]) == 2  # rank 1's first batch, kept before it died
    assert 2 <= len(progress[0]["iw"]) <= 4

    # The same command resumes every rank; rank 0 writes the result of one process.
    [resumed] = torchrun("commands.py", *EVAL, "--out", "two.json", "--progress",
                         "--then", *SAMPLE, "--out", "two.png", cwd=workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one, two = json.loads(Path("one.json").read_text()), json.loads(Path("two.json").read_text())
    assert two == one  # per-image values and means, to the bit
    assert len(two["per_image_iw"]) == 8 and two["n_images"] == 8
    assert resumed.stdout.count('"bpd_iw"') == 1  # the summary, printed by rank 0 alone
    assert resumed.stderr.count("evaluate: 100%") == 1  # one progress bar, rank 0's
    assert Path("two.png").read_bytes() == Path("one.png").read_bytes()
    assert sorted(p.name for p in workdir.iterdir()) == [
        "commands.py",
        "m.pt",
        "one.json",
        "one.png",
        "two.json",
        "two.png",
    ]  # fmt: skip  no progress file left


def test_torchruns_sigterm_cuts_short_neither_the_saving_nor_the_line_of_a_stopping_process(
    workdir, capsys, monkeypatch, escaped_sigterms
):
    """When a process dies, the others' collective breaks and ``torchrun`` sends them SIGTERM:
    whichever comes first, the progress is kept and the line says so. Here the collective breaks
    first and the SIGTERM arrives as the progress is saved, and again as the line is made (each
    ignored); ``escaped_sigterms`` records any SIGTERM that got through."""
    import signal

    from densflow.evaluation import GroupStopped, run
    from densflow.evaluation.partial import ProgressFiles

    real_bounds, batches = run.batch_bounds, []

    def batch_bounds(*args, **kwargs):
        batches.append(1)
        if len(batches) == 3:  # two batches done: the collective after them broke
            raise GroupStopped("another process of this torchrun job stopped (Connection reset)")
        return real_bounds(*args, **kwargs)

    def with_sigterm(real, when):
        def call(*args, **kwargs):
            if when():
                signal.raise_signal(signal.SIGTERM)
            return real(*args, **kwargs)

        return call

    def stopped() -> bool:
        return len(batches) == 3

    monkeypatch.setattr(run, "batch_bounds", batch_bounds)
    monkeypatch.setattr(ProgressFiles, "save", with_sigterm(ProgressFiles.save, stopped))
    monkeypatch.setattr(  # the command line names the file it kept
        ProgressFiles, "path_of", staticmethod(with_sigterm(ProgressFiles.path_of, stopped))
    )
    status, _, err = run_cli([*EVAL, "--out", "r.json"], capsys)
    assert status == 130 and escaped_sigterms == []
    assert err.strip().splitlines()[-1] == (
        "another process of this torchrun job stopped (Connection reset); the partial file "
        "r.json.partial lets the same command resume"
    )
    assert len(torch.load("r.json.partial", weights_only=True)["iw"]) == 4  # both batches kept


# Slurm as the script meets it on a job of two nodes, here two launchers on this machine: srun
# runs its command once per node, scontrol names the nodes.
SRUN = """#!/bin/bash
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || exit 1
for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do echo 127.0.0.1; done
"""


def sbatch(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``examples/slurm/densflow.sbatch args`` in a job of two nodes of one process each."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = subprocess_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
        SLURM_JOB_NODELIST="node[0-1]", SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="7",
        NPROC_PER_NODE="1", RDZV_PORT=str(free_port()),
    )  # fmt: skip
    script = REPO / "examples" / "slurm" / "densflow.sbatch"
    return subprocess.run(["bash", str(script), *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_the_slurm_script_trains_and_evaluates_on_two_nodes_as_one_process(workdir, capsys):
    train = ["train", "--dataset", "photos", "--model", "tiny", "--batch-size", "2",
             "--epochs", "1", "--steps-per-epoch", "3", "--warmup-steps", "2",
             "--eval-every", "0", "--out-dir", "run", "--no-progress"]  # fmt: skip
    job = sbatch(workdir, *train)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count('"checkpoint"') == 1  # one summary, rank 0's
    metrics = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").open()]
    assert metrics[0]["world_size"] == 2 and metrics[-1]["step"] == 3

    checkpoint = str(workdir / "run" / "checkpoint.pt")
    evaluation = [checkpoint if a == "m.pt" else a for a in EVAL]
    job = sbatch(workdir, *evaluation, "--out", "two.json")
    assert job.returncode == 0, job.stderr[-3000:]
    assert run_cli([*evaluation, "--out", "one.json"], capsys)[0] == 0
    assert json.loads(Path("two.json").read_text()) == json.loads(Path("one.json").read_text())


REPRODUCE = textwrap.dedent("""
    import os, sys, torch
    from densflow import reproduce

    out_dir, checkpoint = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    run = reproduce.reproduce("photos", data_dir=None, out_dir=out_dir, preset="smoke",
                              checkpoint=checkpoint, epochs=1, steps_per_epoch=2, batch_size=2,
                              iw_samples=2, eval_limit=8)
    torch.save({"single": run.test.per_image_single, "iw": run.test.per_image_iw},
               os.path.join(out_dir, f"rank{os.environ.get('RANK', 0)}.pt"))
""")


@pytest.mark.slow
def test_reproduce_under_torchrun_trains_evaluates_and_samples_as_one_process(tmp_path):
    (tmp_path / "reproduce.py").write_text(REPRODUCE)
    [job] = torchrun("reproduce.py", "two", cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    two = tmp_path / "two"
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for key in ("single", "iw"):  # every rank returns the whole result
        assert (ranks[0][key] == ranks[1][key]).all() and len(ranks[0][key]) == 8
    results = json.loads((two / "results.json").read_text())
    assert results["train"]["completed"] and results["config"]["batch_size"] == 2

    # The trained model, evaluated and sampled by one process: the same numbers and pixels.
    one = tmp_path / "one"
    done = subprocess.run([sys.executable, "reproduce.py", str(one), str(two / "checkpoint.pt")],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads((one / "results.json").read_text())
    assert alone["test"] == results["test"]
    assert (one / "samples.png").read_bytes() == (two / "samples.png").read_bytes()
