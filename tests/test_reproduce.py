"""The reproduction notebooks, run headless by papermill on fixture data in each exact format."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from densflow import reproduce
from densflow.utils import testing
from densflow.utils.validate import field_kind

papermill = pytest.importorskip("papermill")

REPRODUCE = Path(__file__).resolve().parents[1] / "reproduce"
NOTEBOOKS = ["celeba", "cifar10", "imagenet32", "imagenet64", "quickstart"]


def run_notebook(name: str, tmp_path: Path, **parameters) -> Path:
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(REPRODUCE / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    return out


def check_results(out_dir: Path, dataset: str) -> dict:
    results = json.loads((out_dir / "results.json").read_text())
    assert results["dataset"] == dataset
    for key in ("bpd_single", "bpd_iw"):
        value = results["test"][key]
        assert math.isfinite(value) and 0 < value < 16, (key, value)
    assert (out_dir / "samples.png").stat().st_size > 0
    assert (out_dir / "checkpoint.pt").is_file()
    assert set(results["provenance"]) == {"densflow", "git_commit", "git_dirty", "torch"}
    return results


FIXTURES = {
    "cifar10": lambda root: testing.write_cifar10(root, n_train_per_batch=8, n_test=12),
    "imagenet32": lambda root: testing.write_imagenet(
        root, 32, n_train_per_batch=4, n_val=12, fmt="npz", layout="split"
    ),
    "imagenet64": lambda root: testing.write_imagenet(root, 64, n_train_per_batch=4, n_val=12),
    "celeba": lambda root: testing.write_celeba(root, n_images=40),
}


def smoke_run(data_dir: Path, out_dir: Path) -> dict:
    """Notebook parameters of a smoke run on fixture data: 4 images a step, a 2-sample bound."""
    return dict(
        data_dir=str(data_dir),
        preset="smoke",
        out_dir=str(out_dir),
        num_workers=0,
        iw_samples=2,
        batch_size=4,
    )


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", sorted(FIXTURES))
def test_dataset_notebook_smoke_run_on_fixture_data(dataset, tmp_path):
    data_dir, out_dir = tmp_path / "data", tmp_path / "run"
    FIXTURES[dataset](data_dir)
    out = run_notebook(dataset, tmp_path, **smoke_run(data_dir, out_dir), cuda_graphs=True)
    results = check_results(out_dir, dataset)
    assert results["train"]["completed"] and results["paper_denseflow_bpd"] is not None
    text = out.read_text()
    assert "DenseFlow-74-10 (paper, Table 1)" in text  # the comparison table was rendered
    # The switch reaches the Trainer (on a CPU it says it runs the step eagerly).
    assert results["config"]["cuda_graphs"] is True
    if not torch.cuda.is_available():
        assert "cuda_graphs needs a CUDA device" in text


@pytest.mark.notebook
def test_rerun_with_the_same_out_dir_resumes(tmp_path):
    data_dir, out_dir = tmp_path / "data", tmp_path / "run"
    FIXTURES["cifar10"](data_dir)
    params = smoke_run(data_dir, out_dir)
    run_notebook("cifar10", tmp_path, epochs=1, **params)
    first = json.loads((out_dir / "results.json").read_text())["train"]["steps"]
    run_notebook("cifar10", tmp_path, epochs=1, **params)  # nothing left to train
    events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert [s["resumed"] for s in starts] == [False, True]
    assert json.loads((out_dir / "results.json").read_text())["train"]["steps"] == first


@pytest.mark.notebook
def test_missing_data_dir_fails_with_the_actionable_message(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run_notebook(
            "imagenet32",
            tmp_path,
            data_dir=str(tmp_path / "nowhere"),
            out_dir=str(tmp_path / "run"),
        )
    message = str(err.value)
    assert "imagenet32: data not found" in message
    assert "image-net.org" in message and "train_data_batch_1" in message
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.notebook
def test_quickstart_with_a_shortened_parameter_set_shows_its_progress(tmp_path):
    out_dir = tmp_path / "quick"
    out = run_notebook(
        "quickstart",
        tmp_path,
        out_dir=str(out_dir),
        epochs=1,
        steps_per_epoch=4,
        iw_samples=2,
        eval_limit=16,
    )
    results = check_results(out_dir, "photos")
    assert results["train"]["steps"] == 4 and results["test"]["n_images"] == 16
    # The run is visible in the output notebook: the log lines, and tqdm.auto's bar (a widget
    # whose final state the notebook stores, or text where ipywidgets is missing).
    notebook = json.loads(out.read_text())
    streams = "".join(
        "".join(o.get("text", ""))
        for cell in notebook["cells"]
        for o in cell.get("outputs", [])
        if o["output_type"] == "stream"
    )
    assert "training at step 0 of 4 (1 epochs of 4 steps)" in streams
    assert "step 4  evaluation on 16 test images: test_bpd" in streams
    assert "step 4  checkpoint" in streams and "done at step 4" in streams
    widgets = notebook["metadata"].get("widgets", {})
    states = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    bars = [s["state"] for s in states.values() if s["model_name"] == "FloatProgressModel"]
    assert {"value": 4.0, "max": 4.0} in [{k: b[k] for k in ("value", "max")} for b in bars] or (
        "4/4 [" in streams
    )


def parameters_cell(name: str) -> str:
    cells = json.loads((REPRODUCE / f"{name}.ipynb").read_text())["cells"]
    [cell] = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_lists_every_parameter_with_its_type_and_help(name, caplog):
    assigned = [
        (node.target if isinstance(node, ast.AnnAssign) else node.targets[0]).id
        for node in ast.parse(parameters_cell(name)).body
    ]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        listed = papermill.inspect_notebook(str(REPRODUCE / f"{name}.ipynb"))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert list(listed) == assigned
    for parameter in listed.values():
        assert parameter["inferred_type_name"] not in ("", "None"), parameter
        assert len(parameter["help"]) > 10, parameter
    # Every parameter is an argument of reproduce() or a field, of the field's type, of the
    # configs it fills; and the call cell passes on exactly the parameters cell's names.
    fields = reproduce.override_fields()
    for node in ast.parse(parameters_cell(name)).body:
        parameter, value = node.target.id, ast.literal_eval(node.value)
        if parameter in reproduce.PARAMETERS:
            continue
        assert parameter in fields, f"{parameter} is no field of TrainConfig or EvalConfig"
        kind, optional = field_kind(fields[parameter], parameter)
        annotation = node.annotation
        text = annotation.value if isinstance(annotation, ast.Constant) else annotation.id
        assert text.removeprefix("Optional[").removesuffix("]") == kind.__name__, parameter
        if value is None:
            assert text.startswith("Optional["), parameter
        else:
            assert type(value) is kind or (kind is float and type(value) is int), parameter
    namespace: dict = {"plt": None, "reproduce": reproduce, "run": None}
    exec(parameters_cell(name), namespace)  # noqa: S102 (the repository's own notebook)
    assert list(reproduce.notebook_parameters(namespace)) == sorted(
        assigned, key=[*reproduce.PARAMETERS, *fields].index
    )


def test_the_notebooks_differ_only_in_parameters_and_prose():
    def code(name: str) -> list[str]:
        cells = json.loads((REPRODUCE / f"{name}.ipynb").read_text())["cells"]
        return [
            "".join(c["source"])
            for c in cells
            if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])
        ]

    first = code(NOTEBOOKS[0])
    assert any("reproduce.reproduce(" in source for source in first)
    for name in NOTEBOOKS[1:]:
        assert code(name) == first, name


def test_a_loaded_checkpoint_gets_the_speed_switches_of_the_config(tmp_path, monkeypatch):
    # A trained model leaves the Trainer channels_last and compiled when asked; a loaded one
    # must be evaluated the same way, or -p compile True would do nothing for it.
    from densflow.training import train, train_preset

    run = tmp_path / "run"
    train(
        train_preset("photos", "smoke", out_dir=str(run), batch_size=4, max_steps=1, progress=False)
    )
    compiled = []  # compiling for real is tests/performance/test_compile.py's job
    monkeypatch.setattr("densflow.performance.compile_model", compiled.append)
    config = train_preset(
        "photos", "smoke", out_dir=str(tmp_path / "eval"), channels_last=True, compile=True
    )
    model, trained = reproduce.train_or_load(config, run / "checkpoint.pt")
    assert trained is None and compiled == [model] and not model.training
    assert all(
        w.is_contiguous(memory_format=torch.channels_last)
        for w in model.parameters()
        if w.dim() == 4
    )
    plain, _ = reproduce.train_or_load(train_preset("photos", "smoke"), run / "checkpoint.pt")
    assert len(compiled) == 1 and all(w.is_contiguous() for w in plain.parameters() if w.dim() == 4)


def test_the_network_guard_still_blocks_real_addresses():
    with pytest.raises(RuntimeError, match="must not use the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_ablations_notebook_lists_every_parameter_with_its_type_and_help(caplog):
    from densflow import ablations

    assigned = [node.target.id for node in ast.parse(parameters_cell("ablations")).body]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        listed = papermill.inspect_notebook(str(REPRODUCE / "ablations.ipynb"))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert list(listed) == assigned
    for parameter in listed.values():
        assert parameter["inferred_type_name"] not in ("", "None"), parameter
        assert len(parameter["help"]) > 10 and "=" not in parameter["help"], parameter
    wanted = {"dataset", "steps", "seeds", "variants", "batch_size", "device", "out_dir", "preset"}
    assert wanted <= set(assigned)
    # Every parameter reaches the study's function, and its call passes on exactly these.
    assert set(assigned) <= set(inspect.signature(ablations.run).parameters)
    namespace: dict = {"plt": None, "ablations": ablations, "results": None}
    exec(parameters_cell("ablations"), namespace)  # noqa: S102 (the repository's own notebook)
    assert set(ablations.notebook_parameters(namespace)) == set(assigned)


@pytest.mark.notebook
def test_ablations_notebook_smoke_run(tmp_path):
    out_dir = tmp_path / "ablations"
    out = run_notebook("ablations", tmp_path, preset="smoke", out_dir=str(out_dir), timing_steps=1)
    results = json.loads((out_dir / "results.json").read_text())
    expected = {"glow", "input", "denseflow", "dense", "attention", "growth3"}
    assert set(results["variants"]) == expected
    for row in results["variants"].values():
        assert math.isfinite(row["bpd_single"]) and math.isfinite(row["bpd_iw"])
    assert {r["axis"] for r in results["cost"]} == {"growth_rate", "cross_unit_couplings"}
    text = out.read_text()
    assert "parameters within ±5% of" in text and "| variant | parameters |" in text
    # One seed: the claims are judged neither way.
    assert "unpaired: untested" in text and "paired:   untested" in text


def test_results_json_records_what_produced_it(tmp_path):
    from densflow.evaluation import EvalResult

    test = EvalResult(3.5, 3.4, 2, 4, np.array([3.5, 3.5]), np.array([3.4, 3.4]))
    config = reproduce.reproduction_config("photos", "smoke", out_dir=str(tmp_path))
    path = reproduce.write_results(tmp_path, "photos", config, test)
    results = json.loads(path.read_text())
    assert set(results["provenance"]) == {"densflow", "git_commit", "git_dirty", "torch"}
    assert results["provenance"]["torch"] == torch.__version__
    assert results["test"]["bpd_iw"] == 3.4 and results["config"]["out_dir"] == str(tmp_path)
