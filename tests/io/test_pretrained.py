"""Model directories: config.json + model.safetensors, written and read by the safetensors
package; other files in the folder stay; every malformed file is refused in one line."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from utils import assert_one_line, init_actnorms, perturb, run_cli, snapshot

from densflow import DenseFlow, DenseFlowConfig, fixed_noise
from densflow.io import files
from densflow.io import pretrained as pt
from densflow.io.checkpoint import CheckpointError
from densflow.io.resolve import load
from densflow.utils.provenance import provenance


@pytest.fixture
def tiny_model(float64):
    torch.manual_seed(0)
    model = perturb(DenseFlow(DenseFlowConfig.tiny()).double(), scale=0.1)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    return init_actnorms(model, x).eval(), x


def logp(model: DenseFlow, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), fixed_noise(0.0):
        return model.log_prob(x)


def test_save_and_from_pretrained_give_the_same_model(tiny_model, tmp_path):
    model, x = tiny_model
    assert model.save_pretrained(tmp_path / "m", dataset="cifar10") is None
    loaded = DenseFlow.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype for k in mine)
    assert torch.equal(logp(loaded, x), logp(model, x))  # float64, identical to the last bit


def test_a_model_directory_is_json_and_a_safetensors_file(tiny_model, tmp_path):
    model, _ = tiny_model
    pt.save_pretrained(model, tmp_path / "m", dataset="celeba", source="test")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [pt.CONFIG_NAME, pt.WEIGHTS_NAME]
    config = json.loads((tmp_path / "m" / pt.CONFIG_NAME).read_text())
    assert config.pop("model_type") == "densflow" and config.pop("format_version") == 1
    assert (config.pop("dataset"), config.pop("source")) == ("celeba", "test")
    assert config.pop("provenance") == provenance()  # the code that wrote it
    assert DenseFlowConfig.from_dict(config) == model.config
    with safe_open(tmp_path / "m" / pt.WEIGHTS_NAME, framework="pt") as f:  # the library reads it
        assert f.metadata() == {"format": "pt"}
        state = model.state_dict()
        assert set(f.keys()) == set(state)
        assert all(torch.equal(f.get_tensor(k), state[k]) for k in state)


def test_save_pretrained_writes_into_a_folder_and_leaves_its_other_files(tiny_model, tmp_path):
    model, x = tiny_model
    repo = tmp_path / "cloned_hub_repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "README.md").write_text("# my model card\n")
    pt.save_pretrained(model, repo, dataset="cifar10")
    pt.save_pretrained(model, repo, dataset="celeba")  # and again, over its own files
    assert (repo / "README.md").read_text() == "# my model card\n" and (repo / ".git").is_dir()
    assert sorted(p.name for p in repo.iterdir()) == [
        ".git", "README.md", pt.CONFIG_NAME, pt.WEIGHTS_NAME
    ]  # fmt: skip
    assert pt.read_pretrained_config(repo)[1]["dataset"] == "celeba"
    assert torch.equal(logp(load(repo), x), logp(model, x))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file; a model directory is a folder"):
        pt.save_pretrained(model, tmp_path / "file")


def test_an_interrupted_save_leaves_the_previous_files(tiny_model, tmp_path, monkeypatch):
    model, _ = tiny_model
    target = tmp_path / "m"
    pt.save_pretrained(model, target, dataset="cifar10")
    before = snapshot(tmp_path)

    def killed(self, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(files._Sink, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        pt.save_pretrained(model, target, dataset="celeba")
    assert snapshot(tmp_path) == before  # both files as they were, no temporary left


# ----------------------------------------------------------------------------- dtypes
def library_dtypes() -> list[torch.dtype]:
    """Every dtype that ``safetensors.torch.save_file`` writes on this machine."""
    candidates = [
        getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)
    ]
    written = []
    for dtype in sorted(set(candidates), key=str):
        try:
            safetensors.torch.save({"t": torch.zeros(2, dtype=torch.float32).to(dtype)})
        except Exception:  # noqa: BLE001 - not a dtype the library writes
            continue
        written.append(dtype)
    return written


COMPUTED = {torch.float64, torch.float32, torch.float16, torch.bfloat16}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A tiny model's directory, saved once; tests work on copies."""
    torch.manual_seed(0)
    model = DenseFlow(DenseFlowConfig.tiny())
    folder = tmp_path_factory.mktemp("template") / "m"
    pt.save_pretrained(model, folder)
    return folder, model.state_dict()


@pytest.fixture
def model_dir(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(template[0], tmp_path / "m"))


@pytest.mark.parametrize("dtype", library_dtypes(), ids=str)
def test_every_dtype_the_library_writes_loads_or_is_refused_in_one_line(
    template, model_dir, tmp_path, dtype, capsys
):
    state, folder = template[1], model_dir
    cast = {k: v.to(dtype).contiguous() if v.is_floating_point() else v for k, v in state.items()}
    safetensors.torch.save_file(cast, folder / pt.WEIGHTS_NAME, metadata={"format": "pt"})
    if dtype in COMPUTED:
        model = load(folder)
        assert {p.dtype for p in model.parameters()} == {dtype}
        return
    before = snapshot(tmp_path)
    status, _, err = run_cli(["sample", "m", "--out", "s.png", "--n", "1"], capsys)
    assert status == 2
    assert_one_line(
        err, r"m/model\.safetensors(:| stores) .*(a DenseFlow computes in|the other kind of number)"
    )
    assert snapshot(tmp_path) == before


def test_integer_weights_or_float_counters_are_refused(template, model_dir):
    state = template[1]
    swapped = {k: v.contiguous() for k, v in state.items()}
    swapped["prior.loc"] = state["prior.loc"].to(torch.int64)
    safetensors.torch.save_file(swapped, model_dir / pt.WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"prior\.loc \(torch\.int64\) should hold the other"):
        load(model_dir)


# ----------------------------------------------------------------------------- malformed files
def header_file(header, body: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


GOOD_HEADER = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BAD_WEIGHTS = {
    "bad JSON": (header_file(b"{not json", bytes(8)), "invalid JSON in header"),
    "metadata not a dict": (
        header_file({**GOOD_HEADER, "__metadata__": [1]}, bytes(8)),
        "invalid JSON in header",
    ),
    "metadata values not strings": (
        header_file({**GOOD_HEADER, "__metadata__": {"format": 1}}, bytes(8)),
        "invalid JSON in header",
    ),
    "offsets past the end": (
        header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),
        "invalid offset|not fully covered",
    ),
    "overlapping ranges": (
        header_file(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),
        "invalid offset",
    ),
    "trailing bytes": (header_file(GOOD_HEADER, bytes(9)), "not fully covered"),
    "header length past the end": (header_file(GOOD_HEADER, bytes(8), 10**6), "header"),
    "shorter than its length": (b"\x01\x02\x03", "header too small"),
    "unknown dtype": (
        header_file({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        "unknown variant",
    ),
}
BAD_CONFIGS = {
    "config a list": ([1, 2], r"is not a densflow config"),
    "config nested too deeply": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "config of a newer format": ({"model_type": "densflow", "format_version": 9}, "version 9"),
    "config with a bad field": (
        {"model_type": "densflow", "format_version": 1, "num_landmarks": 0},
        r"num_landmarks must be an integer in \[1, 4096\]",
    ),
    "config fields a list": (
        {"model_type": "densflow", "format_version": 1, "block_config": "abc"},
        "block_config must be a sequence of integers",
    ),
}


@pytest.mark.parametrize("raw, pattern", BAD_WEIGHTS.values(), ids=BAD_WEIGHTS.keys())
def test_a_malformed_weights_file_is_exit_2_in_one_line(model_dir, raw, pattern, capsys):
    (model_dir / pt.WEIGHTS_NAME).write_bytes(raw)
    before = snapshot(model_dir.parent)
    status, _, err = run_cli(["sample", "m", "--out", "s.png", "--n", "1"], capsys)
    assert status == 2
    assert_one_line(err, rf"m/model\.safetensors is not a valid safetensors file: .*({pattern})")
    assert snapshot(model_dir.parent) == before


@pytest.mark.parametrize("content, pattern", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_malformed_config_is_exit_2_in_one_line(model_dir, content, pattern, capsys):
    text = content if isinstance(content, str) else json.dumps(content)
    (model_dir / pt.CONFIG_NAME).write_text(text)
    before = snapshot(model_dir.parent)
    status, _, err = run_cli(["eval", "m", "--dataset", "photos", "--limit", "2"], capsys)
    assert status == 2
    assert_one_line(err, pattern)
    assert snapshot(model_dir.parent) == before


def test_a_huge_config_is_refused_without_reading_it(model_dir):
    with open(model_dir / pt.CONFIG_NAME, "wb") as f:
        f.truncate(10**9)  # sparse: no disk used
    with pytest.raises(CheckpointError, match="1,000,000,000 bytes, not a densflow config"):
        load(model_dir)
