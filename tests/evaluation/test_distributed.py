"""Evaluation and sampling under ``torchrun``: two CPU processes (gloo, over loopback), on one
launcher or on two "nodes" (two launchers meeting at a c10d rendezvous on localhost), give the
numbers of one process; a process killed mid-way leaves its progress and the same command
resumes every process."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from utils import run_cli, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

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


# 8 test images in 2 shards of 4, batches of 2: the shapes of one process's batches of 2.
EVAL = ["eval", "m.pt", "--limit", "8", "--batch-size", "2", "--iw-samples", "3",
        "--chunk-size", "2", "--device", "cpu", "--save-interval-s", "0"]  # fmt: skip
SAMPLE = ["sample", "m.pt", "--n-samples", "5", "--nrow", "5", "--seed", "3", "--device", "cpu"]


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


def test_two_launchers_one_node_each_train_then_evaluate_and_sample_as_one_process(workdir, capsys):
    train = ["-m", "densflow", "train", "--dataset", "photos", "--model", "tiny",
             "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "3", "--warmup-steps",
             "2", "--eval-every", "0", "--out-dir", "run", "--no-progress"]  # fmt: skip
    nodes = torchrun(*train, nodes=2, cwd=workdir)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:]
    checkpoint = workdir / "run" / "checkpoint.pt"
    metrics = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").open()]
    assert metrics[0]["world_size"] == 2 and metrics[-1]["step"] == 3

    ckpt_eval = [str(checkpoint) if a == "m.pt" else a for a in EVAL]
    ckpt_sample = [str(checkpoint) if a == "m.pt" else a for a in SAMPLE]
    nodes = torchrun("commands.py", *ckpt_eval, "--out", "two.json", "--then",
                     *ckpt_sample, "--out", "two.png", nodes=2, cwd=workdir)  # fmt: skip
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:]
    assert run_cli([*ckpt_eval, "--out", "one.json"], capsys)[0] == 0
    assert run_cli([*ckpt_sample, "--out", "one.png"], capsys)[0] == 0
    assert json.loads(Path("two.json").read_text()) == json.loads(Path("one.json").read_text())
    assert Path("two.png").read_bytes() == Path("one.png").read_bytes()
