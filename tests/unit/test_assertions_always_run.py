"""No test's assertion can be silently passed over: a lint over every test function of every tier.

Flagged, each a way for a test to pass without having checked anything:
  - an `assert` directly in an `if` that has no `else`, outside any loop: when the condition is
    false, nothing is checked (in a loop such an `if` picks items, which is fine);
  - an `assert` in a `try` whose handler catches AssertionError (or Exception, BaseException,
    everything) and does not raise again;
  - pytest.skip, pytest.importorskip, pytest.xfail and the skip/skipif/xfail marks: a test that
    cannot run fails, naming what it lacks (DESIGN.md, section 5).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
SWALLOWING = {"AssertionError", "Exception", "BaseException"}
SKIPS = {"skip", "skipif", "importorskip", "xfail"}


def every_test_file() -> list[Path]:
    return sorted(path for path in TESTS_DIR.rglob("test_*.py") if "images" not in path.parts)


def contains_assert(nodes: list[ast.stmt]) -> bool:
    return any(isinstance(node, ast.Assert) for statement in nodes for node in ast.walk(statement))


def catches_assertions(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(name, ast.Name) and name.id in SWALLOWING for name in caught)


def reraises(handler: ast.ExceptHandler) -> bool:
    return any(isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "fail")
               for statement in handler.body for node in ast.walk(statement))


def problems_in_function(function: ast.FunctionDef, where: str) -> list[str]:
    found = []

    def visit(statements: list[ast.stmt], in_loop: bool) -> None:
        for statement in statements:
            if isinstance(statement, ast.If) and not statement.orelse and not in_loop and \
                    any(isinstance(node, ast.Assert) for node in statement.body):
                found.append(f"{where}:{statement.lineno}: assert behind an `if` without `else` in {function.name}")
            if isinstance(statement, ast.Try) and contains_assert(statement.body):
                for handler in statement.handlers:
                    if catches_assertions(handler) and not reraises(handler):
                        found.append(f"{where}:{handler.lineno}: a failed assert is swallowed in {function.name}")
            loop = isinstance(statement, (ast.For, ast.AsyncFor, ast.While))
            for field in ("body", "orelse", "finalbody"):
                visit(getattr(statement, field, []) or [], in_loop or loop)
            for handler in getattr(statement, "handlers", []):
                visit(handler.body, in_loop or loop)

    visit(function.body, in_loop=False)
    return found


def problems_in(path: Path, root: Path = TESTS_DIR.parent) -> list[str]:
    where = str(path.relative_to(root))
    tree = ast.parse(path.read_text(), filename=where)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            found += problems_in_function(node, where)
        if isinstance(node, ast.Attribute) and node.attr in SKIPS and \
                ast.unparse(node.value) in ("pytest", "pytest.mark"):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}: a test that cannot run must fail instead")
    return found


def test_no_assertion_can_be_passed_over_silently():
    files = every_test_file()
    assert len(files) >= 20 and any("host" in path.parts for path in files)
    problems = [problem for path in files for problem in problems_in(path)]
    assert problems == [], "\n".join(problems)


SILENT = '''
import pytest

def test_conditional(result):
    if result.created:
        assert result.ok

def test_swallowed():
    try:
        assert compute() == 3
    except AssertionError:
        pass

@pytest.mark.skipif(True, reason="no tool")
def test_skipped():
    pytest.skip("later")
'''

FINE = '''
import pytest

def test_branches(method, answer):
    if method == "HEAD":
        assert answer.body == b""
    else:
        assert answer.body

def test_filter(items):
    assert items
    for item in items:
        if item.kind == "file":
            assert item.mode == 0o600

def test_retry(run):
    try:
        assert run() == 0
    except AssertionError:
        raise

def test_cleanup(path):
    try:
        assert path.exists()
    finally:
        path.unlink()
'''


def test_the_lint_flags_each_kind_and_leaves_sound_tests_alone(tmp_path):
    (tmp_path / "test_silent.py").write_text(SILENT)
    (tmp_path / "test_fine.py").write_text(FINE)
    silent = problems_in(tmp_path / "test_silent.py", root=tmp_path)
    fine = problems_in(tmp_path / "test_fine.py", root=tmp_path)
    assert [problem.split(": ", 1)[1] for problem in silent] == [
        "assert behind an `if` without `else` in test_conditional",
        "a failed assert is swallowed in test_swallowed",
        "pytest.mark.skipif: a test that cannot run must fail instead",
        "pytest.skip: a test that cannot run must fail instead",
    ]
    assert fine == []
