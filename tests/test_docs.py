"""The docs stay true to the code: every link and anchor resolves, every cited function exists.

Pure file parsing (no JAX): the docs/ pages cite code as ``[`name`](../src/bespoke_jax/x.py)``
links, and code, tests, notebooks and the top-level pages point at ``docs/PAGE.md#anchor``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINKED_PAGES = [ROOT / "README.md", *PAGES]  # every relative link in these is checked
# Files whose mentions of docs/PAGE.md[#anchor] must resolve.
CITING = [
    *(p for d in ("src", "tests", "experiments", "notebooks") for p in (ROOT / d).rglob("*")),
    *(ROOT / name for name in ("README.md", "BENCHMARKS.md", "MODELS.md")),
]
CITING = sorted(
    p
    for p in CITING
    if p.is_file()
    and p.suffix in {".py", ".md", ".ipynb"}
    and p != Path(__file__).resolve()
    and not {"__pycache__", ".ipynb_checkpoints"} & set(p.parts)
)

LINK = re.compile(r"\[([^\[\]]*)\]\(([^)\s]+)\)")
DOCS_MENTION = re.compile(r"docs/((?:[\w-]+/)*[\w-]+\.md)(#[\w-]+)?")
CODE_PATH = re.compile(r"src/bespoke_jax/(?:[\w]+/)*[\w]+\.py")
FENCE = re.compile(r"^\s*(```|~~~)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but ``-`` and ``_`` dropped, spaces to
    ``-``, repeats suffixed ``-1``, ``-2``...; headings inside fenced code do not count."""
    anchors, seen, fenced = set(), {}, False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _defines(path: Path, dotted: str) -> bool:
    """Whether ``dotted`` (``name`` or ``Class.member``) is defined or imported in ``path``."""
    body = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        found = None
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            elif isinstance(node, ast.ImportFrom):
                names = [alias.asname or alias.name for alias in node.names]
            else:
                names = []
            if part in names:
                found = node
                break
        if found is None:
            return False
        body = getattr(found, "body", [])
    return True


def _relative_links(page: Path):
    """``(text, target path, anchor)`` of every link of ``page`` that is not a URL."""
    for text, target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        yield text, (page.parent / path).resolve() if path else page, anchor


def test_docs_exist_with_an_index():
    assert (DOCS / "README.md") in PAGES
    index = (DOCS / "README.md").read_text()
    for page in PAGES:
        assert page.name == "README.md" or f"({page.name})" in index, f"{page.name} not indexed"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    for text, target, anchor in _relative_links(page):
        assert target.exists(), f"{page.name}: [{text}] points at missing {target}"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: no heading #{anchor} in {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_cited_code_exists(page):
    text = page.read_text()
    for path in CODE_PATH.findall(text):
        assert (ROOT / path).is_file(), f"{page.name} cites missing {path}"
    for label, target, _ in _relative_links(page):
        name = label.strip("`").removesuffix("()")
        if target.suffix == ".py" and not name.endswith(".py"):
            assert _defines(target, name), f"{page.name}: {name} is not defined in {target}"


def test_docs_mentions_resolve():
    for path in CITING:
        for page, anchor in DOCS_MENTION.findall(path.read_text()):
            where = path.relative_to(ROOT)
            assert (DOCS / page).is_file(), f"{where} points at missing docs/{page}"
            if anchor:
                assert anchor[1:] in _anchors(DOCS / page), f"{where}: no {anchor} in docs/{page}"


def test_no_pointer_to_unshipped_notes():
    """The maths lives in docs/; nothing points at the developers' private notes file."""
    for path in CITING:
        assert "MATH.md" not in path.read_text(), f"{path.relative_to(ROOT)} cites MATH.md"


def _first_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line ``heading`` (header row first,
    the ``|---|`` row dropped)."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows if not set("".join(row)) <= set("-: ")]


def test_readme_results_are_rows_of_the_benchmarked_demo():
    """README's Results table repeats the demo's numbers as BENCHMARKS.md records them: each
    README row (its label spelled for readers, its values bold or not) is a row there."""
    readme = _first_table((ROOT / "README.md").read_text(), "## Results")
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    heading = next(line for line in benchmarks.splitlines() if line.startswith("## The demo"))
    measured = _first_table(benchmarks, heading)
    assert readme[0][1:] == measured[0][1:], "README and BENCHMARKS.md NFE columns differ"
    rows = {tuple(row[1:]): row[0] for row in measured[1:]}
    for row in readme[1:]:
        values = tuple(cell.strip("*") for cell in row[1:])
        assert values in rows, f"README's {row[0]!r} row {values} is not in BENCHMARKS.md's demo"
