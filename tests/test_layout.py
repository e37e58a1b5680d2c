"""The house's rules, checked on the source: layers point one way, and nothing cites a document
a reader cannot open."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "odc_mini"
ROOMS = {"run": 1, "study": 2}          # the algorithm (the top folder) is layer 0


def layer(module: str) -> int:
    """0 for odc_mini.<module>, 1 for odc_mini.run.*, 2 for odc_mini.study.*."""
    parts = module.split(".")
    return ROOMS.get(parts[1], 0) if len(parts) > 1 else 0


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """The odc_mini modules ``path`` imports, absolute names, relative imports resolved."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found |= {name} | {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "odc_mini" or m.startswith("odc_mini.")}


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_point_one_way(path):
    """The algorithm imports nothing from the rooms, and a run's machinery nothing from the
    study room: each module imports only from its own layer or the ones below."""
    own = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
    upward = sorted(m for m in imported_modules(path) if layer(m) > own)
    assert not upward, f"{path.relative_to(ROOT)} imports from a layer above it: {upward}"


def test_the_layer_rule_is_checked_on_an_import_that_breaks_it(tmp_path):
    bad = tmp_path / "odc_mini" / "memory.py"
    bad.parent.mkdir()
    bad.write_text("from .study import saved\nfrom .kmeans import cluster\n")
    found = imported_modules(bad, tmp_path)
    assert {"odc_mini.study.saved", "odc_mini.kmeans.cluster"} <= found
    assert layer("odc_mini.study.saved") > layer("odc_mini.memory") == layer("odc_mini.kmeans")


OUTSIDE = re.compile(r"spec §|§\s?\d|odc-algorithm|shared/reference|\.\./shared/")


def text_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells)
    return path.read_text()


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "book").glob("*.ipynb"))
                         + sorted((ROOT / "book").glob("*.md")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_cites_a_document_outside_the_repository(path):
    """Code and book cite the paper and the reference code (file and function), never a design
    note a reader cannot open."""
    hits = [line.strip() for line in text_of(path).splitlines() if OUTSIDE.search(line)]
    assert not hits, f"{path.relative_to(ROOT)} refers outside the repository: {hits[:3]}"
