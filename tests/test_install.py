"""A Colab reader's session, offline: the package built as a wheel from a clean clone, installed
(not editable) into a fresh environment, and a chapter that replays the book's saved runs
executed from a folder outside the repository, with no data folder in sight.

The fresh environment borrows this one's third-party packages (torch alone is 6 GB) through a
path entry, which does not activate this environment's editable install of odc_mini; the test
checks that the odc_mini the chapter imports is the installed wheel's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTER = "07_ablations.ipynb"      # replays saved runs; needs no data and no training


def run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the test builds from a clean clone")
    root = tmp_path_factory.mktemp("install")
    clone = root / "clone"
    run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)])
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(root / "dist"), str(clone)])
    wheel = next((root / "dist").glob("odc_mini-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    return python, wheel, root


def test_the_wheel_ships_the_saved_runs_and_their_index(wheel_env):
    import zipfile
    _, wheel, _ = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    assert "odc_mini/study/saved_runs/index.json" in names
    assert any(n.startswith("odc_mini/study/saved_runs/quick-odc/") for n in names)
    assert any(n.startswith("odc_mini/study/saved_runs/ablation-momentum-0.1/") for n in names)
    assert not any("/tests/" in n or n.startswith("book/") for n in names)


def test_a_replaying_chapter_runs_from_the_installed_wheel_outside_the_repository(wheel_env):
    python, _, root = wheel_env
    reader = root / "reader"                      # a Colab-like working folder
    reader.mkdir()
    import nbformat
    chapter = nbformat.read(REPO / "book" / CHAPTER, as_version=4)
    chapter.cells.append(nbformat.v4.new_code_cell("import odc_mini; print(odc_mini.__file__)"))
    nbformat.write(chapter, reader / CHAPTER)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ODC_DATA", "ODC_CACHE", "VIRTUAL_ENV")}
    env.update(MPLBACKEND="Agg", ODC_PROFILE="quick", ODC_CACHE=str(root / "cache"),
               HOME=str(root / "home"))
    where = run([python, "-c", "import odc_mini; print(odc_mini.__file__)"], cwd=reader, env=env)
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout, where.stdout
    code = ("import nbformat, sys; from nbclient import NotebookClient; "
            "nb = nbformat.read(sys.argv[1], as_version=4); "
            "NotebookClient(nb, timeout=900, kernel_name='python3', "
            "resources={'metadata': {'path': '.'}}).execute(); "
            "nbformat.write(nb, sys.argv[2])")
    run([python, "-c", code, CHAPTER, "out.ipynb"], cwd=reader, env=env, timeout=1200)
    executed = nbformat.read(reader / "out.ipynb", as_version=4)
    imported = "".join(executed.cells[-1].outputs[0]["text"])
    assert "site-packages" in imported and str(REPO) not in imported, imported
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)     # its figures were drawn
    assert not (root / "cache").exists() or not any((root / "cache").iterdir())  # nothing trained
