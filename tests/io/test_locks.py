"""One holder per managed folder; the next holder removes what a killed one left in the staging
folder, and nothing a user made. (A holder killed for real: the run folder's test in
tests/cli/test_bad_train_input.py.)"""

from __future__ import annotations

import threading
import time

import pytest

from densflow.io.locks import LOCK_NAME, MARKER_NAME, FolderBusyError, FolderLock
from densflow.utils.errors import InputError


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
    first = FolderLock(tmp_path)
    assert first.acquire() == [] and first.held
    with pytest.raises(FolderBusyError, match=r"another densflow process \(pid \d+\) is writing"):
        FolderLock(tmp_path).acquire()
    first.release()
    with FolderLock(tmp_path) as second:
        assert second.held
    assert not second.held


def test_a_waiting_holder_says_so_once_and_goes_on_after_the_first(tmp_path):
    first = FolderLock(tmp_path)
    first.acquire()
    said, done = [], []
    waiter = FolderLock(tmp_path, wait=True, on_wait=lambda: said.append("waiting"))
    thread = threading.Thread(target=lambda: done.append(waiter.acquire()))
    thread.start()
    time.sleep(0.3)
    assert said == ["waiting"] and done == []  # still waiting
    first.release()
    thread.join(timeout=30)
    assert done == [[]] and waiter.held
    waiter.release()


def test_taking_the_lock_empties_the_staging_folder_and_touches_nothing_else(tmp_path):
    lock = FolderLock(tmp_path)
    lock.acquire()
    staging = lock.staging
    assert (staging / MARKER_NAME).is_file()
    (staging / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    (staging / "unpacked.0123abcd" / "run").mkdir(parents=True)
    lock._lock.release()  # as a kill would: the staging folder stays as it is
    lock._lock = None
    look_alikes = [tmp_path / ".checkpoint.pt.0123abcd.tmp", tmp_path / ".x.tmp-1-abc"]
    for path in look_alikes:  # a user's files named like temporaries, beside the staging folder
        path.write_bytes(b"mine")
    (tmp_path / ".y.old-2-def").mkdir()
    removed = FolderLock(tmp_path).acquire()
    assert removed == [".checkpoint.pt.0123abcd.tmp", "unpacked.0123abcd"]
    assert [p.name for p in staging.iterdir()] == [MARKER_NAME]
    assert all(p.read_bytes() == b"mine" for p in look_alikes)
    assert (tmp_path / ".y.old-2-def").is_dir()


def test_release_leaves_the_lock_file_and_no_empty_staging_folder(tmp_path):
    with FolderLock(tmp_path):
        pass
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]


def test_a_staging_folder_that_is_not_densflows_is_refused_not_emptied(tmp_path):
    foreign = tmp_path / ".densflow-tmp"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(InputError, match="was not made by densflow .* rename it"):
        FolderLock(tmp_path).acquire()
    assert (foreign / "precious.txt").read_text() == "mine"
    # the refused holder gave the lock back: the next one meets the same refusal, not a holder
    with pytest.raises(InputError, match="was not made by densflow"):
        FolderLock(tmp_path).acquire()
