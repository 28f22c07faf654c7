"""Equivalence with the official implementation, through the fixtures in tests/fixtures/official."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from utils import write_official_run

from densflow import DenseFlow, DenseFlowConfig, fixed_noise
from densflow.attention import NystromAttention, iterative_pinv
from densflow.base import forward_with_draws, squeeze
from densflow.cli import main as cli_main
from densflow.io import load
from densflow.io.checkpoint import CheckpointError
from densflow.io.official import (
    config_from_state_dict,
    convert_state_dict,
    load_official,
    official_key_map,
)
from densflow.multiscale import factor_out
from densflow.performance.attention import broadcast_pinv

D = 3 * 32 * 32
# The official model stores −ln 256 rounded to float32; densflow uses the exact value, which
# raises ln p by D·(−ln 256 − float32(−ln 256)) nats (about 4.68e-5 for 32×32).
LN256_SHIFT = D * (-math.log(256.0) - float(torch.tensor(-math.log(256.0), dtype=torch.float32)))


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "golden_A.pt", weights_only=True)


@pytest.fixture
def golden_model(golden, float64):
    model = DenseFlow(config_from_state_dict(golden["state_dict"], image_size=32)).double()
    model.load_state_dict(convert_state_dict(golden["state_dict"], model))
    return model.eval()


def test_fixture_config_is_inferred_from_the_weights(golden):
    cfg = golden["config"]
    inferred = config_from_state_dict(golden["state_dict"])
    assert inferred.block_config == tuple(cfg["block_config"])
    assert inferred.layers_config == tuple(cfg["layers_config"])
    assert inferred.mid_channels == tuple(cfg["layer_mid_chnls"])
    assert inferred.growth_rate == cfg["growth_rate"]
    assert (inferred.coupling_dense_depth, inferred.coupling_dense_growth) == (7, 6)
    assert (
        inferred.deq_num_steps,
        inferred.deq_context_channels,
        inferred.deq_mid_channels,
        inferred.deq_depth,
        inferred.deq_growth,
    ) == (2, 8, 8, 2, 8)
    assert (inferred.deq_context_depth, inferred.deq_context_growth) == (4, 16)
    assert sum(p.numel() for p in DenseFlow(inferred).parameters()) == golden["num_params"]


@pytest.mark.parametrize("noise", ["zero", "half"])
def test_golden_log_likelihood(golden, golden_model, noise):
    expected = golden[f"logp_{noise}_noise"]
    with torch.no_grad(), fixed_noise(0.0 if noise == "zero" else 0.5):
        logp = golden_model.log_prob(golden["x"])
    assert torch.all(((logp - expected) / expected).abs() <= 1e-6)  # the criterion
    # and, once the documented ln 256 rounding is accounted for, to float64 round-off
    assert torch.allclose(logp - LN256_SHIFT, expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("noise", ["zero", "half"])
def test_golden_per_transform_terms_and_latent(golden, golden_model, noise):
    """Our per-term breakdown, grouped like the official top-level transforms."""
    with torch.no_grad(), fixed_noise(0.0 if noise == "zero" else 0.5):
        terms = golden_model.log_prob_terms(golden["x"])
        v, _ = forward_with_draws(golden_model.dequantization, golden["x"].double())
        z = golden_model.encode(v)[-1]
    rows = golden[f"transform_ldj_{noise}_noise"]
    grouped = [terms["dequantization"] - LN256_SHIFT, 0, 0]
    for b in range(3):
        grouped.append(sum(v for k, v in terms.items() if k.startswith(f"block{b}.")))
        if b < 2:
            grouped.append(terms[f"transition{b}"])
    for i, ours in enumerate(grouped):
        assert torch.allclose(
            torch.as_tensor(ours, dtype=torch.float64).expand(4), rows[i], rtol=1e-10, atol=1e-8
        ), f"transforms.{i}"
    assert torch.allclose(terms["prior"], golden[f"base_logp_{noise}_noise"], rtol=1e-10)
    assert torch.allclose(z, golden[f"z_{noise}_noise"], atol=1e-9)


def test_golden_intermediate_outputs(golden, golden_model):
    """Stage by stage, against the official top-level transforms' outputs (first 2 images)."""
    outs = golden["transform_out_zero_noise"]
    x = golden["x"][:2]
    with torch.no_grad(), fixed_noise(0.0):
        v, _ = forward_with_draws(golden_model.dequantization, x.double())
        assert torch.allclose(v, outs["transforms.0"], atol=1e-12)
        h = squeeze(v - 0.5)
        for b, block in enumerate(golden_model.blocks):
            if b > 0:
                h, _ = factor_out(h)
                assert torch.allclose(h, outs[f"transforms.{2 + 2 * b}"], atol=1e-9)
            h, _ = forward_with_draws(block, h)
            assert torch.allclose(h, outs[f"transforms.{3 + 2 * b}"], atol=1e-9), b


@pytest.mark.parametrize("noise", ["zero", "half"])
def test_golden_samples(golden, golden_model, noise):
    with fixed_noise(0.0 if noise == "zero" else 0.5):
        continuous = golden_model.sample_continuous(2)
        samples = golden_model.sample(2)
    assert torch.allclose(continuous, golden[f"samples_{noise}_noise_continuous"], atol=1e-12)
    assert torch.equal(samples.long(), golden[f"samples_{noise}_noise"])


def test_golden_nystrom_component(golden, float64):
    ref = golden["component_nystrom"]
    attention = NystromAttention(
        ref["in_channels"], ref["embed_dim"], ref["num_landmarks"]
    ).double()
    renamed = {k.replace("out_transform", "out"): v for k, v in ref["state_dict"].items()}
    attention.load_state_dict(renamed)
    # both ways of writing the m×m products: eager's batched GEMMs, and the broadcast sums that
    # torch.compile fuses
    for pinv in (iterative_pinv, broadcast_pinv):
        assert torch.allclose(pinv(ref["k2"], 6), ref["k2_iterative_inv"], atol=1e-14)
    assert torch.allclose(attention(ref["input"]), ref["output"], atol=1e-12)


def read_tsv(path):
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return {key: tuple(int(d) for d in shape.split(",") if d) for key, shape, _, _ in rows}


@pytest.mark.slow
def test_key_map_matches_the_official_key_list_one_to_one(reference_dir):
    # The official 32px and 64px key lists are byte-identical, so the repository keeps one.
    official = read_tsv(reference_dir / "official_state_dict_keys.tsv")
    model = DenseFlow(DenseFlowConfig.paper())
    ours = model.state_dict()
    key_map = official_key_map(model)
    assert set(key_map) == set(ours)  # every densflow entry has an official name
    assert len(set(key_map.values())) == len(key_map)  # and no two share one
    constants = set(official) - set(key_map.values())
    assert constants == {
        "transforms.0.ldj_per_dim",
        "transforms.1._shift",
        "transforms.1._scale",
        "transforms.0.encoder.transforms.10.temperature",
        "transforms.4.dist.buffer",
        "transforms.6.dist.buffer",
    }
    assert set(key_map.values()) <= set(official)
    for mine, theirs in key_map.items():
        assert tuple(ours[mine].shape) == official[theirs], (mine, theirs)
    # and conversion accepts a state dict with exactly the official keys and shapes
    fake = {k: torch.zeros(s) for k, s in official.items()}
    fake.update(
        {
            "transforms.0.ldj_per_dim": torch.tensor(-math.log(256.0)),
            "transforms.1._shift": torch.tensor(-0.5),
            "transforms.1._scale": torch.tensor(1.0),
            "transforms.0.encoder.transforms.10.temperature": torch.tensor(1.0),
        }
    )
    assert set(convert_state_dict(fake, model)) == set(ours)


def test_load_official_run_folder_with_dataparallel_prefix(golden, tmp_path, float64):
    run = write_official_run(tmp_path / "run", golden)
    model = load_official(run).double()
    assert model.config.image_size == 32 and not model.training
    with torch.no_grad(), fixed_noise(0.5):
        logp = model.log_prob(golden["x"])
    assert torch.allclose(logp - LN256_SHIFT, golden["logp_half_noise"], rtol=1e-12, atol=1e-9)


def test_cli_convert_writes_a_densflow_checkpoint(golden, tmp_path, float64, capsys):
    run = write_official_run(tmp_path / "run", golden, prefix="")
    out = tmp_path / "converted.pt"
    assert cli_main(["convert", str(run), str(out)]) == 0
    assert "converted" in capsys.readouterr().out
    model = load(out).double().eval()
    with torch.no_grad(), fixed_noise(0.0):
        logp = model.log_prob(golden["x"])
    assert torch.allclose(logp - LN256_SHIFT, golden["logp_zero_noise"], rtol=1e-12, atol=1e-9)


def test_args_pickle_decides_the_image_size(golden, tmp_path):
    run = write_official_run(tmp_path / "run", golden, dataset="imagenet64")
    assert load_official(run).config.image_size == 64


def test_mismatched_checkpoint_names_missing_unexpected_and_misshaped_keys(golden, golden_model):
    state = dict(golden["state_dict"])
    del state["base_dist.loc"]
    state["transforms.99.surprise"] = torch.zeros(1)
    state["transforms.0.encoder.transforms.0.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state, golden_model)
    message = str(err.value)
    assert "\n" not in message
    assert "missing: base_dist.loc;" in message
    assert "unexpected: transforms.99.surprise;" in message
    assert "mis-shaped: transforms.0.encoder.transforms.0.weight: checkpoint (5, 5)" in message


def test_wrong_constant_buffer_is_reported(golden, golden_model):
    state = dict(golden["state_dict"])
    state["transforms.1._shift"] = torch.tensor(0.0)
    with pytest.raises(CheckpointError, match=r"transforms\.1\._shift is 0\.0, expected -0\.5"):
        convert_state_dict(state, golden_model)


def test_args_pickle_that_would_run_code_is_refused(golden, tmp_path):
    run = write_official_run(tmp_path / "run", golden)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with open(run / "args.pickle", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(CheckpointError, match="only argparse.Namespace"):
        load_official(run)


def test_folder_without_checkpoint_and_foreign_files_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="check/checkpoint.pt"):
        load_official(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no official checkpoint"):
        load_official(tmp_path / "nowhere")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_official(tmp_path / "other.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_official(tmp_path / "torn.pt")
    assert cli_main(["convert", str(tmp_path / "empty"), str(tmp_path / "out.pt")]) == 2
