"""The layout ARCHITECTURE.md describes: one folder per concept, short functions, a pure core,
and no code outside a family that branches on which family it holds."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "bespoke_jax"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
# The maths: importable and testable without the training, storage or ODE-solver libraries.
PURE = ("core", "solvers")
EDGE_LIBRARIES = ("diffrax", "optax", "orbax", "flax", "click", "matplotlib", "tqdm")


def _body_lines(node: ast.FunctionDef) -> int:
    """Lines of a function from its ``def`` to its end, its docstring left out."""
    lines = node.end_lineno - node.lineno + 1
    doc = node.body[0]
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
        if isinstance(doc.value.value, str):
            lines -= doc.end_lineno - doc.lineno + 1
    return lines


def test_functions_are_short():
    too_long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if _body_lines(node) >= MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not too_long, f"functions of {MAX_FUNCTION_LINES}+ lines (docstring aside): {too_long}"


def test_no_code_outside_a_family_branches_on_its_name():
    pattern = re.compile(r"\.name\s*(==|!=|in)\s*[\"'(]")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        if "families" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "family" in line and pattern.search(line)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("folder", PURE)
def test_the_maths_imports_no_edge_library(folder):
    imported = set()
    for path in (PACKAGE / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert not imported & set(EDGE_LIBRARIES), sorted(imported & set(EDGE_LIBRARIES))


def test_architecture_names_every_subpackage():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [folder for folder in folders if f"{folder}/" not in text]
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"
