"""ruff's error classes (pyflakes and syntax) over all Python in the project: no unused or undefined names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_python_has_no_pyflakes_errors():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.fail("this test needs ruff (PyPI, in the test extras); run tests/run.sh")
    result = subprocess.run([str(ruff), "check", "--select", "F,E9", "--output-format", "concise",
                             "gitea_stack", "policy", "tests", "bench", "__main__.py"],
                            capture_output=True, text=True, cwd=PROJECT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_the_product_imports_is_a_declared_dependency():
    """`python -m gitea_stack render` must work in a fresh venv with only the declared dependencies."""
    import ast
    import importlib.metadata
    import re
    import sys
    import tomllib
    project = Path(__file__).resolve().parents[2]
    declared = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
                for requirement in tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imported = set()
    for source in (project / "gitea_stack").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "gitea_stack"}
    assert {"yaml", "jinja2", "pulumi", "boto3"} <= third_party
    undeclared = {name: providers.get(name) for name in third_party
                  if not {dist.lower().replace("_", "-") for dist in providers.get(name, [name])} & declared}
    assert undeclared == {}, f"imported by gitea_stack but not in pyproject's dependencies: {undeclared}"
