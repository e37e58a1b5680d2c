"""The benchmark scripts run end to end (tiny settings) and report consistent figures.

No timing is asserted here: speed is what the scripts print. These tests check that each script
works from a clean clone, prints its table, and that the GPU script's results agree with the
histories it saved.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from odc_mini.history import History

ROOT = Path(__file__).resolve().parents[1]


def run_script(name, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str, first_cells: list[str]) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in first_cells:
            rows[cells[0]] = cells
    assert set(rows) == set(first_cells), out
    return rows


def test_step_overhead_table():
    rows = table_rows(run_script("step_overhead.py", "--tiny"), ["supervised", "odc"])
    ms_sup, ms_odc = float(rows["supervised"][1]), float(rows["odc"][1])
    # the printed ratio is the ratio of the printed times
    assert float(rows["odc"][3]) == pytest.approx(ms_odc / ms_sup, rel=0.02, abs=2e-3)


def test_deepcluster_epoch_table():
    rows = table_rows(run_script("deepcluster_epoch.py", "--tiny"), ["supervised", "deepcluster", "odc"])
    s_sup, s_dc, s_cluster = float(rows["supervised"][1]), float(rows["deepcluster"][1]), float(rows["deepcluster"][2])
    assert 0 < s_cluster < s_dc
    assert float(rows["deepcluster"][3]) == pytest.approx(s_dc / s_sup, rel=0.02, abs=2e-3)


def test_memory_scaling_table():
    out = run_script("memory_scaling.py", "--tiny")
    rows = table_rows(out, ["2,000", "40,000"])
    assert float(rows["2,000"][2]) == 1.0
    assert float(rows["40,000"][2]) == pytest.approx(float(rows["40,000"][1]) / float(rows["2,000"][1]),
                                                     rel=0.02, abs=2e-3)


def test_augment_throughput_table():
    out = run_script("augment_throughput.py", "--tiny")
    pil = re.search(r"PIL, per image\s+([\d,]+)", out)
    ours = re.search(r"batched, cpu\s+([\d,]+)\s+([\d.]+)x", out)
    assert pil and ours, out
    ratio = float(ours.group(2))
    # the ratio is printed with one decimal and the rates rounded to whole images/s
    assert ratio == pytest.approx(float(ours.group(1).replace(",", "")) / float(pil.group(1).replace(",", "")),
                                  rel=0.05, abs=0.06)


def test_gpu_script_tiny_on_cpu(tmp_path):
    run_script("gpu_run.py", "--tiny", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    tp = results["throughput"]
    for name in ("supervised", "odc", "deepcluster"):
        assert tp[f"{name}_img_s"] > 0
    assert tp["odc_over_supervised"] == pytest.approx(tp["odc_img_s"] / tp["supervised_img_s"])
    assert results["epochs"] == 2 and set(results["runs"]) == {"odc", "deepcluster"}
    for method, final in results["runs"].items():
        history = History.load(tmp_path / method / "history.npz")
        config = json.loads((tmp_path / method / "config.json").read_text())
        assert config["method"] == method and config["epochs"] == results["epochs"]
        # the summary is the history's last row, and row 0 is the random network
        assert final["knn_top1"] == pytest.approx(float(history.epoch("knn_top1")[-1]))
        assert final["random_knn_top1"] == pytest.approx(float(history.epoch("knn_top1")[0]))
        assert np.isfinite(final["nmi_classes"]) and 0 <= final["change_ratio"] <= 1


def test_kernel_paths_table():
    """Two kernel paths for the parent process; the pinned run started from either has the
    same bits (its fingerprint), whatever the parent's environment."""
    out = run_script("kernel_paths.py", "--tiny", "--paths", "own", "default", "--methods", "odc")
    rows = table_rows(out, ["own", "default"])
    assert rows["own"][1] == rows["default"][1] == "odc"
    assert rows["own"][4] == rows["default"][4]          # pinned runs' fingerprints
    assert "generic kernels" in " ".join(rows["default"][8:])   # the child took that path
