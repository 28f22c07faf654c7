"""``--logger tensorboard``: the event files mirror ``metrics.jsonl`` (scalars, a sample grid per
evaluation, the config), a resumed run adds no duplicate step, and a missing package is one clear
error."""

from __future__ import annotations

import math
import shutil
import sys

import pytest

from densflow.cli import main
from densflow.data import MissingDependencyError
from densflow.training import TrainConfig, read_metrics
from densflow.training.loggers import TENSORBOARD_DIR, make_loggers, scalars_of

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

SMOKE = ["train", "--preset", "smoke", "--dataset", "photos", "--no-progress",
         "--logger", "tensorboard"]  # fmt: skip


def run(out_dir, max_steps: int) -> None:
    assert main([*SMOKE, "--out-dir", str(out_dir), "--max-steps", str(max_steps)]) == 0


def events(out_dir) -> EventAccumulator:
    acc = EventAccumulator(str(out_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    return acc.Reload()


def scalar_steps(acc: EventAccumulator) -> dict[str, list[int]]:
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_mirror_the_metrics_log(tmp_path):
    run(tmp_path, 10)  # log points at 5 and 10, the epoch's end and its evaluation at 10
    acc = events(tmp_path)
    expected: dict[str, dict[int, float]] = {}
    for record in read_metrics(tmp_path):
        for tag, value in scalars_of(record).items():
            expected.setdefault(tag, {})[record["step"]] = value
    for tag in ("train/bpd", "train/lr", "train/images_per_s", "train/nonfinite",
                "train/grad_norm", "epoch/train_bpd", "eval/test_bpd"):  # fmt: skip
        assert tag in expected, tag
    assert all(0 < v < math.inf for v in expected["train/grad_norm"].values())
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == by_step.keys(), tag
        for step, value in by_step.items():  # event files store float32
            assert math.isclose(got[step], value, rel_tol=1e-6, abs_tol=1e-12), (tag, step)
    assert expected["train/bpd"].keys() == {5, 10}
    images = acc.Images("samples")
    assert [i.step for i in images] == [10]
    assert (images[0].width, images[0].height) == (4 * 32 + 5 * 2,) * 2  # 4x4 grid, padding 2
    config = acc.Tensors("config/text_summary")
    assert [c.step for c in config] == [0]
    assert '"logger": "tensorboard"' in config[0].tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_resumed_run_has_the_steps_of_an_uninterrupted_one(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run(reference, 15)
    run(resumed, 10)  # stops at an epoch end: its evaluation and grid at step 10 are kept
    run(resumed, 15)
    ref, res = events(reference), events(resumed)
    assert scalar_steps(res) == scalar_steps(ref)
    for steps in scalar_steps(res).values():
        assert len(steps) == len(set(steps))
    assert scalar_steps(ref)["train/bpd"] == [5, 10, 15]
    # Exact resume: the same scalars (but images/s) and, drawn again at step 10, the same grid.
    for tag in ref.Tags()["scalars"]:
        if tag != "train/images_per_s":
            assert [e.value for e in res.Scalars(tag)] == [e.value for e in ref.Scalars(tag)], tag
    assert [(i.step, i.encoded_image_string) for i in res.Images("samples")] == [
        (i.step, i.encoded_image_string) for i in ref.Images("samples")
    ]
    assert [c.step for c in res.Tensors("config/text_summary")] == [0, 10]


def test_crash_after_the_checkpoint_leaves_no_duplicates(tmp_path):
    """Steps logged after the last checkpoint and before a crash are hidden (purge_step), and
    written again by the resumed run."""
    run(tmp_path, 5)
    saved = tmp_path / "checkpoint_5.pt"
    shutil.copy(tmp_path / "checkpoint.pt", saved)
    run(tmp_path, 10)
    shutil.copy(saved, tmp_path / "checkpoint.pt")  # as if the run died after step 10's events
    run(tmp_path, 10)
    acc = events(tmp_path)
    steps = scalar_steps(acc)
    assert steps["train/bpd"] == [5, 10]
    assert steps["eval/test_bpd"] == [10]
    assert [i.step for i in acc.Images("samples")] == [10]
    bpd = {e["step"]: e["bpd"] for e in read_metrics(tmp_path) if e["event"] == "train"}
    assert [e.value for e in acc.Scalars("train/bpd")] == pytest.approx([bpd[5], bpd[10]], rel=1e-6)


def test_a_logger_first_turned_on_at_a_resume_back_fills_the_scalars(tmp_path):
    argv = [a for a in SMOKE if a not in ("--logger", "tensorboard")]
    assert main([*argv, "--out-dir", str(tmp_path), "--max-steps", "5"]) == 0
    assert not (tmp_path / TENSORBOARD_DIR).exists()
    run(tmp_path, 10)
    steps = scalar_steps(events(tmp_path))
    assert steps["train/bpd"] == [5, 10]
    assert steps["eval/test_bpd"] == [10]


def test_missing_tensorboard_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an import then sees: not there
    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[tensorboard\]"'):
        make_loggers("tensorboard", tmp_path)
    assert make_loggers("none", tmp_path) == []
    argv = [*SMOKE, "--out-dir", str(tmp_path), "--max-steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: logger='tensorboard' needs the 'tensorboard' package")
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before the run began


def test_logger_is_a_choice_and_may_change_on_resume():
    with pytest.raises(ValueError, match="logger must be one of"):
        TrainConfig(logger="wandb")
    from densflow.training.config import RESUMABLE_CHANGES

    assert "logger" in RESUMABLE_CHANGES
