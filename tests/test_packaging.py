"""What a user installs: the declared dependencies, their lock, and the package data.

``constraints.txt`` pins every dependency of every extra (``make lock`` regenerates it); ``make
install`` and ``make test`` install from it unless ``LOCK=0``, and ``make test`` tells this module
which it did (``DENSFLOW_LOCKED``).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml: the dependencies and every extra's, without the
    extras that only name other extras of densflow."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    return [Requirement(s) for s in specs if Requirement(s).name != "densflow"]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin 'name==version'"
            pins[canonical(name)] = Version(version)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_declared_dependency_within_its_range():
    pins = locked()
    for req in declared():
        assert canonical(req.name) in pins, f"constraints.txt has no pin for {req}: run make lock"
        assert req.specifier.contains(pins[canonical(req.name)], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[canonical(req.name)]}, outside {req}"
        )


def test_every_imported_third_party_package_is_declared():
    """Pillow is imported as PIL, and a package imported but not declared works only by luck."""
    imports = {"PIL": "pillow", "IPython": "ipython"}
    allowed = {canonical(r.name) for r in declared()} | {"torch", "torchvision"}
    stdlib = {"__future__", *__import__("sys").stdlib_module_names}
    found = set()
    for path in (ROOT / "densflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in (m.split(".")[0] for m in modules):
                if module not in stdlib and module != "densflow":
                    found.add(canonical(imports.get(module, module)))
    assert found - allowed == set(), (
        f"imported but not declared in pyproject.toml: {found - allowed}"
    )


@pytest.mark.skipif(
    os.environ.get("DENSFLOW_LOCKED") != "1", reason="installed without the lock (LOCK=0)"
)
def test_make_installed_exactly_the_locked_versions():
    pins, wrong = locked(), []
    # What pip installed into this environment: its site-packages only, not sys.path, where an
    # imported setuptools puts the packages it vendors (older platformdirs, packaging, zipp, ...).
    site = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    for dist in metadata.distributions(path=site):
        name = canonical(dist.metadata["Name"])
        if name in pins and Version(Version(dist.version).public) != pins[name]:
            wrong.append(f"{name} {dist.version} (locked: {pins[name]})")
    assert not wrong, "installed versions differ from constraints.txt: " + ", ".join(wrong)


def test_the_shipped_photos_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["densflow.data"]
    shipped = {p for pattern in patterns for p in (ROOT / "densflow" / "data").glob(pattern)}
    assert len([p for p in shipped if p.suffix == ".png"]) == 7
    assert ROOT / "densflow" / "data" / "assets" / "README.md" in shipped
