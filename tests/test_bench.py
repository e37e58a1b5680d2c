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


def test_quick_run_table(tmp_path):
    out = run_script("quick_run.py", "--tiny", "--json", str(tmp_path / "r.json"))
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["bare_seconds"] > 0 and r["bare_flops"] > 0
    for method, run in r["runs"].items():
        assert run["bare"] > 0 and run["bare_samples"] == 3             # epochs 0, 1 and 2
        # every phase's time is exclusive: nothing is counted twice, so what is left over for
        # the loop itself is not negative
        assert all(seconds >= 0 for seconds in run["seconds"].values()), run["seconds"]
        assert run["steps"] == 2 * (256 // 32)                       # 2 epochs of 8 steps
        assert run["precision"] == r["precision"]
        step_phases = ("augmentation", "forward", "loss, backward, SGD update",
                       "ODC memory step", "ODC loss weights", "loop, progress, other")
        step = sum(run["seconds"].get(ph, 0.0) for ph in step_phases) / run["steps"]
        assert r["ratios"][method] == pytest.approx(step / run["bare"])
        assert f"{r['ratios'][method]:.3f}" in out
    assert "ODC memory step" in r["runs"]["odc"]["seconds"]
    assert r["runs"]["deepcluster"]["seconds"]["k-means"] > 0


def test_deepcluster_epoch_table():
    rows = table_rows(run_script("deepcluster_epoch.py", "--tiny"), ["supervised", "deepcluster", "odc"])
    s_sup, s_dc, s_cluster = float(rows["supervised"][1]), float(rows["deepcluster"][1]), float(rows["deepcluster"][2])
    assert 0 < s_cluster < s_dc
    # the times are printed to 0.01 s and the ratio from the unrounded times: the ratio of the
    # printed times may differ by what that rounding allows (it decides at tiny, fast epochs)
    rounding = 0.005 / s_sup + 0.005 * s_dc / s_sup ** 2
    assert float(rows["deepcluster"][3]) == pytest.approx(s_dc / s_sup, abs=rounding + 2e-3)


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


def test_gpu_evidence_tiny_on_cpu(tmp_path):
    """The four full-scale experiments, tiny, in order: the one tar brought back holds, per run,
    that experiment's config (with the tiny overrides) and a 2-epoch history compacted as the
    experiment keeps it, and results.json's kNN is the history's last evaluated one."""
    import tarfile
    from odc_mini.study import experiments
    from odc_mini.run.runfolder import read_config
    names = ["full-odc", "full-deepcluster-ref", "full-odc-seed1", "full-deepcluster-ref-seed1"]
    tiny = dict(dataset="synthetic", arch="small_cnn", subset=600, epochs=2, num_clusters=10,
                min_cluster=5, batch_size=64, eval_batch_size=300, snapshot_size=100,
                eval_interval=1, device="cpu")
    out = run_script("gpu_evidence.py", "--tiny", "--out", str(tmp_path / "out"))
    back = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert back == ["checkpoints", "evidence.tar", "results.json"], back   # <= 8 files come back
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["runs"]) == names and results["skipped"] == [], out
    with tarfile.open(tmp_path / "out" / "evidence.tar") as tar:
        tar.extractall(tmp_path / "records", filter="data")
    for name in names:
        expected = experiments.get(name).config(**tiny).identity()
        assert read_config(tmp_path / "records" / name / "config.json").identity() == expected
        history = History.load(tmp_path / "records" / name / "history.npz")
        assert history.num_epochs == 2
        kept = {"ends": 2, "none": 0}[experiments.get(name).keep_labels]   # as saved_runs keep
        assert len(history.label_epochs) == kept
        assert not kept or history.label_epochs[-1] == 2
        knn = history.epoch("knn_top1")
        final = results["runs"][name]
        assert final["knn_top1"] == pytest.approx(float(knn[~np.isnan(knn)][-1]))
        assert final["random_knn_top1"] == pytest.approx(float(knn[0]))
        assert final["epochs"] == 2


def test_quick_profile_search_tiny(tmp_path):
    """One tiny candidate: the file keeps its kNN curve (row 0 first, the last epoch last) and
    the table's gain is the curve's last value within the budget minus its first."""
    out = run_script("quick_profile_search.py", "--tiny", "--only", "lr0.2",
                     "--out", str(tmp_path / "search.json"))
    (result,) = json.loads((tmp_path / "search.json").read_text())
    epochs = [c[0] for c in result["curve"]]
    assert result["name"] == "lr0.2" and epochs == [0, 1, 2]
    gain = result["curve"][-1][2] - result["curve"][0][2]
    row = [line for line in out.splitlines() if line.startswith("lr0.2")][-1]
    assert f"{gain:+5.1f} (ep 2," in row


def test_kernel_paths_table():
    """Two kernel paths for the parent process; the pinned run started from either has the
    same bits (its fingerprint), whatever the parent's environment."""
    out = run_script("kernel_paths.py", "--tiny", "--paths", "own", "default", "--methods", "odc")
    rows = table_rows(out, ["own", "default"])
    assert rows["own"][1] == rows["default"][1] == "odc"
    assert rows["own"][4] == rows["default"][4]          # pinned runs' fingerprints
    assert "generic kernels" in " ".join(rows["default"][8:])   # the child took that path
