"""CI runs the README's test command in a new virtual environment, and a plain `pip install .` has what the
training side needs at run time."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Run the tests", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return block.strip()


def test_ci_runs_the_readme_test_command_in_a_new_environment():
    script = (ROOT / ".ci" / "run").read_text()
    command = readme_test_command()
    assert command.startswith("pip install torch==2.13.0") and "pytest" in command
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[-1] == command  # verbatim, last
    venv = lines.index(next(line for line in lines if "-m venv" in line))
    activate = lines.index(next(line for line in lines if re.search(r"^\. .*/bin/activate", line)))
    assert re.search(r"mktemp -d", script) and venv < activate < len(lines) - 1


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_runtime_imports_of_the_training_side_are_dependencies():
    """Every third-party module that cli/, tasks/ and data/ import (at the top or inside a function, as the
    forecast plots import matplotlib) comes from a distribution in [project] dependencies, not an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}
    distributions = packages_distributions()
    missing = {}
    for folder in ("cli", "tasks", "data"):
        for path in (ROOT / "ssmzoo" / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top == "ssmzoo":
                        continue
                    owners = {_normalise(d) for d in distributions.get(top, [top])}
                    if not owners & declared:
                        missing[top] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not in [project] dependencies: {missing}"
    assert {"matplotlib", "tensorboard"} <= declared
