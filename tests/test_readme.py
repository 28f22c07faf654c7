"""The README's and the docs' commands and Python examples work exactly as printed, and the
repository stands alone.

Every fenced ``bash`` block of README.md and docs/*.md is preceded by a marker comment saying what
this test does with it: ``run`` (executed in order, offline, on the CPU), ``check`` (needs data, a
GPU or a download the tests cannot have: each notebook, papermill parameter and CLI argument is
checked instead) or ``skip`` (the ``make`` targets, which are the suite itself). Every ``python``
block of the README is marked ``readme-python: run`` and is executed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- readme-commands: (run|check|skip)\b[^>]*-->\s*\n```bash\n(.*?)```", re.S)
PYTHON = re.compile(r"<!-- readme-python: run\b[^>]*-->\s*\n```python\n(.*?)```", re.S)


def readme_blocks(text: str) -> list[tuple[str, list[str]]]:
    blocks = []
    for kind, body in MARKER.findall(text):
        lines = [line.split("  #")[0].strip() for line in body.splitlines()]
        blocks.append((kind, [line for line in lines if line and not line.startswith("#")]))
    return blocks


def commands(kind: str, document: Path = ROOT / "README.md") -> list[str]:
    return [c for k, block in readme_blocks(document.read_text()) if k == kind for c in block]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_shell_and_python_block_says_how_it_is_tested(document):
    text = document.read_text()
    assert len(readme_blocks(text)) == text.count("```bash"), (
        f"a ```bash block in {document.name} lacks its <!-- readme-commands: run|check|skip --> "
        "marker"
    )
    if document.name == "README.md":
        assert commands("run") and commands("check")
        assert len(PYTHON.findall(text)) == text.count("```python") > 0, (
            "a ```python block in README.md lacks its <!-- readme-python: run --> marker"
        )


def test_the_marker_parser_finds_blocks_and_drops_comments():
    text = "<!-- readme-commands: run (why) -->\n```bash\necho a  # note\n# only a comment\n```\n"
    assert readme_blocks(text) == [("run", ["echo a"])]
    assert readme_blocks("```bash\necho a\n```\n") == []


def run_in(folder: Path, argv: list[str], env_extra: dict[str, str] | None = None):
    """Run ``argv`` in ``folder`` as a user would after ``source .venv/bin/activate``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", **(env_extra or {}))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"`{argv[-1]}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    return done


@pytest.mark.slow
def test_the_runnable_readme_commands_run_as_printed(tmp_path):
    """In an empty folder, in order."""
    for command in commands("run"):
        run_in(tmp_path, ["bash", "-c", command])
    assert (tmp_path / "runs" / "smoke" / "checkpoint.pt").is_file()
    assert (tmp_path / "runs" / "smoke" / "samples.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS[1:], ids=lambda p: p.name)
def test_the_runnable_docs_commands_run_as_printed(document, tmp_path):
    for command in commands("run", document):
        run_in(tmp_path, ["bash", "-c", command])


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(PYTHON.findall((ROOT / "README.md").read_text()))))
def test_the_readme_python_examples_run_as_printed(number, tmp_path):
    """Each block in a fresh interpreter and an empty folder; the cache holds a model directory
    named ``cifar10`` (a tiny model), as ``download weights`` leaves one."""
    from densflow import DenseFlow, DenseFlowConfig

    cache = tmp_path / "cache"
    DenseFlow(DenseFlowConfig.tiny()).save_pretrained(cache / "models" / "cifar10")
    code = PYTHON.findall((ROOT / "README.md").read_text())[number]
    (tmp_path / "work").mkdir()
    run_in(tmp_path / "work", [sys.executable, "-c", code], {"DENSFLOW_CACHE": str(cache)})


def check_papermill(argv: list[str], made_dirs: set[str]) -> None:
    import papermill

    notebook, output = argv[1], argv[2]
    assert (ROOT / notebook).is_file(), f"{notebook} does not exist"
    parent = os.path.dirname(output)
    assert not parent or parent in made_dirs, f"output folder {parent} is not made before {argv}"
    names = set(papermill.inspect_notebook(str(ROOT / notebook)))
    given = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("-p", "--parameters")]
    unknown = set(given) - names
    assert not unknown, f"{notebook} has no parameter(s) {sorted(unknown)}; it has {sorted(names)}"
    # A run of hours must show its progress in the terminal, not only in the output notebook.
    assert "--log-output" in argv, f"`{shlex.join(argv)}` must stream its log (--log-output)"


def check_densflow_cli(argv: list[str]) -> None:
    from densflow.cli import build_parser

    try:
        build_parser().parse_args(argv[3:])
    except SystemExit as exit:  # argparse rejects the arguments
        raise AssertionError(f"`{shlex.join(argv)}` is not a valid densflow command") from exit


def load_script(path: Path):
    """A script of the repository (not a package module) imported by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


def check_benchmark(argv: list[str]) -> None:
    try:
        load_script(ROOT / "benchmarks" / "benchmark.py").build_parser().parse_args(argv[2:])
    except SystemExit as exit:
        raise AssertionError(f"`{shlex.join(argv)}` is not a valid benchmark command") from exit


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_the_commands_that_need_data_are_valid(document):
    for command in commands("check", document):
        made_dirs: set[str] = set()
        for part in command.split("&&"):
            argv = shlex.split(part)
            if argv[:2] == ["mkdir", "-p"]:
                made_dirs.update(argv[2:])
            elif argv[0] == "papermill":
                check_papermill(argv, made_dirs)
            elif argv[:3] == ["python", "-m", "densflow"]:
                check_densflow_cli(argv)
            elif argv[:2] == ["python", "benchmarks/benchmark.py"]:
                check_benchmark(argv)
            elif argv[0] == "torchrun" and "densflow" in argv:
                at = argv.index("densflow")
                assert argv[at - 1] == "-m", f"`{part.strip()}` must run `-m densflow`"
                check_densflow_cli(["python", "-m", *argv[at:]])
            else:
                raise AssertionError(f"command `{part.strip()}` is neither run nor checked")


def test_the_checker_catches_a_missing_output_folder_and_unknown_parameters():
    with pytest.raises(AssertionError, match="output folder runs"):
        check_papermill(["papermill", "reproduce/cifar10.ipynb", "runs/x.ipynb"], set())
    with pytest.raises(AssertionError, match="no parameter"):
        argv = ["papermill", "reproduce/cifar10.ipynb", "x.ipynb", "-p", "no_such_parameter", "1"]
        check_papermill(argv, set())
    with pytest.raises(AssertionError, match="--log-output"):
        check_papermill(["papermill", "reproduce/cifar10.ipynb", "x.ipynb"], set())
    with pytest.raises(AssertionError, match="not a valid densflow command"):
        check_densflow_cli(["python", "-m", "densflow", "train", "--no-such-flag"])


OUTSIDE = ("../" + "shared", "shared/" + "reference")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in out.stdout.splitlines()]


def test_no_tracked_file_names_a_path_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.suffix in (".pt", ".png", ".jpg") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{path.relative_to(ROOT)}: {o}" for o in OUTSIDE if o in text]
    assert not offenders, (
        "the repository must stand alone; these name paths outside it:\n" + "\n".join(offenders)
    )


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    wanted = [d for d in wanted if not d.startswith("densflow[")]  # extras that name other extras
    conda = {"torch": "pytorch"}  # conda-forge's names where they differ from PyPI's

    def normal(spec: str) -> str:
        name, version = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
        return conda.get(name.lower(), name.lower()) + version.replace(" ", "")

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], (
        "use conda-forge only (the pytorch channel stopped at 2.5)"
    )
    listed = {normal(d) for d in env["dependencies"] if isinstance(d, str)}
    listed -= {normal("pip")} | {d for d in listed if d.startswith("python")}
    # Packages conda-forge does not carry are installed by pip inside the environment.
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    listed |= {normal(d) for section in pip for d in section.get("pip", []) if d != "-e ."}
    assert listed == {normal(d) for d in wanted}


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="argparse's help layout differs between Pythons"
)
def test_the_cli_reference_page_is_what_the_parser_says(monkeypatch):
    import importlib.util

    monkeypatch.setenv("COLUMNS", "100")
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "docs" / "cli_reference.py"
    )
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert (ROOT / "docs" / "cli.md").read_text() == reference.render(), (
        "docs/cli.md is stale: run python docs/cli_reference.py"
    )


def test_the_readme_fits_on_two_screens():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 160, f"README.md has {len(lines)} lines; move the details to docs/"
