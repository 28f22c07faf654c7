"""Progress files: one per process, resumed from whatever number of processes wrote them, and
never anything else replaced or deleted."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig
from densflow.evaluation import evaluate
from densflow.evaluation.partial import ProgressFiles, fingerprint
from densflow.utils.distributed import Dist
from densflow.utils.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = {"n_images": 7, "settings": "these"}


@pytest.fixture(scope="module")
def model() -> DenseFlow:
    torch.manual_seed(0)
    flow = perturb(DenseFlow(DenseFlowConfig.tiny()), 0.02, 0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    return init_actnorms(flow, x, generator=torch.Generator().manual_seed(1))


def values(*numbers: float) -> list[torch.Tensor]:
    return [torch.tensor(numbers, dtype=torch.float64)]


def test_each_process_has_its_file_and_resumes_from_any_of_them(tmp_path):
    partial = tmp_path / "eval.partial"
    # Ranks 0 and 1 of two processes, each with the first images of its shard done.
    for rank, (start, done) in enumerate([(0, [1.0, 2.0]), (3, [4.0, 5.0])]):
        files = ProgressFiles(partial, Dist(rank, 2), KEY)
        assert files.own == tmp_path / f"eval.partial.rank{rank}"
        files.save(start, values(*done), values(*[10 * d for d in done]))
    (tmp_path / "eval.partial.rank7.bak").write_text("a user's file, not a sibling")
    (tmp_path / "eval.partial.rank9").write_text("a user's file at a sibling's name")
    # One process now: its shard is everything; images 0, 1 are recorded, 2 is not.
    one = ProgressFiles(partial, Dist(), KEY)
    assert one.own == partial and set(one.found) == {tmp_path / "eval.partial.rank0",
                                                      tmp_path / "eval.partial.rank1"}  # fmt: skip
    single, iw = one.resume(range(7))
    assert single[0].tolist() == [1.0, 2.0] and iw[0].tolist() == [10.0, 20.0]
    # Three processes: rank 1's shard 2..4 starts with an unrecorded image; rank 2's at 4: 4, 5.
    assert ProgressFiles(partial, Dist(1, 3), KEY).resume(range(2, 4)) == ([], [])
    single, _ = ProgressFiles(partial, Dist(2, 3), KEY).resume(range(4, 7))
    assert single[0].tolist() == [5.0]  # image 3 is rank 1's; image 4 recorded, 5 not
    # Another key (settings or model) is not resumed from.
    assert ProgressFiles(partial, Dist(), {**KEY, "settings": "other"}).resume(range(7)) == ([], [])
    # Done: rank 0 of one process deletes its own and the files it found; nothing else.
    one.remove(partial)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.partial.rank7.bak",
                                                         "eval.partial.rank9"]  # fmt: skip


def test_a_file_that_is_not_progress_is_refused_before_any_work(tmp_path, model):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(InputError, match=r"notes\.txt exists and is not an evaluation progress"):
        ProgressFiles(notes, Dist(), KEY)
    with pytest.raises(InputError, match="is a folder; give a file path"):
        ProgressFiles(tmp_path, Dist(), KEY)
    assert notes.read_text() == "my notes"


def test_an_evaluation_resumes_from_the_files_of_two_processes(tmp_path, model, monkeypatch):
    data = TensorDataset(torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8))
    kwargs = dict(batch_size=2, iw_samples=2, chunk_size=1, seed=4, progress=False)
    reference = evaluate(model, data, **kwargs)
    key = {"n_images": 7, "iw_samples": 2, "single": True, "seed": 4, "amp": "none",
           "device": "cpu", "model": fingerprint(model)}  # fmt: skip
    partial = tmp_path / "eval.partial"
    # As two processes killed part-way would leave them: images 0-1 and 3-4 (of shards 0-2, 3-6).
    for rank, shard in enumerate([range(0, 2), range(3, 5)]):
        s, w = reference.per_image_single[shard], reference.per_image_iw[shard]
        ProgressFiles(partial, Dist(rank, 2), key).save(
            shard.start, [torch.from_numpy(s)], [torch.from_numpy(w)]
        )
    passes = []
    real = model.terms_from_noise
    monkeypatch.setattr(model, "terms_from_noise", lambda x, n: passes.append(len(x)) or real(x, n))
    resumed = evaluate(model, data, partial_path=partial, **kwargs)
    assert sum(passes) == (7 - 2) * (1 + 2)  # one process's shard 0..6: images 2..6 evaluated
    assert np.array_equal(resumed.per_image_single, reference.per_image_single)
    assert np.array_equal(resumed.per_image_iw, reference.per_image_iw)
    assert list(tmp_path.iterdir()) == []  # every progress file of this evaluation is gone


def test_a_progress_file_that_cannot_be_deleted_is_left_with_a_warning(
    tmp_path, model, monkeypatch
):
    # The evaluation is complete: its numbers are returned, and the file a later run of the same
    # command would finish from at once stays.
    data = TensorDataset(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8))
    reference = evaluate(model, data, batch_size=1, progress=False)
    partial = tmp_path / "eval.partial"

    def refuse(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.warns(UserWarning, match=r"cannot delete .*eval\.partial: Permission denied"):
        result = evaluate(
            model, data, batch_size=1, progress=False, partial_path=partial, save_interval_s=0
        )
    assert np.array_equal(result.per_image_single, reference.per_image_single)
    assert partial.is_file()
