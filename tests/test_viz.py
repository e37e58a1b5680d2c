"""The book's figure and widget functions, checked against direct computations."""
import matplotlib

matplotlib.use("Agg")
import ipywidgets as w  # noqa: E402
from ipywidgets.widgets.widget import _instances  # noqa: E402
from ipywidgets.widgets.widget_link import Link  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from odc_mini.study import notebook, viz# noqa: E402
from odc_mini.history import History  # noqa: E402


def fake_history(method="odc", epochs=4, n=60, k=6, seed=0):
    """A hand-made history: labels follow a known schedule, so label changes are known."""
    rng = np.random.default_rng(seed)
    h = History({"config": {"method": method, "num_clusters": k, "min_cluster": 3},
                 "classes": [f"c{i}" for i in range(3)]})
    labels = rng.integers(0, k, n)
    h.set_array("snapshot_targets", rng.integers(0, 3, 20).astype(np.int16))
    for e in range(epochs + 1):
        if e:
            labels = labels.copy()
            labels[:e * 5] = (labels[:e * 5] + 1) % k          # the first 5e images move at epoch e
            h.add_iterations(loss=rng.random(10), change_ratio=rng.random(10), acc=rng.random(10),
                             epoch=e - 1 + np.arange(1, 11) / 10, lr=np.full(10, 0.1))
        h.set_array(f"labels/{e}", labels.astype(np.int16))
        h.set_array(f"sizes/{e}", np.bincount(labels, minlength=k))
        h.set_array(f"snapshot_features/{e}", rng.normal(size=(20, 8)).astype(np.float16))
        h.set_array(f"snapshot_labels/{e}", labels[:20].astype(np.int16))
        h.add_epoch(epoch=e, knn_top1=0.3 + 0.01 * e, nmi_previous=0.5 if e else np.nan,
                    drift=0.1 if e else np.nan, loss=np.nan if e == 0 else 1.0)
    return h


def test_smooth_is_a_trailing_mean_that_skips_nans():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    expected = [1.0, 1.5, 2.0, 4.0, 4.5]        # means of the finite values among the last 2
    np.testing.assert_allclose(viz.smooth(x, 2), expected)
    np.testing.assert_array_equal(viz.smooth(x, 1), x)


def test_label_changes_match_a_direct_comparison():
    h = fake_history(epochs=4, n=60)
    changes = viz.label_changes(h)
    assert changes.shape == (60, 4)
    for e in range(1, 5):
        direct = h.labels(e) != h.labels(e - 1)
        np.testing.assert_array_equal(changes[:, e - 1], direct)
        assert direct.sum() == 5 * e                           # what fake_history moved


def test_label_changes_skip_epochs_without_labels():
    h = fake_history(method="deepcluster", epochs=3)
    del h.arrays["labels/0"]                                   # DeepCluster has none before epoch 1
    assert viz.label_changes(h).shape[1] == 2


def test_aligned_pca_embedding_is_the_reference_epochs_map():
    """The map is fitted on the reference snapshot; other epochs go through the same
    projection, so an image whose feature did not move keeps its place."""
    h = fake_history(epochs=3)
    same = h.arrays["snapshot_features/3"].copy()
    h.arrays["snapshot_features/1"][:5] = same[:5]            # five images did not move
    got = viz.aligned_embeddings(h, method="pca")
    assert sorted(got) == [0, 1, 2, 3] and all(v.shape == (20, 2) for v in got.values())
    ref = PCA(2, random_state=0).fit(same.astype(np.float32))
    np.testing.assert_allclose(got[3], ref.transform(same.astype(np.float32)), atol=1e-5)
    np.testing.assert_allclose(got[1][:5], got[3][:5], atol=1e-5)
    assert not np.allclose(got[1][5:], got[3][5:])
    at_one = viz.aligned_embeddings(h, reference=1, method="pca")
    assert not np.allclose(at_one[3], got[3])
    with pytest.raises(ValueError, match="unknown embedding method 'tsne'; accepted: umap, pca"):
        viz.aligned_embeddings(h, method="tsne")
    with pytest.raises(ValueError, match="no snapshot at epoch 7"):
        viz.aligned_embeddings(h, reference=7, method="pca")


def blobs(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d))
    return (centres[rng.integers(4, size=n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_umap_inputs_give_the_graph_of_umaps_own_cosine_metric():
    """The precomputed cosine distances build the same neighbourhood graph as umap-learn's
    own cosine metric (to float rounding), for the reference fit and for transform's rows."""
    import umap
    x, y = blobs(seed=0), blobs(seed=1)
    inputs, metric = viz._umap_inputs({0: y, 1: x}, reference=1)
    assert metric == "precomputed" and inputs[1].shape == (300, 300) and inputs[0].shape == (300, 300)
    settings = dict(n_neighbors=15, random_state=0, n_jobs=1, n_epochs=10)
    own = umap.UMAP(metric="cosine", **settings).fit(x)
    ours = umap.UMAP(metric="precomputed", **settings).fit(inputs[1])
    assert abs(own.graph_ - ours.graph_).max() < 1e-4
    assert (own.graph_ > 1e-4).nnz == (ours.graph_ > 1e-4).nnz
    # transform's neighbours of new points: the k smallest of each precomputed row
    cosine = 1 - (y / np.linalg.norm(y, axis=1, keepdims=True)) @ (
        x / np.linalg.norm(x, axis=1, keepdims=True)).T
    np.testing.assert_allclose(inputs[0], cosine, atol=1e-5)
    big = {0: np.zeros((viz.UMAP_EXACT_BELOW, 2), np.float32)}
    assert viz._umap_inputs(big, 0)[1] == "cosine"        # many points: umap's own NN-descent


def test_aligned_umap_embedding_keeps_unmoved_images_in_place():
    h = fake_history(epochs=2)
    for e, seed in ((0, 1), (1, 2), (2, 0)):                  # 20 snapshot images, 4 blobs
        h.arrays[f"snapshot_features/{e}"] = blobs(n=20, d=8, seed=seed).astype(np.float16)
    h.arrays["snapshot_features/1"][:10] = h.arrays["snapshot_features/2"][:10]
    got = viz.aligned_embeddings(h, method="umap", n_neighbors=5, n_epochs=50)
    assert sorted(got) == [0, 1, 2] and all(v.shape == (20, 2) for v in got.values())
    spread = np.ptp(got[2], axis=0).max()
    still = np.linalg.norm(got[1][:10] - got[2][:10], axis=1)
    moved = np.linalg.norm(got[1][10:] - got[2][10:], axis=1)
    assert np.median(still) < 0.1 * spread < np.median(moved)


def test_migration_figure_follows_the_largest_clusters_of_the_previous_snapshot():
    runs = {"ODC": fake_history(epochs=3), "DeepCluster": fake_history("deepcluster", epochs=3, seed=1)}
    embeddings = {name: viz.aligned_embeddings(h, method="pca") for name, h in runs.items()}
    fig = viz.migration_figure(runs, embeddings, 2, previous=1, clusters=2)
    for ax, (name, h) in zip(fig.axes, runs.items()):
        before, after = h.snapshot(1)[1], h.snapshot(2)[1]
        ids, counts = np.unique(before, return_counts=True)
        chosen = ids[np.argsort(-counts, kind="stable")[:2]]
        inside = np.isin(before, chosen)
        kept = (inside & (before == after)).sum() / inside.sum()
        assert f"{kept:.0%} of the coloured images still in their cluster of epoch 1" in ax.get_title()
        # the grey layer holds every snapshot image; the coloured ones are the chosen clusters'
        sizes = [len(c.get_offsets()) for c in ax.collections]
        assert sizes[0] == len(after) and sum(sizes[1:]) == inside.sum()
    box = viz.migration_scrubber(runs, embeddings)
    assert list(box.children[0].children[1].options) == ["0", "1", "2", "3"]


def test_scrubber_links_slider_play_and_frames_in_the_browser():
    frames = [viz.figure_png(matplotlib.pyplot.figure()) for _ in range(3)]
    box = viz.scrubber(frames, [0, 5, 10])
    controls, stack = box.children
    play, slider = controls.children
    assert isinstance(stack, w.Stack) and [c.value for c in stack.children] == frames
    assert list(slider.options) == ["0", "5", "10"] and stack.selected_index == 2
    links = [m for m in _instances.values() if isinstance(m, Link)]
    pairs = {(l.source[0].model_id, l.source[1], l.target[0].model_id, l.target[1]) for l in links}
    assert (slider.model_id, "index", stack.model_id, "selected_index") in pairs
    assert (play.model_id, "value", slider.model_id, "index") in pairs
    with pytest.raises(ValueError, match="one label per frame"):
        viz.scrubber(frames, [0, 1])


def test_replay_has_one_frame_per_epoch_and_dashboard_has_six_panels():
    hs = {"odc": fake_history("odc"), "deepcluster": fake_history("deepcluster", seed=1)}
    fig = viz.dashboard_figure(hs, upto=2)
    assert len(fig.axes) == 6
    matplotlib.pyplot.close(fig)
    stack = viz.replay(hs).children[1]
    assert len(stack.children) == 5                             # epochs 0..4
    assert all(c.value[:8] == b"\x89PNG\r\n\x1a\n" for c in stack.children)


def test_live_dashboard_redraws_on_every_callback():
    dash = viz.LiveDashboard()
    update = dash.callback("ODC")
    h = fake_history(epochs=2)
    update(h)
    first = dash.widget.value
    h.add_epoch(epoch=3, knn_top1=0.9, nmi_previous=0.9, drift=0.01, loss=0.5)
    h.add_iterations(loss=np.ones(10), change_ratio=np.ones(10), acc=np.ones(10),
                     epoch=2 + np.arange(1, 11) / 10, lr=np.full(10, 0.1))
    for key in ("labels", "sizes"):
        h.set_array(f"{key}/3", h.arrays[f"{key}/2"])
    update(h)
    assert first[:4] == b"\x89PNG" and dash.widget.value != first


def test_prose_fills_in_the_glued_numbers_as_formatted():
    notebook.VALUES.clear()
    assert notebook.glue("acc", 0.4137, "{:.1%}") is None     # no stray output in a cell
    notebook.glue("n", 10000, "{:,}")
    notebook.glue("x", 0.12, "{:.3f}")
    text = notebook.prose("kNN {{acc}} on {{n}} images, NMI {{x}}; $\\mathcal{N}(0, 1)$ stays.").data
    assert text == "kNN 41.4% on 10,000 images, NMI 0.120; $\\mathcal{N}(0, 1)$ stays."
    with pytest.raises(KeyError, match="the text refers to later, which no cell above has glued"):
        notebook.prose("a {{acc}} and a {{later}}")


def test_number_formats():
    assert notebook.pct(0.4137) == "41.4%" and notebook.pct(float("nan")) == "–"
    assert notebook.num(0.12) == "0.120" and notebook.num(None) == "–" and notebook.num(2, 1) == "2.0"


def test_setup_shows_no_absolute_paths_of_the_machine(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "book").mkdir(parents=True)
    (project / "data").mkdir()
    monkeypatch.chdir(project / "book")
    env = notebook.Environment("quick", "cpu", str(project / "data"), False,
                               project / "book" / "_build" / "odc_runs")
    line = env.describe()
    assert "data ../data" in line and "run cache _build/odc_runs" in line
    assert str(tmp_path) not in line
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    away = notebook.Environment("quick", "cpu", None, True, tmp_path / "home" / ".cache" / "x")
    assert away.describe().endswith("run cache ~/.cache/x") and "downloaded" in away.describe()


def test_find_data_root_walks_up_to_the_project_data(tmp_path, monkeypatch):
    monkeypatch.delenv("ODC_DATA", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar10.npz").write_bytes(b"")
    (tmp_path / "book").mkdir()
    assert notebook.find_data_root(tmp_path / "book") == tmp_path / "data"
    monkeypatch.setenv("ODC_DATA", "/somewhere")
    assert str(notebook.find_data_root(tmp_path / "book")) == "/somewhere"


def test_label_change_columns_name_the_epoch_they_end_at():
    h = fake_history(method="deepcluster", epochs=3)
    del h.arrays["labels/0"]
    np.testing.assert_array_equal(viz.label_change_epochs(h), [2, 3])
    np.testing.assert_array_equal(viz.label_changes(h)[:, 0], h.labels(2) != h.labels(1))


def test_sweep_figure_plots_every_seeds_summary_and_their_mean():
    """Per panel: one dot per (value, seed) at that run's summary value, the seeds' mean per value,
    and for the base value a star at its mean and a band from its lowest to its highest seed."""
    rng = np.random.default_rng(0)
    results = {v: {s: {"knn_top1": rng.random(), "handled": float(rng.integers(9))} for s in range(3)}
               for v in (10, 30, 100)}
    metrics = {"knn_top1": ("kNN top-1", True, True), "handled": ("clusters handled", None, False)}
    fig = viz.sweep_figure(results, metrics, "K", base=30, log=True)
    assert len(fig.axes) == 3 and not fig.axes[2].axison            # a spare third panel, off
    for ax, (key, (_, _, percent)) in zip(fig.axes, metrics.items()):
        scale = 100 if percent else 1
        per_seed = {v: [scale * results[v][s][key] for s in range(3)] for v in results}
        lines = {line.get_label(): line for line in ax.get_lines()}
        dots = sorted(zip(lines["one seed"].get_xdata(), lines["one seed"].get_ydata()))
        np.testing.assert_allclose(dots, sorted((v, y) for v, ys in per_seed.items() for y in ys))
        np.testing.assert_allclose(lines["mean of the seeds"].get_xydata(),
                                   [(v, np.mean(ys)) for v, ys in per_seed.items()])
        np.testing.assert_allclose(lines["base setting"].get_xydata(), [(30, np.mean(per_seed[30]))])
        band = ax.patches[0]
        corners = ax.transData.inverted().transform(band.get_transform().transform(band.get_path().vertices))
        np.testing.assert_allclose([corners[:, 1].min(), corners[:, 1].max()],
                                   [min(per_seed[30]), max(per_seed[30])])
        assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [10, 30, 100]
    viz.plt.close(fig)


def test_final_check_figure_draws_each_runs_value_band_and_the_seeds():
    from odc_mini.study import seeds
    rng = np.random.default_rng(0)
    runs = {}
    for s in range(5):
        h = History()
        for e, base in enumerate([0.30, 0.40]):
            h.add_epoch(epoch=e, knn_top1=base + rng.normal(0, 0.01))
        runs[s] = h
    spread = seeds.spread(runs)
    good, bad = History(), History()
    for h, end in ((good, spread.mean("knn_top1")[-1]), (bad, 0.9)):
        h.add_epoch(epoch=0, knn_top1=0.3)
        h.add_epoch(epoch=1, knn_top1=end)
    checks = {name: (seeds.locate(h, spread, ("knn_top1",), last_only=True), spread)
              for name, h in (("good", good), ("bad", bad))}
    fig = viz.final_check_figure(checks)
    ax = fig.axes[0]
    markers = [(line.get_marker(), line.get_ydata()[0]) for line in ax.get_lines()
               if line.get_marker() in ("o", "X")]
    assert markers == [("o", pytest.approx(100 * good.last("knn_top1"))), ("X", pytest.approx(90))]
    p = checks["bad"][0][0]
    bars = [line.get_ydata() for line in ax.get_lines() if line.get_linewidth() == 9]
    np.testing.assert_allclose(bars[1], 100 * (p.mean[-1] + np.array([-1, 1]) * p.band[-1]))
    dots = [line.get_ydata() for line in ax.get_lines() if line.get_marker() == "."]
    np.testing.assert_allclose(dots[0], 100 * spread.values["knn_top1"][:, -1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["good", "bad"]


def test_seed_band_draws_the_mean_and_the_range_of_the_seeds():
    import matplotlib.pyplot as plt
    runs = {}
    for seed, values in enumerate(([0.1, np.nan, 0.3, 0.4], [0.2, np.nan, 0.5, 0.1],
                                   [0.3, 0.9, 0.1, 0.2])):
        h = History()
        for e, v in enumerate(values):
            h.add_epoch(epoch=e, knn_top1=v)
        runs[seed] = h
    fig, ax = plt.subplots()
    viz.plot_seed_band(ax, runs, "knn_top1", "k", "three seeds", scale=100)
    x, y = ax.lines[0].get_data()
    assert list(x) == [0, 2, 3]            # epoch 1 is missing in two seeds
    np.testing.assert_allclose(y, [20, 30, 70 / 3])
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(10) and band[:, 1].max() == pytest.approx(50)
    plt.close(fig)
