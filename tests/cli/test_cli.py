"""The command line: every sub-command's help, the train options generated from TrainConfig, and
train → eval → sample end to end on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from utils import write_official_run

from densflow.cli import build_parser, main, train_config_from_args
from densflow.training import TrainConfig, TrainingDivergedError, train_preset

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["eval"],
        ["sample"],
        ["data"],
        ["data", "check"],
        ["data", "download"],
        ["convert"],
    ],
)
def test_every_sub_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m densflow")
    if command == ["train"]:
        assert "--warmup-steps" in out and "linear warm-up length in steps" in out


def test_train_options_are_the_trainconfig_fields():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions} - {"help", "preset"}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}


def test_cli_config_equals_the_preset_with_overrides():
    args = build_parser().parse_args(
        [
            "train",
            "--preset",
            "paper",
            "--dataset",
            "cifar10",
            "--batch-size",
            "32",
            "--no-augmentation",
            "--grad-clip",
            "none",
            "--eval-limit",
            "100",
            "--amp",
            "bf16",
            "--model-config",
            '{"image_size": 32, "growth_rate": 12}',
        ]
    )
    expected = train_preset(
        "cifar10",
        "paper",
        batch_size=32,
        augmentation=False,
        grad_clip=None,
        eval_limit=100,
        amp="bf16",
        model_config={"image_size": 32, "growth_rate": 12},
    )
    assert train_config_from_args(args) == expected
    assert train_config_from_args(build_parser().parse_args(["train"])) == TrainConfig()


def test_a_bare_train_command_gets_the_quickstart_settings():
    config = train_config_from_args(build_parser().parse_args(["train"]))
    quickstart = train_preset("photos", "quickstart", out_dir=config.out_dir)
    assert config == quickstart.replace(eval_limit=None)
    assert config.warmup_steps < 2 * 147  # photos: 147 steps of 16 per epoch


@pytest.mark.slow
def test_a_training_run_redirected_to_a_file_logs_its_progress(tmp_path):
    log = tmp_path / "log"
    command = [sys.executable, "-m", "densflow", "train", "--preset", "smoke", "--dataset",
               "photos", "--out-dir", str(tmp_path / "run"), "--batch-size", "8", "--epochs", "1",
               "--finetune-epochs", "0", "--steps-per-epoch", "4", "--log-every", "2",
               "--checkpoint-every", "2", "--eval-limit", "8"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:  # `densflow train ... > log 2>&1`: not a terminal
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    for step in (2, 4):
        line = re.search(rf"^\S+ \S+ step {step}/4  epoch 1  bits/dim .*$", text, re.MULTILINE)
        assert line is not None, text
        assert re.search(r"bits/dim \d+\.\d{4}  lr \S+  [\d.]+ images/s  ETA \d+m\d\ds$", line[0])
    assert re.search(r"step 4  evaluation on 8 test images: test_bpd \d+\.\d{4}", text), text
    assert len(re.findall(r"step [24]  checkpoint .*checkpoint\.pt", text)) == 2, text
    assert "%|" not in text  # no progress bar where nobody watches
    assert json.loads(text[text.index("{") :])["step"] == 4


def test_bad_options_exit_with_status_2(capsys):
    assert main(["train", "--batch-size", "0"]) == 2
    assert "batch_size must be an integer in [1, 65536], got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal, as one line
        main(["train", "--schedule", "cosine"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_train_eval_sample_end_to_end(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "smoke",
            "--dataset",
            "photos",
            "--out-dir",
            str(run),
            "--batch-size",
            "8",
            "--max-steps",
            "3",
            "--warmup-steps",  # lr 1e-3 from the first step: bf16 below must show in the numbers
            "0",
            "--log-every",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 3 and summary["completed"] is False
    checkpoint = run / "checkpoint.pt"

    out = tmp_path / "eval.json"
    # 8 images in batches of 4, with a 2-sample importance-weighted bound in chunks of 2
    small_eval = ["eval", str(checkpoint), "--limit", "8", "--batch-size", "4", "--iw-samples", "2"]
    small_eval += ["--chunk-size", "2", "--device", "cpu"]
    code = main([*small_eval, "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())  # the summary, and each image's bits/dim
    assert {k: v for k, v in written.items() if not k.startswith(("per_image", "prov"))} == printed
    assert set(written["provenance"]) == {"densflow", "git_commit", "git_dirty", "torch"}
    assert len(written["per_image_iw"]) == 8
    assert sum(written["per_image_iw"]) / 8 == pytest.approx(printed["bpd_iw"], rel=1e-12)
    assert printed["dataset"] == "photos" and printed["n_images"] == 8  # from the checkpoint
    assert 0 < printed["bpd_iw"] < 9 and 0 < printed["bpd_single"] < 9
    assert not (tmp_path / "eval.json.partial").exists()

    # CUDA graphs on a CPU: a warning, then the eager passes on the graph's buffers, to the bit.
    with pytest.warns(RuntimeWarning, match="cuda_graphs needs a CUDA device; on cpu the eval"):
        assert main([*small_eval, "--cuda-graphs"]) == 0
    assert json.loads(capsys.readouterr().out) == printed

    compiled = []  # compiling for real is tests/performance/test_compile.py's job: minutes on a CPU
    monkeypatch.setattr("densflow.performance.compile_model", compiled.append)
    code = main([*small_eval, "--amp", "bf16", "--channels-last", "--compile"])
    assert code == 0
    fast = json.loads(capsys.readouterr().out)
    [flow] = compiled
    assert all(
        w.is_contiguous(memory_format=torch.channels_last)
        for w in flow.parameters()
        if w.dim() == 4
    )
    for bound in ("bpd_single", "bpd_iw"):  # bf16 networks: close to float32, not equal
        assert 0 < abs(fast[bound] - printed[bound]) < 0.01

    png = tmp_path / "samples.png"
    assert main(["sample", str(checkpoint), "--out", str(png), "--n", "4", "--nrow", "2"]) == 0
    assert png.stat().st_size > 0
    graphed_png = tmp_path / "graphed.png"
    with pytest.warns(RuntimeWarning, match="on cpu the sampling runs eagerly"):
        argv = ["sample", str(checkpoint), "--out", str(graphed_png), "--n", "4", "--nrow", "2"]
        assert main([*argv, "--cuda-graphs"]) == 0
    assert graphed_png.read_bytes() == png.read_bytes()  # the same draws, the same pixels
    fast_png = tmp_path / "fast.png"
    assert (
        main(
            [
                "sample",
                str(checkpoint),
                "--out",
                str(fast_png),
                "--n",
                "4",
                "--amp",
                "bf16",
                "--channels-last",
                "--compile",
            ]
        )
        == 0
    )
    [_, flow] = compiled
    assert all(
        w.is_contiguous(memory_format=torch.channels_last)
        for w in flow.parameters()
        if w.dim() == 4
    )
    assert fast_png.stat().st_size > 0


def test_expected_failures_are_one_error_line_and_status_2(tmp_path, capsys, monkeypatch):
    assert main(["data", "check", "cifar10", "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cifar10: data not found in") and "Traceback" not in err

    assert main(["eval", str(tmp_path / "nothing.pt"), "--dataset", "photos"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing.pt'}: no such file or folder\n"

    def diverge(config):
        raise TrainingDivergedError("training diverged at step 8")

    monkeypatch.setattr("densflow.training.train", diverge)
    assert main(["train", "--out-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "error: training diverged at step 8\n"


def test_data_check_photos(capsys):
    assert main(["data", "check", "photos"]) == 0
    assert capsys.readouterr().out.startswith("photos: 2356 train + 532 test patches")


def test_eval_and_sample_an_official_run(reference_dir, tmp_path, capsys):
    golden = torch.load(reference_dir / "golden_A.pt", weights_only=True)
    run = write_official_run(tmp_path / "run", golden)  # args.pickle says cifar10
    assert main(["eval", str(run)]) == 2  # no CIFAR-10 here: a clear error
    assert capsys.readouterr().err.startswith("error: cifar10: no data_dir given")

    argv = ["eval", str(run), "--dataset", "photos", "--limit", "4", "--batch-size", "4"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(run) and result["n_images"] == 4
    png = tmp_path / "official.png"
    assert main(["sample", "--official", str(run), "--out", str(png), "--n", "2"]) == 0
    assert png.stat().st_size > 0
    assert capsys.readouterr().err == "warning: --official is deprecated; use MODEL\n"


# ----------------------------------------------------------------------------- names and causes
def test_the_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"python -m densflow {version('densflow')}\n"


@pytest.mark.parametrize(
    "argv0, prog",
    [
        ("/home/me/.venv/bin/densflow", "densflow"),
        ("/repo/densflow/__main__.py", "python -m densflow"),
    ],
)
def test_the_usage_names_the_command_as_it_was_invoked(argv0, prog, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [argv0, "sample", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith(f"usage: {prog} sample")
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "m.pt", "--n", "zero"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(f"; see '{prog} sample --help'\n")


@pytest.mark.parametrize("command", ["train", "eval", "sample"])
def test_every_switch_has_its_no_form(command):
    parser = build_parser()
    model = {"train": [], "eval": ["m.pt"], "sample": ["m.pt", "--out", "s.png"]}[command]
    for flag in ("channels-last", "compile", "cuda-graphs"):
        assert getattr(parser.parse_args([command, *model, f"--{flag}"]), flag.replace("-", "_"))
        off = parser.parse_args([command, *model, f"--no-{flag}"])
        assert getattr(off, flag.replace("-", "_")) is False


def test_resume_from_is_gone_and_init_from_stays(capsys):
    assert build_parser().parse_args(["train", "--init-from", "a.pt"]).init_from == "a.pt"
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--resume-from", "a.pt"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --resume-from" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, dest, old, new",
    [
        (["data", "download", "cifar10", "--root", "d"], "data_dir", "--root", "--data-dir"),
        (["download", "weights", "--root", "c"], "cache_dir", "--root", "--cache-dir"),
    ],
)
def test_old_spellings_mean_the_same_with_one_warning_line(argv, dest, old, new, capsys):
    assert getattr(build_parser().parse_args(argv), dest) == argv[-1]
    assert capsys.readouterr().err == f"warning: {old} is deprecated; use {new}\n"
    renamed = [new if a == old else a for a in argv]
    assert getattr(build_parser().parse_args(renamed), dest) == argv[-1]
    assert capsys.readouterr().err == ""


def _raises(err: BaseException):
    def run(args):
        raise err

    return run


def _os_error(code: int, filename: str | None = "out/r.json") -> OSError:
    return OSError(code, os.strerror(code), filename)


def _cpu_out_of_memory() -> RuntimeError:
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as err:
        return err
    raise AssertionError("the allocation succeeded")


# the exception a command raises → its exit status and its one line
CAUSES = {
    "InputError": (lambda: __import__("densflow").utils.errors.InputError("k must be >= 1"), 2,
                   r"^error: k must be >= 1$"),
    "a full disk": (lambda: _os_error(28), 2,
                    r"^error: out/r\.json: No space left on device; free some space"),
    "no permission": (lambda: _os_error(13), 2, r"^error: out/r\.json: Permission denied; "),
    "a read-only file system": (lambda: _os_error(30), 2, r"Read-only file system; choose a path"),
    "a missing user path": (lambda: _os_error(2), 2, r"^error: out/r\.json: No such file or "),
    "a folder where a file goes": (lambda: _os_error(21), 2, r"Is a directory; give a file path"),
    "a file where a folder goes": (lambda: _os_error(20), 2, r"Not a directory; a part of"),
    "out of memory": (lambda: MemoryError(), 2, r"^error: out of memory for the requested size"),
    "the CPU allocator": (_cpu_out_of_memory, 2, r"out of memory .*use a smaller --batch-size"),
    "a missing package": (
        lambda: __import__("densflow").data.MissingDependencyError("x needs y"), 2, r"x needs y"
    ),
    "a diverged run": (lambda: TrainingDivergedError("diverged at 3"), 2, r"diverged at 3"),
    "a plain ValueError": (lambda: ValueError("bad"), 1, r"unexpected ValueError: bad; this is a"),
    "a plain TypeError": (lambda: TypeError("bad"), 1, r"unexpected TypeError: bad; .*--debug"),
    "an internal missing file": (lambda: _os_error(2, None), 1, r"unexpected FileNotFoundError"),
    "any other bug": (lambda: KeyError("k"), 1, r"unexpected KeyError: 'k'; this is a bug"),
}  # fmt: skip


@pytest.mark.parametrize("make, status, pattern", CAUSES.values(), ids=CAUSES.keys())
def test_the_exit_status_is_decided_by_the_cause(make, status, pattern, monkeypatch, capsys):
    from utils import assert_one_line

    from densflow.cli import models

    monkeypatch.setattr(models, "_locate", _raises(make()))
    assert main(["sample", "m.pt", "--out", "s.png"]) == status
    assert_one_line(capsys.readouterr().err, pattern)
