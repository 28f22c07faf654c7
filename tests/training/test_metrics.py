"""What a run reports while it trains: a line at least every HEARTBEAT_S, however slow its steps."""

from __future__ import annotations

import logging

import torch

from densflow.training import metrics
from densflow.training.metrics import RunLog


def _log(tmp_path, enabled=True) -> RunLog:
    return RunLog(
        tmp_path, 0, enabled=enabled, total_steps=10, done_steps=4, images_per_step=8,
        progress=False, device=torch.device("cpu"),
    )  # fmt: skip


def test_a_silent_run_logs_its_progress_without_reading_a_loss(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="densflow")
    log = _log(tmp_path)
    monkeypatch.setattr(metrics, "HEARTBEAT_S", 0.0)
    log.step_done(torch.tensor(float("nan")))  # a loss the line must not show
    log.step_done(None)
    lines = [r.getMessage() for r in caplog.records]
    assert (
        len(lines) == 2 and lines[0].startswith("step 5/10 ") and lines[1].startswith("step 6/10 ")
    )
    assert all("images/s" in line and "ETA" in line and "nan" not in line for line in lines)
    assert not (tmp_path / "metrics.jsonl").read_text()  # the record is the log points only


def test_no_extra_line_while_lines_come_often_enough(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="densflow")
    log = _log(tmp_path)
    monkeypatch.setattr(metrics, "HEARTBEAT_S", 3600.0)
    for _ in range(3):
        log.step_done(torch.tensor(1.0))
    log.train(7, 0, 1e-3)
    assert [r.getMessage().split("  ")[0] for r in caplog.records] == ["step 7/10"]


def test_only_the_reporting_process_logs(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="densflow")
    log = _log(tmp_path, enabled=False)
    monkeypatch.setattr(metrics, "HEARTBEAT_S", 0.0)
    log.step_done(torch.tensor(1.0))
    assert caplog.records == []
