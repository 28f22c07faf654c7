"""Model directories, the cache, and the authors' weights pipeline — all offline.

The archive is made here in the layout of the authors' file (run folders with ``args.pickle`` and
``check/checkpoint.pt``, nested at several depths, one corrupt) from the official-format golden
fixture; the download is a stand-in for gdown that serves it.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
import torch
from test_official import write_official_run  # tests/ is on sys.path
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig, fixed_noise, load_official, save_model
from densflow.cli import main as cli_main
from densflow.io import pretrained as pt
from densflow.io import weights as wt
from densflow.io.checkpoint import CheckpointError

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


def logp(model: DenseFlow, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), fixed_noise(0.0):
        return model.log_prob(x)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    return int(done.stdout)


# ----------------------------------------------------------------------------- safetensors codec
ALL_DTYPES = {
    "f64": torch.randn(3, 2, dtype=torch.float64),
    "f32": torch.randn(5, dtype=torch.float32),
    "f16": torch.randn(2, 2).half(),
    "bf16": torch.randn(3).bfloat16(),
    "i64": torch.tensor(7),  # 0-dim, like num_batches_tracked
    "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    "i16": torch.tensor([-3, 4], dtype=torch.int16),
    "i8": torch.tensor([-1], dtype=torch.int8),
    "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 4),
    "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
}


def test_safetensors_codec_round_trips_every_dtype(tmp_path):
    path = tmp_path / "t.safetensors"
    pt.save_safetensors(ALL_DTYPES, path, metadata={"format": "pt"})
    loaded, metadata = pt.load_safetensors(path)
    assert metadata == {"format": "pt"} and set(loaded) == set(ALL_DTYPES)
    for name, t in ALL_DTYPES.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_safetensors_files_interoperate_with_the_safetensors_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    tensors = {k: v.contiguous() for k, v in ALL_DTYPES.items()}
    pt.save_safetensors(tensors, ours, metadata={"format": "pt"})
    for name, t in st.load_file(str(ours)).items():
        assert torch.equal(t, tensors[name]), name
    st.save_file(tensors, str(theirs), metadata={"format": "pt"})
    loaded, metadata = pt.load_safetensors(theirs)
    assert metadata == {"format": "pt"}
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-3], "ends past the end of the file"),
        (lambda b: b + b"\0", "bytes after the last tensor"),
        (lambda b: b[:5], "shorter than its 8-byte header"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "exceeds the file"),
        (lambda b: b[:8] + b"x" + b[9:], "header is not JSON"),
    ],
)
def test_a_damaged_safetensors_file_is_refused_in_one_line(tmp_path, damage, message):
    path = tmp_path / "t.safetensors"
    pt.save_safetensors({"a": torch.ones(4), "b": torch.zeros(2, dtype=torch.int64)}, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        pt.load_safetensors(path)
    assert "\n" not in str(info.value)


def test_overlapping_byte_ranges_are_refused(tmp_path):
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    with pytest.raises(CheckpointError, match="overlap or leave a gap"):
        pt.load_safetensors(path)


# ----------------------------------------------------------------------------- model directories
@pytest.fixture
def tiny_model(float64):
    torch.manual_seed(0)
    model = perturb(DenseFlow(DenseFlowConfig.tiny()).double(), scale=0.1)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    return init_actnorms(model, x).eval(), x


def test_save_and_from_pretrained_give_the_same_model(tiny_model, tmp_path):
    model, x = tiny_model
    out = model.save_pretrained(tmp_path / "m", dataset="cifar10")
    assert out is None  # DenseFlow.save_pretrained, like nn.Module methods, returns nothing
    loaded = DenseFlow.from_pretrained(str(tmp_path / "m"))
    assert loaded.config == model.config and not loaded.training
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype for k in mine)
    assert torch.equal(logp(loaded, x), logp(model, x))  # float64, identical to the last bit


def test_a_model_directory_holds_json_and_raw_tensor_bytes_only(tiny_model, tmp_path):
    model, _ = tiny_model
    pt.save_pretrained(model, tmp_path / "m", dataset="celeba", source="test")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [pt.CONFIG_NAME, pt.WEIGHTS_NAME]
    config = json.loads((tmp_path / "m" / pt.CONFIG_NAME).read_text())
    assert config.pop("model_type") == "densflow" and config.pop("format_version") == 1
    assert (config.pop("dataset"), config.pop("source")) == ("celeba", "test")
    assert DenseFlowConfig.from_dict(config) == model.config
    raw = (tmp_path / "m" / pt.WEIGHTS_NAME).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert set(header) == set(model.state_dict())
    # the tensors' byte ranges fill the rest of the file exactly: there is no room for a pickle
    data = sorted(tuple(e["data_offsets"]) for e in header.values())
    assert data[0][0] == 0 and all(a[1] == b[0] for a, b in zip(data, data[1:], strict=False))
    assert 8 + n + data[-1][1] == len(raw)
    with pytest.raises(Exception):  # noqa: B017 - torch.load fails in one of several ways
        torch.load(io.BytesIO(raw), weights_only=False)


def test_save_pretrained_replaces_a_model_directory_but_nothing_else(tiny_model, tmp_path):
    model, _ = tiny_model
    target = tmp_path / "m"
    pt.save_pretrained(model, target, dataset="cifar10")
    pt.save_pretrained(model, target, dataset="celeba")  # replacing a model directory is fine
    assert pt.read_pretrained_config(target)[1]["dataset"] == "celeba"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or old folder left
    (target / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt"):
        pt.save_pretrained(model, target)
    assert (target / "notes.txt").read_text() == "mine"


def test_an_interrupted_save_pretrained_leaves_the_previous_directory(tiny_model, tmp_path):
    model, _ = tiny_model
    target = tmp_path / "m"
    pt.save_pretrained(model, target, dataset="cifar10")
    before = (target / pt.WEIGHTS_NAME).read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pt, "save_safetensors", killed)
        with pytest.raises(KeyboardInterrupt):
            pt.save_pretrained(model, target, dataset="celeba")
    assert (target / pt.WEIGHTS_NAME).read_bytes() == before
    assert pt.read_pretrained_config(target)[1]["dataset"] == "cifar10"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_from_pretrained_finds_a_cached_name(tiny_model, cache):
    model, x = tiny_model
    pt.save_pretrained(model, cache / "models" / "cifar10")
    assert pt.cached_models() == ["cifar10"]
    assert torch.equal(logp(DenseFlow.from_pretrained("cifar10"), x), logp(model, x))


def test_a_missing_cached_name_says_to_download_the_weights(cache):
    with pytest.raises(CheckpointError) as info:
        DenseFlow.from_pretrained("cifar10")
    message = str(info.value)
    assert "python -m densflow download weights" in message and str(cache) in message
    assert "\n" not in message


def test_from_pretrained_explains_what_is_not_a_model_directory(tmp_path, tiny_model):
    model, _ = tiny_model
    save_model(model, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="densflow.load_model"):
        pt.from_pretrained(tmp_path / "model.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a densflow model directory"):
        pt.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no model directory at"):
        pt.from_pretrained(tmp_path / "nowhere" / "m")
    pt.save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / pt.CONFIG_NAME).read_text())
    (tmp_path / "m" / pt.CONFIG_NAME).write_text(json.dumps({**config, "format_version": 9}))
    with pytest.raises(CheckpointError, match="format_version 9"):
        pt.from_pretrained(tmp_path / "m")


def test_from_pretrained_downloads_a_hub_repo_with_huggingface_hub(
    tiny_model, tmp_path, monkeypatch
):
    model, x = tiny_model
    pt.save_pretrained(model, tmp_path / "snapshot")
    calls = []

    def snapshot_download(*, repo_id, revision, allow_patterns):
        calls.append((repo_id, revision, sorted(allow_patterns)))
        return str(tmp_path / "snapshot")

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    loaded = DenseFlow.from_pretrained("someone/densflow-cifar10", revision="v1")
    assert calls == [("someone/densflow-cifar10", "v1", [pt.CONFIG_NAME, pt.WEIGHTS_NAME])]
    assert torch.equal(logp(loaded, x), logp(model, x))

    def offline(**kwargs):
        raise OSError("Network is unreachable\nmore detail")

    hub.snapshot_download = offline
    with pytest.raises(CheckpointError, match="cannot fetch 'someone/x'.*Network is unreachable"):
        DenseFlow.from_pretrained("someone/x")


def test_a_hub_repo_id_without_huggingface_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r'pip install -e "\.\[hub\]"'):
        DenseFlow.from_pretrained("someone/densflow-cifar10")


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


@pytest.mark.parametrize("kind", ["zip", "tgz", "folder"])
def test_download_weights_from_a_given_archive_or_folder(
    golden, official, tree, archives, cache, kind, capsys
):
    source = tree if kind == "folder" else archives[kind]
    found = wt.download_weights(source=source)
    assert sorted(found) == sorted(RUNS.values())
    check_cache(golden, official, capsys.readouterr().out)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # nothing left over


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
    assert cli_main(["download", "weights", "--root", str(cache)]) == 0
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
    pid = dead_pid()
    # what a killed run leaves: gdown's partial bytes, half an unpacked tree, half a model
    (downloads / f"{wt.UNVERIFIED_NAME}abcdefgh.part").write_bytes(b"PK\3\4 partial")
    (cache / f".weights.unpack-{pid}-0123abcd" / "DenseFlow").mkdir(parents=True)
    half = models / f".cifar10.tmp-{pid}-0123abcd"
    half.mkdir()
    (half / pt.CONFIG_NAME).write_text("{}")
    with pytest.raises(CheckpointError, match="download weights"):
        DenseFlow.from_pretrained("cifar10")  # the partial model is not a model
    # a conversion killed after the first model: that one is complete, the others absent
    real_save = pt.save_safetensors
    saved = []

    def killed_after_one(*args, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(args[1])
        real_save(*args, **kwargs)

    use_gdown(monkeypatch, FakeGdown(archives["tgz"]))
    with monkeypatch.context() as mp:
        mp.setattr(pt, "save_safetensors", killed_after_one)
        with pytest.raises(KeyboardInterrupt):
            wt.download_weights()
    assert pt.cached_models() == ["cifar10"]  # path order: DenseFlow/ before celeba_run
    assert not (downloads / wt.DONE_NAME).exists()
    assert [p.name for p in models.iterdir()] == ["cifar10"]  # the killed one left nothing
    capsys.readouterr()
    assert sorted(wt.download_weights()) == sorted(RUNS.values())
    out = capsys.readouterr().out
    assert "cifar10: " in out and out.count("already converted") == 1
    check_cache(golden, official, out)
    assert sorted(p.name for p in cache.iterdir()) == ["downloads", "models"]  # stale ones gone
    assert sorted(p.name for p in downloads.iterdir()) == sorted(
        [wt.ARCHIVE_NAME, wt.DIGEST_NAME, wt.DONE_NAME]
    )


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
    assert "--root" in out and "--from" in out and "DENSFLOW_CACHE" in out


def test_a_broken_run_folder_alone_is_an_error_that_names_it(tree, tmp_path, cache, capsys):
    with pytest.raises(wt.WeightsError, match="none of the 1 run folders"):
        wt.download_weights(source=tree / CORRUPT)
    assert capsys.readouterr().out.startswith("skipped run folder .: CheckpointError: cannot read")


# ----------------------------------------------------------------------------- unpacking safely
def tar_with(tmp_path, *members: tarfile.TarInfo) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/absolute.txt", "a/../../escaped.txt"])
def test_members_leaving_the_folder_stop_the_unpacking(tmp_path, name):
    dest = tmp_path / "dest"
    with pytest.raises(wt.WeightsError, match="points outside the archive"):
        wt.unpack(tar_with(tmp_path, member(name)), dest)
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(wt.WeightsError, match="points outside the archive"):
        wt.unpack(zpath, dest)
    assert not (tmp_path / "escaped.txt").exists()


def test_links_in_an_archive_are_never_created(tmp_path, capsys):
    dest = tmp_path / "dest"
    archive = tar_with(
        tmp_path,
        member("run/ok.txt"),
        member("run/etc", tarfile.SYMTYPE, "/etc"),
        member("run/hard", tarfile.LNKTYPE, "/etc/passwd"),
    )
    wt.unpack(archive, dest)
    assert sorted(p.name for p in (dest / "run").iterdir()) == ["ok.txt"]
    zpath = tmp_path / "links.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        link = zipfile.ZipInfo("run/etc")
        link.external_attr = (0o120777 << 16) | 0x20
        zf.writestr(link, "/etc")
        zf.writestr("run/ok2.txt", b"y")
    wt.unpack(zpath, dest)
    assert sorted(p.name for p in (dest / "run").iterdir()) == ["ok.txt", "ok2.txt"]
    assert capsys.readouterr().out.count("skipped archive member") == 3


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
    with pytest.raises(wt.WeightsError, match="neither a zip nor a tar"):
        wt.download_weights(source=tmp_path / "file.7z")


def test_two_runs_of_one_dataset_get_distinct_names(golden, tmp_path, cache):
    write_official_run(tmp_path / "a" / "first", golden)
    write_official_run(tmp_path / "b" / "second", golden)
    assert sorted(wt.download_weights(source=tmp_path)) == ["cifar10", "cifar10-second"]


# ----------------------------------------------------------------------------- resolve_model
def test_resolve_model_maps_every_kind_of_name(golden, tree, archives, cache, tiny_model, tmp_path):
    wt.download_weights(source=archives["zip"])
    model, dataset = pt.resolve_model("official", "cifar10")
    assert dataset == "cifar10" and model.config.image_size == 32
    assert pt.resolve_model("celeba")[1] == "celeba"
    assert pt.resolve_model(tree / "celeba_run")[1] == "celeba"  # an official run folder
    tiny, _ = tiny_model
    save_model(tiny, tmp_path / "t.pt")
    from_checkpoint, dataset = pt.resolve_model(tmp_path / "t.pt")
    assert dataset is None and not from_checkpoint.training
    pt.save_pretrained(tiny, tmp_path / "dir", dataset="imagenet64")
    assert pt.resolve_model(str(tmp_path / "dir"), "imagenet64")[1] == "imagenet64"
    assert pt.resolve_model(tiny) == (tiny, None)
    with pytest.raises(CheckpointError, match="trained on celeba, not cifar10"):
        pt.resolve_model("celeba", "cifar10")
    with pytest.raises(CheckpointError, match="needs the dataset"):
        pt.resolve_model("official")


def test_convert_writes_a_model_directory(golden, tree, tmp_path, capsys):
    out = tmp_path / "converted"
    run = tree / "DenseFlow" / "cifar10_run"
    assert cli_main(["convert", str(run), str(out), "--format", "pretrained"]) == 0
    assert pt.is_model_dir(out)
    state = load_official(run).state_dict()
    assert all(torch.equal(v, state[k]) for k, v in pt.from_pretrained(out).state_dict().items())
