"""Every chapter notebook in book/ runs top to bottom in a fresh kernel (quick profile), and is
committed clean: no outputs, no execution counts, and a first code cell that installs odc_mini
when the notebook is opened in Colab."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits this process's environment when it starts.
    monkeypatch.setenv("ODC_PROFILE", "quick")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("ODC_CACHE", os.environ.get("ODC_CACHE") or str(BOOK / "_build" / "odc_runs"))
    nb = read(path)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(BOOK)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure


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
