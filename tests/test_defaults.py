"""Each default has one home: the paper's optimizer settings in the data registry's
TrainingProtocol, the model's in DenseFlowConfig, the evaluation's in EvalConfig; every other
config reads them from there instead of writing the number again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from densflow.ablations.variants import AblationPreset
from densflow.data import TrainingProtocol
from densflow.evaluation import EvalConfig
from densflow.training import TRAIN_PRESETS, TrainConfig
from densflow.utils.validate import field_default

PACKAGE = Path(__file__).resolve().parents[1] / "densflow"


def literal_defaults(number: float) -> list[str]:
    """Where a dataclass field's default (``x: T = N`` or ``field(default=N)``) or a preset's
    setting (``name=N`` in a dict of settings) is the literal ``number``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            values = []
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                values.append(node.value)
            if isinstance(node, ast.keyword) and node.arg in ("default", "lr", "gamma"):
                values.append(node.value)
            for value in values:
                if isinstance(value, ast.Constant) and value.value == number:
                    found.append(f"{path.relative_to(PACKAGE)}:{value.lineno}")
    return found


@pytest.mark.parametrize("number", [1e-3, 0.95, 2e-5])
def test_the_paper_s_optimizer_numbers_are_written_once(number):
    [where] = literal_defaults(number)
    assert where.startswith("data/types.py:"), where


def test_every_other_config_reads_them():
    for name in ("lr", "gamma", "finetune_lr", "optimizer"):
        assert field_default(TrainConfig, name) == field_default(TrainingProtocol, name)
    assert field_default(AblationPreset, "lr") == field_default(TrainingProtocol, "lr")
    for name in ("chunk_size", "iw_samples"):
        assert field_default(TrainConfig, name) == field_default(EvalConfig, name)
    assert TRAIN_PRESETS["quickstart"]["photos"].keys() == {"dataset", "eval_limit"}
