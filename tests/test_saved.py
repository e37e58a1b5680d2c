"""Saved runs: compact histories, the experiments registry, lookup by config, the comparison
with bands, and the committed runs themselves (checked against their own label banks)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from odc_mini import Config, train
from odc_mini.study import analysis, experiments, saved
from odc_mini.evaluate import nmi
from odc_mini.study.experiments import Experiment
from odc_mini.history import History

SYNTHETIC = dict(method="odc", profile="quick", dataset="synthetic", subset=300, epochs=4,
                 batch_size=50, lr=0.05, num_clusters=6, min_cluster=5, pca_dim=16,
                 snapshot_size=60, snapshot_interval=1, eval_batch_size=300, eval_interval=2,
                 linear_probe=False, device="cpu")


@pytest.fixture(scope="module")
def tiny_run():
    return train(Config(**SYNTHETIC), progress=False)


@pytest.fixture
def registry(monkeypatch):
    """A registry with one tiny synthetic experiment, kept apart from the real one."""
    exp = Experiment("tiny", dict(SYNTHETIC), "a test run", keep_labels="ends",
                     keep_snapshots="ends")
    monkeypatch.setitem(experiments.EXPERIMENTS, "tiny", exp)
    return exp


def test_compact_keeps_every_record_and_only_the_chosen_arrays(tiny_run):
    h = tiny_run.history
    c = History.from_bytes(h.compact(label_epochs=[0, 4], snapshot_epochs=[2]).to_bytes())
    for key in h.iteration_keys:
        np.testing.assert_array_equal(c.iteration(key), h.iteration(key))
    for key in h.epoch_keys:
        np.testing.assert_array_equal(c.epoch(key), h.epoch(key))
    assert c.label_epochs == [0, 4] and c.snapshot_epochs == [2]
    np.testing.assert_array_equal(c.labels(4), h.labels(4))
    np.testing.assert_array_equal(c.snapshot(2)[0], h.snapshot(2)[0])
    for e in range(5):
        np.testing.assert_array_equal(c.sizes(e), h.sizes(e))
    np.testing.assert_array_equal(c.arrays["targets"], h.arrays["targets"])
    with pytest.raises(KeyError, match="keeps no labels for epoch 3; kept: 0, 4"):
        c.labels(3)
    with pytest.raises(KeyError, match="keeps no snapshot_features for epoch 0; kept: 2"):
        c.snapshot(0)
    assert h.label_epochs == [0, 1, 2, 3, 4]        # the original is untouched


def test_save_load_and_find_by_config(tiny_run, registry, tmp_path):
    folder = saved.save(tiny_run.history, tiny_run.config, "tiny", tmp_path, torch="x.y")
    run = saved.load("tiny", tmp_path)
    assert run.history.label_epochs == [0, 4] and run.history.snapshot_epochs == [0, 4]
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["command"] == "python -m odc_mini experiment tiny" and prov["torch"] == "x.y"
    assert prov["wall_seconds"] == pytest.approx(tiny_run.history.last("wall_seconds"))
    assert json.loads((folder / "config.json").read_text()).get("data_root", "absent") == "absent"
    # found for the same settings, wherever the data lives and whatever the device
    found = saved.find(Config(**{**SYNTHETIC, "data_root": "/elsewhere", "device": "auto"}),
                       tmp_path)
    assert found is not None and found.name == "tiny"
    assert saved.find(Config(**{**SYNTHETIC, "momentum": 0.9}), tmp_path) is None
    with pytest.raises(ValueError, match="no saved run 'nope'.*saved: tiny"):
        saved.load("nope", tmp_path)
    with pytest.raises(ValueError, match="not experiment 'tiny': momentum differ"):
        saved.save(tiny_run.history, Config(**{**SYNTHETIC, "momentum": 0.9}), "tiny", tmp_path)


def test_summary_matches_a_recomputation(tiny_run):
    h = tiny_run.history
    s = analysis.summary(h)
    # every epoch has the same number of iterations: the mean over iterations is the mean of the
    # per-epoch means
    assert s["change_ratio"] == pytest.approx(np.nanmean(h.epoch("change_ratio")[1:]), abs=1e-6)
    assert s["nmi_classes"] == pytest.approx(nmi(h.labels(4), h.arrays["targets"]))
    assert s["nmi_previous"] == pytest.approx(nmi(h.labels(3), h.labels(4)))
    assert s["random_knn_top1"] == h.epoch("knn_top1")[0] and s["knn_top1"] == h.epoch("knn_top1")[4]
    assert s["final_drift"] == h.epoch("drift")[4]
    assert s["handled"] == sum(v for v in h.epoch("clusters_handled") if v == v)
    assert (s["min_size"], s["max_size"]) == (h.sizes(4).min(), h.sizes(4).max())
    # churn from epoch 3 on: the mean of epochs 3 and 4's per-epoch means
    assert analysis.summary(h, churn_from=3)["change_ratio"] == pytest.approx(
        np.mean(h.epoch("change_ratio")[3:]), abs=1e-6)
    assert s["relabelled"] == pytest.approx(np.mean(h.labels(4) != h.labels(3)))


def test_results_table_shows_each_runs_numbers(tiny_run):
    from odc_mini.study import notebook as nbk
    h = tiny_run.history
    other = saved.load("quick-deepcluster").history
    html = nbk.html_table(*analysis.results_table({"tiny": h, "dc": other}, churn_from=2)).data
    rows = [r for r in html.split("<tr>")[1:]]
    churn = next(r for r in rows if "mean churn per batch (epoch 2 to the end)" in r)
    assert f"{np.mean(h.epoch('change_ratio')[2:]):.1%}" in churn
    assert f"{np.mean(other.epoch('change_ratio')[2:]):.1%}" in churn
    knn = next(r for r in rows if r.startswith("<td>kNN top-1"))
    assert f"random init: {h.epoch('knn_top1')[0]:.1%}" in knn
    assert f"<td>{other.epoch('knn_top1')[-1]:.1%}</td>" in knn
    sizes = next(r for r in rows if "smallest / largest" in r)
    assert f"{h.sizes(4).min()} / {h.sizes(4).max()}" in sizes


def test_differences_name_every_moved_bit_and_ignore_the_clock(tiny_run):
    h = tiny_run.history
    assert saved.differences(h, h) == []
    moved = History.from_bytes(h.to_bytes())
    moved._epochs[2]["knn_top1"] = np.nextafter(moved._epochs[2]["knn_top1"], 0.0)  # one ulp
    moved._epochs[3]["wall_seconds"] += 100                                          # a timing
    labels = moved.arrays["labels/4"].copy()
    labels[7] = (labels[7] + 1) % 6
    moved.arrays["labels/4"] = labels
    loss = moved.iteration("loss").copy()
    loss[5] *= np.float32(1.5)
    moved._iters["loss"] = [loss]
    found = saved.differences(moved, h)
    assert len(found) == 3, found
    assert found[0].startswith("per-epoch knn_top1: 1 of 5 differ, most at epoch 2")
    assert found[1].startswith("per-iteration loss: 1 of ") and "most at iteration 5" in found[1]
    assert found[2] == "array labels/4: 1 entries differ"
    shorter = History.from_bytes(h.to_bytes())
    shorter._epochs.pop()
    assert saved.differences(shorter, h) == ["3 epochs here, 4 in the saved run"]


def test_every_registered_config_is_valid():
    for name, exp in experiments.EXPERIMENTS.items():
        exp.config().validate()
        assert exp.command().startswith("python")
    # a seed group is the same config with other seeds, its own name first
    group = experiments.seed_group("golden-odc")
    assert group[0] == "golden-odc" and len(group) == len(experiments.GOLDEN_SEEDS)
    configs = [experiments.get(n).config() for n in group]
    assert [c.seed for c in configs] == list(experiments.GOLDEN_SEEDS)
    assert all(c.identity() == Config(**{**configs[0].to_dict(), "seed": c.seed}).identity()
               for c in configs)
    assert all(experiments.get(n).pinned for n in group)
    assert experiments.seed_group("quick-odc-lr0.2") == ["quick-odc-lr0.2"]
    assert experiments.seed_group("quick-odc") == ["quick-odc"] + [
        f"quick-odc-seed{s}" for s in experiments.CHAPTER_SEEDS[1:]]
    # chapter 7's runs: each sweep value other than the quick profile's, with 3 seeds each; the
    # base of every sweep is the quick profile's own ODC run, and each run differs from it in its
    # knob alone (the K sweep also in min_cluster, kept at the same share of N / K)
    quick = experiments.get("quick-odc").config()
    assert len(experiments.ablation_keys()) == 8
    for knob, value in experiments.ablation_keys():
        group = experiments.seed_group(f"ablation-{knob}-{value}")
        assert len(group) == len(experiments.ABLATION_SEEDS) >= 3
        changed = [d.split(" ")[0] for d in experiments.get(group[0]).config().differences(quick)]
        assert changed == sorted([knob] + (["min_cluster"] if knob == "num_clusters" else []))
        if knob == "num_clusters":
            cfg = experiments.get(group[0]).config()
            same_share = quick.min_cluster * quick.num_clusters / cfg.num_clusters
            assert abs(cfg.min_cluster - same_share) <= 0.5      # rounded to a whole image
    with pytest.raises(ValueError, match="unknown ablation knob 'lr'; accepted: momentum"):
        experiments.ablation_overrides("lr", 0.1)
    # DeepCluster's reference: its own rate at the ratio of the authors' configs, no decay
    odc, ref = experiments.get("quick-odc").config(), experiments.get("quick-deepcluster-ref").config()
    assert ref.lr == pytest.approx(odc.lr * 0.1 / 0.06, abs=1e-4) and ref.lr_decay == 1.0
    assert odc.lr_decay == 0.4
    assert odc.differences(ref) == [f"lr (saved {ref.lr!r}, now {odc.lr!r})",
                                    "lr_decay (saved 1.0, now 0.4)",
                                    "method (saved 'deepcluster', now 'odc')"]
    # the medium profile: the same two on every training and test image, at least 3 seeds each
    m_odc, m_ref = (experiments.get(n).config() for n in ("medium-odc", "medium-deepcluster-ref"))
    assert (m_odc.subset, m_odc.test_subset, m_ref.subset, m_ref.test_subset) == (None,) * 4
    assert m_ref.lr == pytest.approx(m_odc.lr * 0.1 / 0.06, abs=1e-4) and m_ref.lr_decay == 1.0
    assert [d.split(" ")[0] for d in m_odc.differences(m_ref)] == ["lr", "lr_decay", "method"]
    assert len(experiments.seed_group("medium-odc")) == len(
        experiments.seed_group("medium-deepcluster-ref")) >= 3
    # the full-scale evidence: the same two, at the full profile, on ResNet-18, 2 seeds each
    full = experiments.get("full-deepcluster-ref").config()
    assert (full.arch, full.sobel, full.lr, full.lr_decay) == ("resnet18", True, 0.1, 1.0)
    assert len(experiments.seed_group("full-odc")) == 2


@pytest.mark.parametrize("name", saved.names())
def test_committed_saved_run(name):
    """Each committed run is its experiment, says how it was made, and its records agree with
    its own label banks (recomputed here with scikit-learn's NMI)."""
    from sklearn.metrics import normalized_mutual_info_score
    run = saved.load(name)
    exp = experiments.get(name)
    assert run.config.identity() == exp.config().identity()
    for key in ("command", "machine", "odc_mini", "wall_seconds"):
        assert run.provenance[key], key
    h = run.history
    assert h.num_epochs == run.config.epochs
    last = h.num_epochs
    if last in h.label_epochs:
        targets = h.arrays["targets"]
        assert h.last("nmi_classes") == pytest.approx(
            normalized_mutual_info_score(targets, h.labels(last)), abs=1e-6)
        assert np.bincount(h.labels(last), minlength=run.config.num_clusters).tolist() == \
            h.sizes(last).tolist()
    assert 0 <= analysis.summary(h)["change_ratio"] <= 1


def test_the_index_names_every_saved_run_by_its_key():
    assert saved.index() == saved.index_of_folders()
    assert len(saved.index()) == len(saved.names())     # no two saved runs share an identity


def test_saved_runs_stay_small():
    total = sum(f.stat().st_size for f in saved.SAVED_DIR.rglob("*") if f.is_file())
    # 11 MB: the two methods' runs took 9.3 MB; chapter 9's third method added six (0.8 MB)
    assert total < 11e6, f"saved runs take {total / 1e6:.1f} MB"


def test_cli_lists_and_refuses_unknown_names():
    out = subprocess.run([sys.executable, "-m", "odc_mini", "experiment", "--list"],
                         capture_output=True, text=True, check=True).stdout
    assert "quick-odc-seed1" in out and "golden-odc" in out
    bad = subprocess.run([sys.executable, "-m", "odc_mini", "experiment", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown experiment 'nope'; accepted: quick-odc, ")


def test_cli_saves_a_run_trained_elsewhere(tiny_run, registry, tmp_path, capsys):
    from odc_mini.study.cli import main
    tiny_run.save(tmp_path / "trained", state=False)
    code = main(["experiment", "tiny", "--from", str(tmp_path / "trained"),
                 "--saved-dir", str(tmp_path / "saved"), "--note", "torch=9.9"])
    assert code == 0, capsys.readouterr().err
    run = saved.load("tiny", tmp_path / "saved")
    assert run.provenance["torch"] == "9.9"
    np.testing.assert_array_equal(run.history.epoch("knn_top1"), tiny_run.history.epoch("knn_top1"))
    # a run of other settings is refused in one line, and nothing is written
    other = train(Config(**{**SYNTHETIC, "epochs": 1}), progress=False)
    other.save(tmp_path / "other", state=False)
    code = main(["experiment", "tiny", "--from", str(tmp_path / "other"),
                 "--saved-dir", str(tmp_path / "saved2")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: this run is not experiment 'tiny': epochs") and "\n" not in err
    assert not (tmp_path / "saved2").exists()


def test_facts_match_a_recomputation(tiny_run):
    """Each fact that several pages quote, against its definition computed here directly."""
    h = tiny_run.history
    cfg = tiny_run.config
    handled = [h.epoch("clusters_handled")[e] for e in range(1, h.num_epochs + 1)]
    epoch = np.ceil(h.iteration("epoch") - 1e-9)
    churn = h.iteration("change_ratio")[epoch >= 1]
    banks = [h.labels(e) for e in h.label_epochs]
    ends = np.mean([sum(int(a[i] != b[i]) for a, b in zip(banks, banks[1:]))
                    for i in range(cfg.subset)])
    expected = {
        "knn_last": f"{h.epoch('knn_top1')[-1]:.1%}",
        "largest_last": f"{int(np.bincount(h.labels(h.num_epochs)).max()):,}",
        "smallest_last": f"{int(np.bincount(h.labels(h.num_epochs), minlength=6).min()):,}",
        "relabelled_last": f"{np.mean(banks[-1] != banks[-2]):.1%}",
        "handled_training": f"{sum(handled):,.0f}",
        "handled_peak": f"{max(handled):,.0f}",
        "handled_peak_epoch": f"{handled.index(max(handled)) + 1:d}",
        "churn_mean": f"{np.nanmean(churn):.1%}",
        "changes_at_visits": f"{np.nanmean(churn) * churn.size * cfg.batch_size / cfg.subset:.1f}",
        "changes_at_epoch_ends": f"{ends:.1f}",
        "nmi_previous_last": f"{nmi(banks[-1], banks[-2]):.3f}",
    }
    for name, text in expected.items():
        assert analysis.fact(h, name) == text, name
    with pytest.raises(ValueError, match="unknown fact 'kNN'; accepted: knn_last"):
        analysis.fact(h, "kNN")


def test_glue_fact_records_what_a_page_quotes_and_conflicts_are_found(tiny_run, tmp_path,
                                                                       monkeypatch):
    from odc_mini.study import notebook as nbk

    log = tmp_path / "facts.jsonl"
    monkeypatch.setenv(nbk.FACTS_LOG_ENV, str(log))
    nbk.glue_fact("k", tiny_run, "knn_last")
    nbk.glue_fact("r", tiny_run, "relabelled_last")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["fact"] for r in records] == ["knn_last", "relabelled_last"]
    assert nbk.VALUES["k"] == records[0]["text"] == analysis.fact(tiny_run.history, "knn_last")
    assert records[0]["run"] == tiny_run.config.key()
    assert nbk.fact_conflicts(records) == []
    # another page quoting the same run's fact differently (another run under the same name)
    other = dict(records[0], text="1.0%", process=records[0]["process"] + 1)
    assert nbk.fact_conflicts(records + [other]) == [
        f"knn_last of run {tiny_run.config.key()}: 1.0% vs {records[0]['text']}"]
