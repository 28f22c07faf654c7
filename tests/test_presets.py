"""densflow.presets: one namespace of presets, and docs/presets.md is its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from densflow import presets
from densflow.ablations import ABLATION_PRESETS
from densflow.config import MODEL_SIZES
from densflow.training import TRAIN_PRESETS, train_preset

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_page_is_the_table_of_the_code():
    spec = importlib.util.spec_from_file_location(
        "presets_reference", DOCS / "presets_reference.py"
    )
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert reference.main(["--check"]) == 0, "run python docs/presets_reference.py"
    page = (DOCS / "presets.md").read_text()
    for kind, names in presets.PRESETS.items():
        for name in names:
            assert f"| {kind} | `{name}` |" in page


def test_every_registered_preset_is_described_and_no_other():
    registries = {"model size": MODEL_SIZES, "training protocol": TRAIN_PRESETS,
                  "ablation scale": ABLATION_PRESETS}  # fmt: skip
    for kind, registry in registries.items():
        assert set(presets.PRESETS[kind]) == set(registry)
        assert all(len(presets.describe(kind, name)) > 20 for name in registry)
    with pytest.raises(ValueError, match=r"no 'model size' preset 'paper'"):
        presets.describe("model size", "paper")  # the old name of denseflow-74-10


def test_a_name_shared_by_two_kinds_means_the_same_scale():
    # smoke: the tiny model in both; paper: DenseFlow-74-10 in both
    assert train_preset("photos", "smoke").model == "tiny"
    assert ABLATION_PRESETS["smoke"].model["layers_config"] == (1, 1, 2)
    assert TRAIN_PRESETS["paper"]["cifar10"]["model"] == "denseflow-74-10"
    assert ABLATION_PRESETS["paper"].model == {}  # the reference config: DenseFlow-74-10
    assert set(presets.PRESETS["ablation scale"]) & set(presets.PRESETS["model size"]) == set()
