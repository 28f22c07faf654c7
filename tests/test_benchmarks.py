"""The benchmark and the GPU check scripts (benchmarks/)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densflow import DenseFlowConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_benchmark_reports_ratios_against_the_baseline_of_the_same_run(tmp_path):
    import benchmark  # benchmarks/benchmark.py, on sys.path above

    out = tmp_path / "report.json"
    benchmark.main(
        [
            "--preset",
            "tiny",
            "--image-size",
            "16",
            "--batch-size",
            "2",
            "--variants",
            "eager,channels_last,ddp2",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--eval-iters",
            "1",
            "--iw-samples",
            "4",
            "--iw-chunk",
            "2",
            "--eval-batch",
            "2",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    (setup,) = report["setups"]
    assert len(setup["rounds"]) == 1  # the raw measurements travel with the medians
    eager, channels_last, ddp2 = setup["rows"]
    assert setup["baseline"] == "eager" and eager["train_images_speedup"] == 1.0
    for row in (channels_last, ddp2):
        assert row["train_images_speedup"] == pytest.approx(
            row["train_images_per_s"] / eager["train_images_per_s"]
        )
        assert row["train_losses_finite"] and row["max_rel_logp_diff"] < 1e-5
    assert eager["train_losses_finite"]
    # The two ranks train; evaluation and sampling are not theirs to measure.
    assert math.isnan(ddp2["iw_image_samples_per_s"]) and math.isnan(ddp2["sample_images_per_s"])
    assert ddp2["train_peak_bytes"] > 0  # both ranks' peaks, summed


@pytest.mark.slow
def test_benchmark_processes_return_in_order_and_report_a_failure_with_its_traceback():
    import benchmark

    assert benchmark.in_fresh_processes(math.sqrt, [(9.0,), (4.0,)]) == [3.0, 2.0]
    with pytest.raises(RuntimeError, match=r"(?s)benchmark process 1 failed:.*math domain error"):
        benchmark.in_fresh_processes(math.sqrt, [(4.0,), (-1.0,)])


def test_benchmark_ddp_variant_needs_a_batch_that_splits():
    import benchmark

    with pytest.raises(ValueError, match="does not split into 2 equal shards"):
        benchmark.measure_fresh(
            benchmark.Setup("tiny", DenseFlowConfig.tiny(), 3), "ddp2", torch.device("cpu"), None
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_benchmark_peak_memory_sees_a_transient_allocation():
    # The kernel's high-water mark: a peak freed again before the end still counts, with no
    # sampling thread to compete with the timed threads. Fresh pages from mmap (malloc could
    # reuse memory that is already resident in this long-lived process).
    import mmap

    import benchmark

    with benchmark.PeakRSS() as rss:
        with mmap.mmap(-1, 64 * 2**20) as pages:  # 64 MiB, written, so resident
            mib = b"\1" * 2**20
            for _ in range(64):
                pages.write(mib)
    assert 60 * 2**20 < rss.bytes < 256 * 2**20


GPU_CHECK_PARTS = [
    "benchmark_paper32",
    "train_paper",
    "eval_iw",
    "cuda_tests",
    "checkpoint_stall",
    "benchmark_paper64",
    "benchmark_paper32_compiled",
    "train_paper_compiled",
]


def run_gpu_check(tmp_path, stub_body: str, budget: int | None = None):
    """benchmarks/gpu_check.sh with a stand-in interpreter (there is no GPU here): the stub
    answers the script's CUDA check and logs every other call."""
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = -c ]; then echo "Stub GPU"; exit 0; fi\n'
        f'printf "%s\\0" "$@" >> "{tmp_path}/calls"; printf "\\n" >> "{tmp_path}/calls"\n'
        f"{stub_body}\n"
    )
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub)}
    env.pop("BUDGET", None)
    if budget is not None:
        env["BUDGET"] = str(budget)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls_file = tmp_path / "calls"
    lines = calls_file.read_text().splitlines() if calls_file.exists() else []
    calls = [line.rstrip("\0").split("\0") for line in lines]  # each call's arguments
    ran = [p for p in GPU_CHECK_PARTS if f"== {p}: exit" in done.stdout]
    return done, calls, ran


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_runs_every_part_and_reports_a_failed_one(tmp_path):
    # A failing part (the CUDA tests here) is reported, the parts after it still run, and the
    # summary is written last.
    done, calls, ran = run_gpu_check(tmp_path, 'case "$*" in *"-m cuda"*) exit 1;; esac')
    assert ran == GPU_CHECK_PARTS and len(calls) == len(GPU_CHECK_PARTS) + 1
    assert "== cuda_tests: exit 1 ==" in done.stdout and done.returncode == 1
    assert " ".join(calls[0]).find("--preset paper --image-size 32 --batch-size 64") > 0
    assert calls[-1] == ["benchmarks/gpu_summary.py", str(tmp_path / "out")]
    assert (tmp_path / "out" / "device.txt").read_text().strip() == "Stub GPU"
    assert (tmp_path / "out" / "train_paper.seconds").read_text().strip().isdigit()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_stays_within_its_budget(tmp_path):
    # 62 s of budget: the first part gets it all (and takes 3 s); then under a minute is left,
    # so the rest is skipped rather than started and cut short; the summary still runs.
    done, calls, ran = run_gpu_check(tmp_path, "sleep 3", budget=62)
    assert ran == ["benchmark_paper32"] and len(calls) == 2
    assert re.search(r"== benchmark_paper32 \(limit 6[12]s\) ==", done.stdout)  # 1 s ticks
    assert done.stdout.count("skipped") == len(GPU_CHECK_PARTS) - 1 and done.returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_every_command_of_the_gpu_check_is_accepted_by_its_program(tmp_path):
    # A misspelt option would cost a part of a short GPU loan: each call the script makes is
    # parsed here by the program it calls (the CUDA device aside, the same arguments).
    import benchmark
    import checkpoint_stall

    from densflow.cli import build_parser

    done, calls, _ = run_gpu_check(tmp_path, "")
    assert done.returncode == 0, done.stdout + done.stderr
    seen = set()
    for call in calls:
        if call[0] == "benchmarks/benchmark.py":
            args = benchmark.build_parser().parse_args(call[1:])
            assert set(args.variants.split(",")) <= set(benchmark.VARIANTS), call
        elif call[0] == "benchmarks/checkpoint_stall.py":
            checkpoint_stall.build_parser().parse_args(call[1:])
        elif call[:2] == ["-m", "densflow"]:
            build_parser().parse_args(call[2:])
        elif call[:2] == ["-m", "pytest"]:
            assert Path(call[-1]).exists() and "cuda" in call, call
        else:
            assert call[0] == "benchmarks/gpu_summary.py", call
        seen.add(call[0] if call[0] != "-m" else call[1])
    assert seen == {
        "benchmarks/benchmark.py",
        "benchmarks/checkpoint_stall.py",
        "densflow",
        "pytest",
        "benchmarks/gpu_summary.py",
    }


def test_gpu_summary_sets_the_trainer_against_its_benchmark_row(tmp_path, capsys):
    # A run folder as gpu_check.sh leaves it, with known numbers: the Trainer's first window
    # (the capture) is left out, the window with the epoch end at step 25 is kept apart, and
    # the steady median is compared with the benchmark row of the run's speed switches.
    import gpu_summary  # benchmarks/gpu_summary.py, on sys.path above

    out = tmp_path / "gpu_check"
    (out / "train_paper").mkdir(parents=True)
    (out / "device.txt").write_text("Stub GPU torch 2\n")

    def row(variant, train, iw):
        return {"variant": variant, "train_images_per_s": train, "train_images_speedup": 1.0,
                "train_peak_bytes": 2**30, "iw_peak_bytes": 2**29, "sample_peak_bytes": 2**28,
                "iw_image_samples_per_s": iw,
                "iw_image_samples_speedup": 1.0, "sample_images_per_s": 50.0,
                "sample_images_speedup": 1.0, "max_abs_bpd_diff": 0.0,
                "train_losses_finite": True}  # fmt: skip

    report = {"device": "Stub GPU", "torch": "2", "setups": [{
        "name": "paper 32×32", "batch_size": 64, "baseline": "eager",
        "rows": [row("eager", 60.0, 900.0), row("graph+channels_last+bf16", 262.5, 5000.0)],
    }]}  # fmt: skip
    (out / "benchmark_paper32.json").write_text(json.dumps(report))
    config = {"batch_size": 64, "amp": "bf16", "channels_last": True, "cuda_graphs": True}
    events = [{"event": "start", "config": config, "world_size": 1}]
    events += [{"event": "train", "step": s, "images_per_s": r}
               for s, r in [(10, 100.0), (20, 250.0)]]  # fmt: skip
    events += [{"event": "epoch", "step": 25}]
    events += [{"event": "train", "step": s, "images_per_s": r}
               for s, r in [(30, 200.0), (40, 260.0), (50, 240.0)]]  # fmt: skip
    lines = [json.dumps(e) for e in events] + ['{"event": "tra']  # a line cut by a kill
    (out / "train_paper" / "metrics.jsonl").write_text("\n".join(lines))

    result = {"n_images": 64, "iw_samples": 1000, "bpd_iw": 3.5, "bpd_single": 3.625}
    (out / "eval_iw.json").write_text(json.dumps(result))
    (out / "eval_iw.seconds").write_text("32\n")
    stall = {"preset": "paper", "checkpoint_bytes": 1500 * 2**20, "rounds": 3,
             "sync_median_s": 4.0, "stall_median_s": 0.5, "written_median_s": 5.0,
             "stall_ratio": 0.125, "steps": 5, "steps_without_s": 1.0,
             "steps_during_write_s": 1.25}  # fmt: skip
    (out / "checkpoint_stall.json").write_text(json.dumps(stall))
    rates = gpu_summary.trainer_rates(gpu_summary.read_events(out / "train_paper/metrics.jsonl"))
    seconds = sum(640 / r for r in (250.0, 200.0, 260.0, 240.0))
    assert rates == {"variant": "graph+channels_last+bf16", "steady": 250.0,
                     "with_epoch_end": 200.0, "overall": pytest.approx(2560 / seconds),
                     "windows": (3, 1)}  # fmt: skip
    assert gpu_summary.main([str(out)]) == 0
    text = (out / "summary.md").read_text()
    assert text.startswith("# GPU check on Stub GPU torch 2")
    assert "| train_paper | graph+channels_last+bf16 | 250.0 | 200.0 |" in text
    assert f"| 262.5 | {250 / 262.5:.3f} |" in text
    hours = 10_000 * 1000 / 5000 / 3600  # CIFAR-10's test set at k = 1000
    assert f"At 5000 image·samples/s (paper 32×32, graph+channels_last+bf16): {hours:.2f} h" in text
    assert "| paper 32×32 | eager | 1024 | 512 | 256 |" in text
    assert "## The checkpoint's stall (paper model, 1500 MiB)" in text
    assert "holds the loop 0.500 s (0.12×), the file in place after 5.000 s" in text
    assert "5 training steps: 1.000 s alone, 1.250 s beside a write." in text
    assert "64 images × k = 1000 in 32 s, 2000 image·samples/s; bits/dim 3.5000 (IW)" in text
    assert gpu_summary.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_checkpoint_stall_times_both_saves_in_one_run(tmp_path):
    # The figures of benchmarks/checkpoint_stall.py, not their values: both saves timed in each
    # round, the ratio of their medians, and the steps beside a write.
    import checkpoint_stall

    out = tmp_path / "stall.json"
    assert (
        checkpoint_stall.main(
            ["--preset", "tiny", "--rounds", "2", "--steps", "1", "--json", str(out)]
        )
        == 0
    )
    stall = json.loads(out.read_text())
    assert len(stall["sync_s"]) == len(stall["stall_s"]) == len(stall["written_s"]) == 2
    assert stall["stall_ratio"] == stall["stall_median_s"] / stall["sync_median_s"]
    assert all(w >= s for w, s in zip(stall["written_s"], stall["stall_s"], strict=True))
    assert stall["checkpoint_bytes"] > 0 and stall["steps"] == 1
    with pytest.raises(SystemExit):
        checkpoint_stall.main(["--rounds", "0"])
