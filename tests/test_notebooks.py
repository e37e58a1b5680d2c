"""Every chapter notebook in book/ is committed clean: no outputs, no execution counts, and a first
code cell that installs odc_mini when the notebook is opened in Colab.

That every chapter runs top to bottom in a fresh kernel is checked by the book build
(``tests/test_book.py``): it executes every notebook with an empty execution cache and fails on
any cell error. (Executing them a second time here cost CI about 4 minutes.) To run one chapter
alone: ``jupyter nbconvert --to notebook --execute book/03_online.ipynb --output /tmp/out``.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    dirty = [i for i, cell in enumerate(read(path).cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts (clear them)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_on_colab(path):
    code = [cell.source for cell in read(path).cells if cell.cell_type == "code"]
    assert code and "google.colab" in code[0], \
        f"{path.name}: the first code cell should install odc_mini when run in Colab"
