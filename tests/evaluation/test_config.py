"""EvalConfig: the one home of the evaluation's defaults, its checks, the options made of it."""

from __future__ import annotations

import dataclasses

import pytest

from densflow.cli import build_parser
from densflow.evaluation import EvalConfig, paper_iw_samples
from densflow.training import TrainConfig
from densflow.utils.errors import InputError


def subcommand(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        (
            {"batch_size": 0},
            r"^batch_size must be an integer in \[1, 65536\], got 0; set --batch-size "
            r"\(EvalConfig\.batch_size\) to e\.g\. 64$",
        ),
        ({"chunk_size": 2.0}, r"^chunk_size must be an integer"),
        ({"iw_samples": 0}, r"^iw_samples must be an integer in \[1, "),
        ({"iw_samples": "all"}, r"^iw_samples must be a number of samples or 'paper', got 'all'"),
        ({"seed": -1}, r"^seed must be an integer in \[0, 18446744073709551615\], got -1"),
        ({"temperature": float("nan")}, r"^temperature must be a finite number >= 0.0"),
        ({"n_samples": 10**9}, r"^n_samples must be an integer in \[1, 16384\]"),
        ({"single": "no"}, r"^single must be True or False, got 'no'"),
        ({"amp": "fp16"}, r"^amp must be one of \('none', 'bf16'\)"),
        ({"compile": True, "cuda_graphs": True}, r"^choose one of compile and cuda_graphs"),
    ],
)
def test_every_setting_is_checked_in_one_line(changes, pattern):
    with pytest.raises(InputError, match=pattern):
        EvalConfig(**changes)


def test_the_paper_k_comes_from_the_registry():
    assert paper_iw_samples("cifar10") == 1000
    assert {paper_iw_samples(d) for d in ("imagenet32", "imagenet64", "celeba")} == {200}
    assert paper_iw_samples("photos") is None
    config = EvalConfig(iw_samples="paper", chunk_size=25)
    assert config.for_dataset("imagenet64") == EvalConfig(iw_samples=200, chunk_size=25)
    assert EvalConfig(iw_samples=3).for_dataset("photos").iw_samples == 3
    with pytest.raises(InputError, match="the paper reports no importance-weighted bound for"):
        config.for_dataset("photos")


def test_training_reads_its_evaluation_defaults_from_the_eval_config():
    train, evaluation = TrainConfig(), EvalConfig()
    assert train.chunk_size == evaluation.chunk_size
    assert train.iw_samples == evaluation.iw_samples
    assert train.eval_limit == evaluation.limit


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_eval_and_sample_options_are_the_eval_config_fields(command):
    parser = subcommand(command)
    dests = {a.dest for a in parser._actions}
    fields = {f.name for f in EvalConfig.fields_of(command)}
    assert fields <= dests
    assert fields.isdisjoint({f.name for f in dataclasses.fields(EvalConfig)} - dests)
    others = {f.name for f in dataclasses.fields(EvalConfig)} - fields
    assert others.isdisjoint(dests)  # no option of the other command
    help_text = parser.format_help()
    for f in EvalConfig.fields_of(command):
        assert f"[EvalConfig default: {f.default}]" in " ".join(help_text.split()), f.name


def test_an_option_out_of_range_is_refused_naming_it(capsys):
    from utils import run_cli

    code, _, err = run_cli(["eval", "m.pt", "--batch-size", "0"], capsys)
    assert code == 2
    assert "argument --batch-size: must be an integer in [1, 65536], got 0" in err
    code, _, err = run_cli(["sample", "m.pt", "--out", "x.png", "--n", "-3"], capsys)
    assert code == 2 and "argument --n-samples/--n: must be an integer in [1, 16384], got -3" in err
    parser = subcommand("eval")
    args = parser.parse_args(["m.pt", "--iw-samples", "paper", "--no-single", "--limit", "none"])
    assert (args.iw_samples, args.single, args.limit) == ("paper", False, None)
    assert parser.parse_args(["m.pt", "--iw-samples", "7"]).iw_samples == 7
