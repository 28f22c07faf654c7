"""The ablation variants are valid flows, matched in parameters, and the study resumes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from densflow import ablations
from densflow.base import standard_normal_log_prob
from densflow.config import AUGMENTATIONS, COUPLING_NETS, DenseFlowConfig
from densflow.model import DenseFlow, input_noise_channels
from densflow.training import read_metrics

VARIANTS = [(a, c) for a in AUGMENTATIONS for c in COUPLING_NETS]


@pytest.mark.slow
def test_the_defaults_are_the_paper_model():
    config = DenseFlowConfig()
    assert (config.coupling_net, config.augmentation) == ("dense+attention", "incremental")
    assert ablations.count_parameters(config) == 130_647_294


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(coupling_net="conv"), "coupling_net must be one of"),
        (dict(augmentation="output"), "augmentation must be one of"),
        (dict(augmentation="input", growth_rate=0), "needs growth_rate >= 1"),
    ],
)
def test_invalid_variant_fields_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        DenseFlowConfig.tiny(**changes)


def _perturbed(config: DenseFlowConfig) -> DenseFlow:
    """A float64 model in eval mode whose zero-initialised layers are not the identity."""
    torch.manual_seed(0)
    model = DenseFlow(config).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("augmentation, coupling_net", VARIANTS)
def test_every_block_of_every_variant_inverts_and_its_terms_are_the_log_det(
    augmentation, coupling_net
):
    model = _perturbed(DenseFlowConfig.tiny(augmentation=augmentation, coupling_net=coupling_net))
    block = model.blocks[0]  # 12 channels; run at 4×4 (16 positions, 4 landmarks) to keep J small
    g = torch.Generator().manual_seed(2)
    x = torch.randn((1, block.in_channels, 4, 4), generator=g, dtype=torch.float64)
    shapes = block.noise_shapes(tuple(x.shape))
    noise = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    z, terms = block.flow_forward(x, noise)
    assert z.shape == block.output_shape(tuple(x.shape))
    torch.testing.assert_close(block.flow_inverse(z), x, rtol=0, atol=1e-10)

    # Seen as a map of (x, e), the block is a bijection whose log-det is the sum of its terms
    # with each −ln N(e) added back (eqs. 7–8 for the couplings, eq. 4 for the units).
    names = list(shapes)

    def joint(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split([x.numel()] + [math.prod(shapes[k]) for k in names])
        drawn = {k: p.view(shapes[k]) for k, p in zip(names, parts[1:], strict=True)}
        return block.flow_forward(parts[0].view(x.shape), drawn)[0].flatten()

    flat = torch.cat([x.flatten(), *(noise[k].flatten() for k in names)])
    jacobian = torch.autograd.functional.jacobian(joint, flat, vectorize=True)
    _, logdet = torch.linalg.slogdet(jacobian)
    expected = sum(t.sum() for t in terms.values()) + sum(
        standard_normal_log_prob(noise[k]).sum() for k in names
    )
    torch.testing.assert_close(logdet, expected, rtol=1e-8, atol=1e-8)
    if augmentation == "none":
        assert not shapes and z.shape == x.shape


@pytest.mark.parametrize("augmentation, coupling_net", VARIANTS)
def test_every_variant_samples_back_its_own_latents(augmentation, coupling_net):
    model = _perturbed(DenseFlowConfig.tiny(augmentation=augmentation, coupling_net=coupling_net))
    g = torch.Generator().manual_seed(3)
    v = model.sample_continuous(2, generator=g)
    assert v.shape == (2, 3, 16, 16) and torch.isfinite(v).all()
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)
    assert torch.isfinite(model.log_prob(x, generator=g)).all()


def test_input_augmentation_adds_as_many_latent_dimensions_as_the_incremental_one():
    # small: 2 units in block 0 at 16×16 and 2 in block 1 at 8×8, growth 4: 4 + 4/4 = 5 channels.
    incremental = DenseFlowConfig.small()
    one_shot = dataclasses.replace(incremental, augmentation="input")
    assert input_noise_channels(incremental) == 5
    dims = [ablations.latent_dims(DenseFlow(c)) for c in (incremental, one_shot)]
    assert dims == [3 * 32 * 32 + 4 * 16 * 16 + 4 * 8 * 8] * 2
    plain = DenseFlow(dataclasses.replace(incremental, augmentation="none"))
    assert ablations.latent_dims(plain) == 3 * 32 * 32


def test_variants_are_matched_in_parameters():
    preset = ablations.ABLATION_PRESETS["cpu"]
    configs = ablations.variant_configs(preset, 32)
    assert set(configs) == {"glow", "input", "denseflow", "dense", "attention"} | {
        "growth2",
        "growth8",
    }
    target = ablations.count_parameters(configs["denseflow"])
    for name, config in configs.items():
        n = ablations.count_parameters(config)
        assert abs(n - target) <= ablations.PARAM_TOLERANCE * target, (name, n, target)
    # The widths were changed to get there: without matching, the plain flow is far smaller.
    unmatched = dataclasses.replace(configs["denseflow"], augmentation="none")
    assert ablations.count_parameters(unmatched) < 0.8 * target
    assert configs["glow"].augmentation == "none" and configs["growth8"].growth_rate == 8


def test_an_unreachable_parameter_count_is_refused():
    with pytest.raises(ValueError, match="cannot match 1,000 parameters within 5%"):
        ablations.match_parameters(DenseFlowConfig.tiny(), 1000)
    with pytest.raises(ValueError, match="unknown ablation variant 'glowish'"):
        ablations.variant_configs(ablations.ABLATION_PRESETS["smoke"], 32, ["glowish"])


def test_multiply_accumulates_count_an_added_module():
    model = DenseFlow(DenseFlowConfig.tiny())
    base = ablations.multiply_accumulates(model)
    # One more glow-like module in the last block adds at least its 1×1 conv's C²·H·W MACs.
    bigger = DenseFlow(DenseFlowConfig.tiny(layers_config=(1, 1, 3)))
    c, side = model.blocks[2].out_channels, 2
    assert ablations.multiply_accumulates(bigger) - base >= c * c * side * side
    assert base > 0


@pytest.mark.slow
def test_the_study_resumes_per_variant_and_seed(tmp_path):
    out = tmp_path / "study"
    kwargs = dict(preset="smoke", out_dir=out, variants=["glow", "denseflow"], seeds=[0], steps=2,
                  timing_steps=0, log=lambda _: None)  # fmt: skip
    first = ablations.run(**kwargs)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"dataset", "preset", "steps", "seeds", "iw_samples", "variants", "runs",
                          "cost", "paper", "n_test_images", "param_tolerance"}  # fmt: skip
    for row in saved["variants"].values():
        assert math.isfinite(row["bpd_single"]) and math.isfinite(row["bpd_iw"])
        assert row["params"] > 0 and row["latent_dims"] >= 3 * 32 * 32 and row["macs"] > 0
    assert saved["variants"]["glow"]["latent_dims"] == 3 * 32 * 32
    assert not any(r["resumed"] for r in first["runs"])

    # Finished pairs are read back, not trained again.
    again = ablations.run(**kwargs)
    assert all(r["resumed"] for r in again["runs"])
    assert [r["bpd_single"] for r in again["runs"]] == [r["bpd_single"] for r in first["runs"]]
    starts = [e for e in read_metrics(out / "glow" / "seed0") if e["event"] == "start"]
    assert len(starts) == 1

    # A pair whose result is missing (interrupted after training) resumes from its checkpoint.
    (out / "glow" / "seed0" / "result.json").unlink()
    resumed = ablations.run(**kwargs)
    starts = [e for e in read_metrics(out / "glow" / "seed0") if e["event"] == "start"]
    assert [s["resumed"] for s in starts] == [False, True]
    glow = [r for r in resumed["runs"] if r["variant"] == "glow"][0]
    assert not glow["resumed"] and glow["bpd_single"] == first["runs"][0]["bpd_single"]


def test_the_command_line_runs_the_study(tmp_path, capsys):
    from densflow.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--help"])
    assert exit_info.value.code == 0 and "--preset" in capsys.readouterr().out
    out_dir = tmp_path / "cli"
    argv = ["ablate", "--preset", "smoke", "--variants", "glow", "denseflow", "--seeds", "0",
            "--steps", "1", "--timing-steps", "0", "--out-dir", str(out_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| glow |" in out and "| denseflow |" in out
    assert "untested (gap" in out  # one seed: the claim is not judged
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["steps"] == 1 and list(saved["variants"]) == ["glow", "denseflow"]


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet32", "imagenet64", "photos"])
def test_the_paper_column_is_table_1_of_the_stand_in_models(dataset):
    from densflow.data.registry import paper_table1

    reference = ablations.paper_reference(dataset)
    table1 = paper_table1()
    shown = reference["dataset"]
    assert shown == (dataset if dataset != "photos" else "imagenet32")
    assert reference["bpd"] == {
        variant: table1[model][shown] for variant, model in ablations.PAPER_STAND_INS.items()
    }
    # DenseFlow-74-10 is never worse than the published one-shot and plain flows (Table 1).
    assert reference["bpd"]["denseflow"] <= min(reference["bpd"].values())


def test_the_table_names_the_paper_model_beside_each_number():
    row = {"params": 10, "mid_channels": [4, 4, 4], "growth_rate": 0, "latent_dims": 3072,
           "macs": 2e6, "seconds_per_step": 0.1, "seconds_per_step_std": 0.0, "bpd_single": 5.0,
           "bpd_single_std": 0.1, "bpd_iw": 4.9, "bpd_iw_std": 0.1}  # fmt: skip
    results = {"iw_samples": 4, "paper": ablations.paper_reference("imagenet64"),
               "variants": {"glow": row, "dense": row}}  # fmt: skip
    lines = ablations.table(results).splitlines()
    assert "Table 1 (imagenet64)" in lines[0]
    assert lines[2].endswith("| 3.81 (Glow) |") and lines[3].endswith("| – |")


def _study(bpd: dict[str, list[float]]) -> dict:
    """A results dict as run() writes it, from each variant's per-seed bits/dim."""
    runs = [{"variant": v, "seed": s, "bpd_single": b} for v, bs in bpd.items()
            for s, b in enumerate(bs)]  # fmt: skip
    return {"runs": runs, "variants": ablations.summarize(
        [{**r, "params": 1, "latent_dims": 1, "macs": 1, "bpd_iw": r["bpd_single"],
          "seconds_per_step": None, "config": {"mid_channels": [1], "augmentation": "incremental",
                                               "growth_rate": 1}} for r in runs])}  # fmt: skip


def test_a_gap_that_every_seed_shares_holds_when_paired_by_seed():
    # Seeds move both variants together (4.2, 4.4, 4.6); the glow is 0.05 worse on every seed.
    results = _study({"denseflow": [4.20, 4.40, 4.60], "glow": [4.25, 4.44, 4.66]})
    (v,) = ablations.verdicts(results)
    assert v["gap"] == pytest.approx(0.05) and v["paired_gap"] == pytest.approx(0.05)
    assert v["verdict"] == "not separated"  # the seed spreads (0.2 each) hide it
    assert v["paired_spread"] == pytest.approx(0.01) and v["paired_verdict"] == "holds"


@pytest.mark.parametrize(
    ("glow", "paired_verdict"),
    [([4.10, 4.30, 4.50], "reversed"), ([4.30, 4.35, 4.60], "not separated")],
)
def test_a_paired_gap_is_reversed_or_not_separated(glow, paired_verdict):
    (v,) = ablations.verdicts(_study({"denseflow": [4.20, 4.40, 4.60], "glow": glow}))
    assert v["paired_verdict"] == paired_verdict
    assert v["paired"] == pytest.approx([g - d for g, d in zip(glow, [4.2, 4.4, 4.6], strict=True)])


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"timing_steps": -1}, r"timing_steps must be an integer in \[0, 10000\], got -1"),
     ({"seeds": []}, r"seeds is empty"),
     ({"seeds": [0, 1.5]}, r"seeds must be an integer in \[0, \d+\], got 1\.5"),
     ({"steps": 0}, r"steps must be an integer in \[1, \d+\], got 0"),
     ({"steps": 10**15}, r"steps must be an integer in \[1, \d+\], got 10+; set --steps"),
     ({"batch_size": 2.0}, r"batch_size must be an integer in \[1, 65536\], got 2\.0")],
)  # fmt: skip
def test_bad_study_arguments_are_refused_before_any_work(changes, message, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(ValueError, match=message):
        ablations.run(preset="smoke", out_dir=out, log=lambda _: None, **changes)
    assert not out.exists()


def test_a_run_cut_short_by_a_smaller_train_split_is_refused(tmp_path, monkeypatch):
    from densflow.ablations import study

    real_train = study.train

    def one_epoch_short(config):  # as if the split held fewer images than the registry lists
        return real_train(dataclasses.replace(config, max_steps=config.max_steps - 1))

    monkeypatch.setattr(study, "train", one_epoch_short)
    with pytest.raises(ValueError, match=r"trained 1 of 2 steps, .*data check photos"):
        ablations.run(preset="smoke", out_dir=tmp_path, variants=["glow"], seeds=[0], steps=2,
                      timing_steps=0, log=lambda _: None)  # fmt: skip
    assert not (tmp_path / "glow" / "seed0" / "result.json").exists()
