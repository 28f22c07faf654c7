"""The authors' weights pipeline into the cache — all offline.

The archive is made here in the layout of the authors' file (run folders with ``args.pickle`` and
``check/checkpoint.pt``, nested at several depths, one corrupt) from the official-format golden
fixture; the download is a stand-in for gdown that serves it.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
from utils import write_official_run

from densflow import DenseFlow, fixed_noise
from densflow.cli import main as cli_main
from densflow.io import pretrained as pt
from densflow.io import weights as wt
from densflow.io.archive import ArchiveError
from densflow.io.checkpoint import CheckpointError
from densflow.io.locks import LOCK_NAME, FolderLock
from densflow.io.official import load_official

RUNS = {  # path inside the archive → dataset in its args.pickle
    "DenseFlow/cifar10_run": "cifar10",
    "DenseFlow/more/deep/imagenet32_run": "imagenet32",
    "celeba_run": "celeba",
}
CORRUPT = "DenseFlow/broken_run"


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "golden_A.pt", weights_only=True)


@pytest.fixture(scope="module")
def tree(golden, tmp_path_factory) -> Path:
    """The authors' layout: three run folders at depths 1, 2 and 4, one corrupt run folder."""
    root = tmp_path_factory.mktemp("authors")
    for rel, dataset in RUNS.items():
        write_official_run(root / rel, golden, dataset=dataset)
    broken = write_official_run(root / CORRUPT, golden)
    ckpt = broken / "check" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a truncated upload
    (root / "README.txt").write_text("not a run folder\n")
    return root


def make_archive(tree: Path, out: Path, kind: str) -> Path:
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            for path in sorted(tree.rglob("*")):
                zf.write(path, path.relative_to(tree).as_posix())
    else:
        with tarfile.open(out, "w:gz") as tf:
            tf.add(tree, arcname="weights")
    return out


@pytest.fixture(scope="module")
def archives(tree, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("archives")
    # names without a suffix: the type is told by content, as for the Drive file
    return {kind: make_archive(tree, folder / f"archive-{kind}", kind) for kind in ("zip", "tgz")}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(pt.CACHE_ENV, str(root))
    return root


class FakeGdown:
    """gdown.download's contract: output appears complete (bytes go to '<output>XXXXXXXX.part'
    first), and with resume=True an existing output is returned as it is."""

    def __init__(self, archive: Path | None = None, error: BaseException | None = None):
        self.archive, self.error, self.calls = archive, error, []
        self.module = types.ModuleType("gdown")
        self.module.download = self.download

    def download(self, *, id, output, quiet, resume):
        self.calls.append(dict(id=id, output=output, resume=resume))
        if self.error is not None:
            raise self.error
        if resume and Path(output).is_file():
            return output
        part = Path(output + "abcdefgh.part")
        shutil.copyfile(self.archive, part)
        part.replace(output)
        return output


def use_gdown(monkeypatch, fake: FakeGdown | None) -> None:
    monkeypatch.setitem(sys.modules, "gdown", fake.module if fake is not None else None)


# ----------------------------------------------------------------------------- the weights pipeline
@pytest.fixture(scope="module")
def official(tree) -> dict[str, DenseFlow]:
    """Each run folder loaded with the official loader: what every conversion must equal."""
    return {rel: load_official(tree / rel) for rel in RUNS}


def check_cache(golden, official, capsys_text: str) -> None:
    """Each run folder became a model directory named after its dataset, equal to the official
    model; the corrupt one was reported in one line."""
    assert pt.cached_models() == sorted(RUNS.values())
    for rel, dataset in RUNS.items():
        model = DenseFlow.from_pretrained(dataset)
        assert model.config == official[rel].config
        assert model.config.image_size == {"celeba": 64}.get(dataset, 32)
        state = official[rel].state_dict()
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        info = pt.read_pretrained_config(pt.models_dir() / dataset)[1]
        assert info["dataset"] == dataset and info["source"].endswith("/" + rel)
    skipped = [line for line in capsys_text.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "broken_run" in skipped[0]
    with fixed_noise(0.0), torch.no_grad():  # the converted model reproduces the fixture
        got = DenseFlow.from_pretrained("cifar10").double().log_prob(golden["x"])
    assert torch.allclose(got, golden["logp_zero_noise"], rtol=1e-6)


@pytest.mark.parametrize(
    "kind",
    [
        "zip",
        pytest.param("tgz", marks=pytest.mark.slow),
        pytest.param("folder", marks=pytest.mark.slow),
    ],
)
def test_download_weights_from_a_given_archive_or_folder(
    golden, official, tree, archives, cache, kind, capsys
):
    source = tree if kind == "folder" else archives[kind]
    found = wt.download_weights(source=source)
    assert sorted(found) == sorted(RUNS.values())
    check_cache(golden, official, capsys.readouterr().out)
    assert sorted(p.name for p in cache.iterdir()) == [LOCK_NAME, "models"]  # nothing left over


def test_download_weights_fetches_records_the_digest_and_then_stays_offline(
    golden, official, archives, cache, monkeypatch, capsys
):
    fake = FakeGdown(archives["zip"])
    use_gdown(monkeypatch, fake)
    assert cli_main(["download", "weights"]) == 0
    out = capsys.readouterr().out
    assert [c["id"] for c in fake.calls] == [wt.DRIVE_FILE_ID]
    digest = wt._sha256(archives["zip"])
    assert f"sha256 {digest}" in out  # printed once, while ARCHIVE_SHA256 is unknown
    recorded = cache / "downloads" / wt.DIGEST_NAME
    assert recorded.read_text().split()[0] == digest
    assert (cache / "downloads" / wt.ARCHIVE_NAME).is_file()
    check_cache(golden, official, out)
    # done: a second call touches neither the network nor the models
    before = {p: p.stat().st_mtime_ns for p in (cache / "models").rglob("*")}
    assert cli_main(["download", "weights", "--cache-dir", str(cache)]) == 0
    assert len(fake.calls) == 1 and "already downloaded" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (cache / "models").rglob("*")}


def test_a_download_that_does_not_match_the_known_digest_is_deleted(archives, cache, monkeypatch):
    use_gdown(monkeypatch, FakeGdown(archives["zip"]))
    monkeypatch.setattr(wt, "ARCHIVE_SHA256", "0" * 64)
    with pytest.raises(wt.WeightsError, match="expected 0000.*deleted") as info:
        wt.download_weights()
    assert "\n" not in str(info.value)
    assert list((cache / "downloads").iterdir()) == []  # no archive, no digest recorded
    assert pt.cached_models() == []
    monkeypatch.setattr(wt, "ARCHIVE_SHA256", wt._sha256(archives["zip"]))
    assert sorted(wt.download_weights()) == sorted(RUNS.values())  # the right file passes


def test_a_tampered_archive_is_refused_against_the_recorded_digest(archives, cache, monkeypatch):
    use_gdown(monkeypatch, FakeGdown(archives["zip"]))
    wt.download_weights()
    archive = cache / "downloads" / wt.ARCHIVE_NAME
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))  # damaged at rest
    shutil.rmtree(cache / "models" / "celeba")  # so that the next call has work to do
    with pytest.raises(wt.WeightsError, match="recorded in .*weights.sha256.*deleted"):
        wt.download_weights()
    assert not archive.exists()
    # and a download that differs from the first one is refused too
    use_gdown(monkeypatch, FakeGdown(archive.parent.parent / "other"))
    (archive.parent.parent / "other").write_bytes(bytes(data))
    with pytest.raises(wt.WeightsError, match="recorded in"):
        wt.download_weights()
    assert sorted(p.name for p in archive.parent.iterdir()) == [wt.DONE_NAME, wt.DIGEST_NAME]


def test_a_given_archive_that_does_not_match_is_refused_and_kept(archives, cache, monkeypatch):
    monkeypatch.setattr(wt, "ARCHIVE_SHA256", "f" * 64)
    with pytest.raises(wt.WeightsError, match="left in place"):
        wt.download_weights(source=archives["tgz"])
    assert archives["tgz"].is_file()  # the user's own file is never deleted


def test_an_interrupted_download_and_conversion_are_redone_never_used(
    golden, official, archives, cache, monkeypatch, capsys
):
    downloads, models = cache / "downloads", cache / "models"
    downloads.mkdir(parents=True)
    models.mkdir()
    # what a killed run leaves: gdown's partial bytes, and in the staging folder half an unpacked
    # tree and half a model; beside them a user's files that merely look like temporaries
    (downloads / f"{wt.UNVERIFIED_NAME}abcdefgh.part").write_bytes(b"PK\3\4 partial")
    lock = FolderLock(cache)
    lock.acquire()
    (lock.staging / "unpacked.0123abcd" / "DenseFlow").mkdir(parents=True)
    (lock.staging / "cifar10.0123abcd").mkdir()
    (lock.staging / "cifar10.0123abcd" / pt.CONFIG_NAME).write_text("{}")
    lock._lock.release()  # as a kill would: nothing cleaned up
    lock._lock = None
    mine = [cache / ".weights.unpack-1-0123abcd", models / ".cifar10.tmp-1-0123abcd"]
    for folder in mine:
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="download weights"):
        DenseFlow.from_pretrained("cifar10")  # the partial model is not a model
    # a conversion killed after the first model: that one is complete, the others absent
    saved = []
    real_install = wt._install

    def killed_after_one(*args, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(args[1])
        real_install(*args, **kwargs)

    use_gdown(monkeypatch, FakeGdown(archives["tgz"]))
    with monkeypatch.context() as mp:
        mp.setattr(wt, "_install", killed_after_one)
        with pytest.raises(KeyboardInterrupt):
            wt.download_weights()
    assert pt.cached_models() == ["cifar10"]  # path order: DenseFlow/ before celeba_run
    assert not (downloads / wt.DONE_NAME).exists()
    assert sorted(p.name for p in models.iterdir()) == [".cifar10.tmp-1-0123abcd", "cifar10"]
    capsys.readouterr()
    assert sorted(wt.download_weights()) == sorted(RUNS.values())
    out = capsys.readouterr().out
    assert "cifar10: " in out and out.count("already converted") == 1
    check_cache(golden, official, out)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [LOCK_NAME, "downloads", "models", ".weights.unpack-1-0123abcd"]
    )  # the staging folder emptied and gone; the user's look-alikes kept
    assert all((folder / "notes.txt").read_text() == "mine" for folder in mine)
    assert sorted(p.name for p in downloads.iterdir()) == sorted(
        [wt.ARCHIVE_NAME, wt.DIGEST_NAME, wt.DONE_NAME]
    )


def test_two_downloads_at_once_one_waits_and_finds_the_work_done(archives, cache, monkeypatch):
    fake = FakeGdown(archives["zip"])
    use_gdown(monkeypatch, fake)
    holder = FolderLock(cache)  # a first download at work on the cache
    cache.mkdir(parents=True)
    holder.acquire()
    done, said = [], []
    monkeypatch.setattr(wt, "_say", said.append)
    second = threading.Thread(target=lambda: done.append(wt.download_weights()))
    second.start()
    time.sleep(0.5)
    assert done == [] and fake.calls == [] and not (cache / "models").exists()  # it waits
    assert said == [f"another densflow process is using the cache {cache}; waiting for it to "
                    "finish"]  # fmt: skip
    holder.release()
    second.join(timeout=300)
    assert sorted(done[0]) == sorted(RUNS.values()) and len(fake.calls) == 1


def test_a_full_disk_while_converting_stops_with_one_line_and_no_half_model(
    archives, cache, monkeypatch, capsys
):
    from densflow.io import files

    def full(self, data):
        self.error = OSError(28, "No space left on device")
        raise self.error

    monkeypatch.setattr(files._Sink, "write", full)
    assert cli_main(["download", "weights", "--from", str(archives["zip"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "free disk space" in err
    assert "delete" not in err and "damaged" not in err
    assert pt.cached_models() == [] and list((cache / "models").iterdir()) == []
    assert archives["zip"].is_file()


def test_a_finished_but_unverified_download_is_verified_before_use(archives, cache, monkeypatch):
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    # killed after gdown finished and before verification, with a recorded digest it fails
    (downloads / wt.DIGEST_NAME).write_text(f"{'1' * 64}  {wt.ARCHIVE_NAME}\n")
    shutil.copyfile(archives["zip"], downloads / wt.UNVERIFIED_NAME)
    use_gdown(monkeypatch, FakeGdown(archives["zip"]))
    with pytest.raises(wt.WeightsError, match="deleted"):
        wt.download_weights()
    assert not (downloads / wt.UNVERIFIED_NAME).exists() and pt.cached_models() == []


def test_offline_or_without_gdown_the_error_is_one_clear_line(cache, monkeypatch, capsys):
    requests = pytest.importorskip("requests")
    error = requests.exceptions.ConnectionError("Max retries exceeded\nwith url: ...")
    use_gdown(monkeypatch, FakeGdown(error=error))
    assert cli_main(["download", "weights"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach Google Drive" in err and "--from" in err
    use_gdown(monkeypatch, None)  # gdown not installed
    assert cli_main(["download", "weights"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[download]"' in err
    assert pt.cached_models() == []


def test_download_weights_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["download", "weights", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m densflow download weights")
    assert "--cache-dir" in out and "--from" in out and "DENSFLOW_CACHE" in out
    assert "--root" not in out  # the old spelling works, but is not shown


def test_a_broken_run_folder_alone_is_an_error_that_names_it(tree, tmp_path, cache, capsys):
    with pytest.raises(wt.WeightsError, match="none of the 1 run folders"):
        wt.download_weights(source=tree / CORRUPT)
    assert capsys.readouterr().out.startswith("skipped run folder .: CheckpointError: cannot read")


def test_a_plain_tar_of_run_folders_converts(tree, tmp_path, cache):
    archive = tmp_path / "runs.tar"
    with tarfile.open(archive, "w") as tf:  # uncompressed: each checkpoint.pt is a zip inside
        tf.add(tree, arcname="weights")
    assert zipfile.is_zipfile(archive)
    assert sorted(wt.download_weights(source=archive)) == sorted(RUNS.values())


def test_run_folders_packed_one_by_one_are_found(golden, tree, tmp_path, cache):
    outer = tmp_path / "outer"
    outer.mkdir()
    make_archive(tree / "DenseFlow", outer / "inner.zip", "zip")
    make_archive(tree / "celeba_run", outer / "celeba.tar.gz", "tgz")
    archive = make_archive(outer, tmp_path / "outer.zip", "zip")
    assert sorted(wt.download_weights(source=archive)) == ["celeba", "cifar10", "imagenet32"]


def test_an_archive_without_run_folders_or_of_another_type_is_an_error(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(wt.WeightsError, match="no run folder"):
        wt.download_weights(source=tmp_path / "empty")
    (tmp_path / "file.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(600))
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        wt.download_weights(source=tmp_path / "file.7z")


def test_two_runs_of_one_dataset_get_distinct_names(golden, tmp_path, cache):
    write_official_run(tmp_path / "a" / "first", golden)
    write_official_run(tmp_path / "b" / "second", golden)
    assert sorted(wt.download_weights(source=tmp_path)) == ["cifar10", "cifar10-second"]


def test_convert_writes_a_model_directory(golden, tree, tmp_path, capsys):
    out = tmp_path / "converted"
    run = tree / "DenseFlow" / "cifar10_run"
    assert cli_main(["convert", str(run), str(out), "--format", "pretrained"]) == 0
    assert pt.is_model_dir(out)
    state = load_official(run).state_dict()
    assert all(
        torch.equal(v, state[k]) for k, v in DenseFlow.from_pretrained(out).state_dict().items()
    )


def test_the_old_root_option_still_names_the_cache_with_a_warning(golden, tmp_path, capsys):
    write_official_run(tmp_path / "runs" / "a", golden)
    cache = tmp_path / "elsewhere"
    argv = ["download", "weights", "--root", str(cache), "--from", str(tmp_path / "runs")]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert err == "warning: --root is deprecated; use --cache-dir\n"
    assert pt.cached_models(cache) == ["cifar10"]


def test_a_source_inside_the_cache_it_rewrites_is_refused(golden, cache):
    runs = write_official_run(cache / "models" / "run", golden)
    with pytest.raises(wt.WeightsError, match="lies inside the cache"):
        wt.download_weights(source=runs)
    with pytest.raises(wt.WeightsError, match="--from .*nowhere: no such file or folder"):
        wt.download_weights(source=cache / "nowhere")
