"""environment.yml, constraints.txt and the README agree with pyproject.toml, the one package list."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def pyproject() -> dict:
    """pyproject.toml, parsed."""
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def environment() -> dict:
    """environment.yml, parsed."""
    return yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))


def project_packages(extras: set[str]) -> set[str]:
    """Canonical names of the packages `pip install .[extras]` asks for, self-references resolved."""
    project = pyproject()["project"]
    own, optional = canonicalize_name(project["name"]), project.get("optional-dependencies", {})
    lines, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == own:
                todo.extend(req.extras)  # "course-utils[anomalib]" inside [dev]
            else:
                lines.append(line)
    return {canonicalize_name(Requirement(line).name) for line in lines}


def environment_packages(env: dict) -> set[str]:
    """Canonical names of what environment.yml installs: its own packages plus the project's.

    Conda's python and pip are the toolchain, not packages of the course, and are left out.
    """
    names: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                editable = re.fullmatch(r"-e \.(?:\[(.+)\])?", line)
                if editable:
                    names |= project_packages(set((editable.group(1) or "").split(",")) - {""})
                elif not line.startswith("-"):
                    names.add(canonicalize_name(Requirement(line).name))
        elif re.split(r"[=<>!\s]", dep)[0] not in ("python", "pip"):
            names.add(canonicalize_name(re.split(r"[=<>!\s]", dep)[0]))
    return names


def constraint_pins() -> dict[str, str]:
    """constraints.txt as {canonical name: exact version}."""
    lines = (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip()) for line in lines]
    return {canonicalize_name(m.group(1)): m.group(2) for m in pins if m}


def test_environment_installs_the_project_with_the_constraints():
    pip_lines = next(dep["pip"] for dep in environment()["dependencies"] if isinstance(dep, dict))
    assert "-c constraints.txt" in pip_lines, "environment.yml must install with `-c constraints.txt`"
    assert "-e .[dev]" in pip_lines, "environment.yml must install the course with `-e .[dev]`"


def test_environment_and_pyproject_list_the_same_packages():
    assert environment_packages(environment()) == project_packages({"dev"})


def test_environment_python_is_one_the_project_supports():
    conda = [d for d in environment()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(conda) == 1, "environment.yml pins python once, e.g. `python=3.11`"
    version = conda[0].split("=")[1]
    assert version in SpecifierSet(pyproject()["project"]["requires-python"])


def test_constraints_pin_every_package_of_the_dev_install():
    missing = sorted(project_packages({"dev"}) - set(constraint_pins()))
    assert not missing, f"constraints.txt has no exact pin for {missing}"


def test_readme_conda_instructions_match_environment_yml():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "conda env create -f environment.yml" in readme
    assert f"conda activate {environment()['name']}" in readme, "the README activates another env name"


def test_package_lists_are_compared_not_assumed():
    """The comparison sees packages that environment.yml would add on its own, conda or pip."""
    env = environment()
    env["dependencies"].insert(0, "opencv=4.9")
    env["dependencies"][-1]["pip"].append("rich==13.0")
    assert environment_packages(env) - project_packages({"dev"}) == {"opencv", "rich"}
