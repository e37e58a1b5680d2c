"""Figures and widgets over run histories: what the book draws.

Everything takes :class:`~odc_mini.history.History` objects (a live run's or a loaded one's), so a
chapter draws the same figure while a run trains and when it replays a saved run.

* curves: :func:`plot_epoch_metric`, :func:`plot_iteration_metric`, :func:`plot_cluster_sizes`,
  :func:`dashboard_figure` (the six panels the book compares methods with);
* widgets: :class:`LiveDashboard` (redrawn after every epoch while training), :func:`replay`
  and :func:`scrubber` (an epoch slider);
* embeddings: :func:`aligned_embeddings` (UMAP or PCA: one map per run, every epoch placed in
  it), :func:`migration_scrubber` (which images change cluster, both runs in lock-step);
* labels over time: :func:`label_changes`, :func:`plot_label_changes`;
* images: :func:`image_grid`, :func:`cluster_gallery`;
* seed noise: :func:`final_check_figure` (runs' final numbers against other seeds').

**Widgets on the static site.** The built book runs no Python, so a slider cannot redraw a
figure there. :func:`scrubber` therefore renders every frame up front as a PNG, puts the frames
in an ``ipywidgets.Stack`` and ties the slider to the stack with ``jslink`` — a link that runs in
the browser. The saved widget state holds the frames, and the slider works on the page as it
does in JupyterLab or Colab.
"""
from __future__ import annotations

import io
import textwrap
import warnings
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..config import METHOD_NAMES
from ..history import History
from .analysis import METRICS, label_changes  # noqa: F401  (the chapters' viz.label_changes)

COLORS = {"odc": "#1f77b4", "deepcluster": "#d62728", "coke": "#2ca02c", "random": "#7f7f7f"}
NAMES = METHOD_NAMES

Histories = Mapping[str, History]


def method_of(history: History) -> str:
    return history.meta.get("config", {}).get("method", "run")


def _as_dict(histories: History | Sequence[History] | Histories) -> dict[str, History]:
    """Accept one history, a list (named by method) or a name -> history mapping."""
    if isinstance(histories, History):
        histories = [histories]
    if isinstance(histories, Mapping):
        return dict(histories)
    return {NAMES.get(method_of(h), method_of(h)): h for h in histories}


def _label(name: str) -> str:
    """Display name: "odc" -> "ODC"; other names as given."""
    return NAMES.get(name, name)


# Written into every PNG the package makes, with the smallest text size in the image's pixels:
# the book's browser test reads it back and checks the text as the page shows it.
TEXT_NOTE = "odc_mini smallest text px"


def smallest_text_px(fig) -> float:
    """The size, in pixels of the saved image, of the smallest visible text in ``fig``."""
    from matplotlib.text import Text
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip()]
    return min(sizes) * fig.dpi / 72 if sizes else float("inf")


def figure_png(fig, close: bool = True) -> bytes:
    """The figure as PNG bytes (and closed, so notebooks do not also show it), noting its
    smallest text size (:data:`TEXT_NOTE`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight",
                metadata={"Description": f"{TEXT_NOTE} {smallest_text_px(fig):.2f}"})
    if close:
        plt.close(fig)
    return buf.getvalue()


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average, NaN-aware, same length as ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    ok = ~np.isnan(values)
    sums = np.convolve(np.where(ok, values, 0.0), np.ones(window), mode="full")[:len(values)]
    counts = np.convolve(ok.astype(float), np.ones(window), mode="full")[:len(values)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


# ---------------------------------------------------------------------------------- curves
def plot_epoch_metric(histories, key: str, ax=None, upto: float | None = None, baseline: bool = False,
                      ylabel: str | None = None, percent: bool = False):
    """One per-epoch column per run against the epoch (row 0 = before training).
    ``baseline`` draws row 0 of the first run as a dashed "random init" line."""
    ax = ax or plt.gca()
    scale = 100.0 if percent else 1.0
    for name, h in _as_dict(histories).items():
        values = h.epoch(key) * scale
        epochs = np.arange(len(values))
        keep = ~np.isnan(values) & (epochs <= (np.inf if upto is None else upto))
        ax.plot(epochs[keep], values[keep], "o-", ms=3, label=_label(name), color=COLORS.get(method_of(h)))
    if baseline:
        first = next(iter(_as_dict(histories).values()))
        ax.axhline(first.epoch(key)[0] * scale, ls="--", color=COLORS["random"], lw=1, label="random init")
    ax.set(xlabel="epoch", ylabel=ylabel or key)
    return ax


def plot_seed_band(ax, runs, key: str, color: str, label: str, scale: float = 1.0):
    """One configuration over its seeds (``runs``: seed -> history): the mean of a per-epoch
    column, shaded from the lowest to the highest seed, at the epochs every seed measured."""
    values = np.stack([h.epoch(key) for h in runs.values()]) * scale
    epochs = np.arange(values.shape[1])
    keep = ~np.isnan(values).any(axis=0)
    ax.plot(epochs[keep], values.mean(axis=0)[keep], "-o", ms=3, color=color, label=label)
    ax.fill_between(epochs[keep], values.min(axis=0)[keep], values.max(axis=0)[keep],
                    color=color, alpha=0.2)
    return ax


def plot_iteration_metric(histories, key: str, ax=None, window: int = 20, upto: float | None = None,
                          ylabel: str | None = None):
    """A per-iteration column against (fractional) epochs, smoothed over ``window`` iterations."""
    ax = ax or plt.gca()
    for name, h in _as_dict(histories).items():
        x, y = h.iteration("epoch"), smooth(h.iteration(key), window)
        keep = x <= (np.inf if upto is None else upto)
        ax.plot(x[keep], y[keep], lw=1.2, label=_label(name), color=COLORS.get(method_of(h)))
    ax.set(xlabel="epoch", ylabel=ylabel or key)
    return ax


def plot_cluster_sizes(histories, epoch: int | None = None, ax=None, min_cluster: bool = True):
    """Cluster sizes at ``epoch`` (default: the last), sorted from largest to smallest — a flat
    line is a balanced clustering; a steep head and a long tail of tiny clusters is not."""
    ax = ax or plt.gca()
    hs = _as_dict(histories)
    for name, h in hs.items():
        e = h.num_epochs if epoch is None else epoch
        if f"sizes/{e}" not in h.arrays:
            continue
        sizes = np.sort(h.sizes(e))[::-1]
        ax.plot(np.arange(1, len(sizes) + 1), sizes, lw=1.5, label=_label(name), color=COLORS.get(method_of(h)))
    cfg = next(iter(hs.values())).meta.get("config", {}) if min_cluster else {}
    if cfg.get("min_cluster"):
        ax.axhline(cfg["min_cluster"], ls=":", color="k", lw=1, label="min_cluster")
    ax.set(yscale="log", xlabel="cluster rank (largest first)", ylabel="images in cluster")
    return ax


# The dashboard's curve panels: (key, per-iteration?, y label, percent?). The sixth panel is the
# cluster sizes at the current epoch.
DASHBOARD_PANELS = (
    ("loss", True, "training loss", False),
    ("change_ratio", True, "labels changed per batch", False),
    ("nmi_previous", False, "NMI(labels t-1, labels t)", False),
    ("drift", False, "centroid drift (mean L2 distance)", False),
    ("knn_top1", False, "kNN top-1 (%)", True),
)


def dashboard_figure(histories, upto: int | None = None, title: str | None = None):
    """Six panels: loss and label churn per iteration; NMI(t-1, t), centroid drift and kNN
    accuracy per epoch; cluster sizes at epoch ``upto``. With ``upto`` the curves stop at that
    epoch but the axes keep the whole run's range, so replayed frames do not jump."""
    hs = _as_dict(histories)
    # three rows of two: at the book's page width every label stays legible (>= 9 px)
    fig, axes = plt.subplots(3, 2, figsize=(10, 10))
    total = max(h.num_epochs for h in hs.values())
    for ax, (key, per_iteration, ylabel, percent) in zip(axes.flat, DASHBOARD_PANELS):
        if per_iteration:
            plot_iteration_metric(hs, key, ax, upto=upto, ylabel=ylabel)
            values = [smooth(h.iteration(key), 20) for h in hs.values()]
        else:
            plot_epoch_metric(hs, key, ax, upto=upto, ylabel=ylabel, percent=percent,
                              baseline=key == "knn_top1")
            values = [h.epoch(key) * (100.0 if percent else 1.0) for h in hs.values()]
        # the whole run's ranges, so that frames of a replay share their axes
        ax.set_xlim(-0.2, total + 0.2)
        values = np.concatenate(values)
        values = values[np.isfinite(values)]
        if len(values):
            lo, hi = values.min(), values.max()
            pad = 0.08 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
    last = min(h.num_epochs for h in hs.values()) if upto is None else int(upto)
    plot_cluster_sizes(hs, last, axes.flat[-1]).set_title(f"cluster sizes at epoch {last}",
                                                         fontsize=10)
    for i in (0, 4, 5):          # where the key covers the fewest points of this run
        axes.flat[i].legend(loc="best", fontsize=10)
    fig.suptitle(title or (f"epoch {upto}" if upto is not None else "training dynamics"), fontsize=12)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- seed noise
def final_check_figure(checks: Mapping[str, tuple], title: str | None = None):
    """Chapter 8's check, one panel per metric: for each run of ``checks`` (label -> (positions of
    :func:`~odc_mini.study.seeds.locate` with ``last_only=True``, the seed spread)), the other
    seeds' final values (grey dots), the accepted band around their mean (grey bar) and the run's
    value (a dot, or a red cross where it is outside the band)."""
    metrics = [p.metric for p in next(iter(checks.values()))[0]]
    rows = -(-len(metrics) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        what, _, percent = METRICS[metric]
        scale = 100.0 if percent else 1.0
        for x, (positions, spread) in enumerate(checks.values()):
            p = next(q for q in positions if q.metric == metric)
            ax.plot([x, x], scale * (p.mean[-1] + np.array([-1, 1]) * p.band[-1]), color="0.85",
                    lw=9, solid_capstyle="butt", zorder=0)
            ax.plot(np.full(spread.n, x - 0.18), scale * spread.values[metric][:, -1], ".",
                    color="0.45")
            ax.plot(x, scale * p.value[-1], "o" if p.within else "X", ms=9,
                    color="#2ca02c" if p.within else "red")
        ax.set_xticks(range(len(checks)), [textwrap.fill(label, 11) for label in checks],
                      fontsize=10)
        ax.set_xlim(-0.6, len(checks) - 0.4)
        ax.set_title(textwrap.fill(what + (" (%)" if percent else ""), 22), fontsize=10)
    if len(metrics) < axes.size:                 # a spare panel says what the marks are
        marks = [([0], [0], dict(marker=".", color="0.45", ls="none"), "the other seeds"),
                 ([0], [0], dict(color="0.85", lw=9), "accepted band"),
                 ([0], [0], dict(marker="o", ms=9, color="#2ca02c", ls="none"), "within"),
                 ([0], [0], dict(marker="X", ms=9, color="red", ls="none"), "outside")]
        axes.flat[-1].legend([plt.Line2D(x, y, **kw) for x, y, kw, _ in marks],
                             [label for *_, label in marks], loc="center", frameon=False)
    fig.suptitle(title or "final numbers against the other seeds", fontsize=12)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- widgets
def scrubber(frames: Sequence[bytes], labels: Sequence, description: str = "epoch",
             play_interval_ms: int = 900, width: str = "99%"):
    """A slider (and a play button) over pre-rendered PNG frames.

    The frames sit in an ``ipywidgets.Stack``; the slider's index is tied to the stack with
    ``jslink``, so moving it needs no Python and works on the static book page too. The frames
    take 99% of the width: at 100% the widget's own border overflows the page's column by a few
    pixels and the page shows a scroll bar under every frame.
    """
    import ipywidgets as w

    if len(frames) != len(labels) or not frames:
        raise ValueError(f"scrubber needs one label per frame and at least one frame; got "
                         f"{len(frames)} frames and {len(labels)} labels")
    images = [w.Image(value=f, format="png", layout=w.Layout(width=width, height="auto"))
              for f in frames]
    stack = w.Stack(images, selected_index=len(images) - 1)
    slider = w.SelectionSlider(options=[str(l) for l in labels], index=len(images) - 1,
                               description=description, continuous_update=True,
                               layout=w.Layout(width="60%"))
    play = w.Play(value=len(images) - 1, min=0, max=len(images) - 1, interval=play_interval_ms)
    w.jslink((slider, "index"), (stack, "selected_index"))
    w.jslink((play, "value"), (slider, "index"))
    return w.VBox([w.HBox([play, slider]), stack])


def replay(histories, epochs: Sequence[int] | None = None, title: str = "epoch {epoch}"):
    """The dashboard at every epoch of saved runs, behind an epoch slider."""
    hs = _as_dict(histories)
    total = min(h.num_epochs for h in hs.values())
    epochs = list(range(total + 1)) if epochs is None else list(epochs)
    frames = [figure_png(dashboard_figure(hs, upto=e, title=title.format(epoch=e))) for e in epochs]
    return scrubber(frames, epochs)


class LiveDashboard:
    """The dashboard as a widget that redraws after every epoch of one or more training runs.

        dash = LiveDashboard(); display(dash.widget)
        run = train(cfg, callback=dash.callback("ODC"))

    When the runs come from the cache (nothing trains), call :meth:`show` with their histories.
    """

    def __init__(self):
        import ipywidgets as w
        self.widget = w.Image(format="png", layout=w.Layout(width="100%", height="auto"))
        self.histories: dict[str, History] = {}

    def callback(self, name: str) -> Callable[[History], None]:
        def update(history: History) -> None:
            self.histories[name] = history
            self.redraw()
        return update

    def show(self, histories) -> "LiveDashboard":
        self.histories.update(_as_dict(histories))
        self.redraw()
        return self

    def redraw(self) -> None:
        hs = {n: h for n, h in self.histories.items() if h.num_epochs >= 1}
        if not hs:
            return
        title = " · ".join(f"{n}: epoch {h.num_epochs}" for n, h in hs.items())
        # While a run trains, its last epoch is still to come: draw up to where each run is.
        self.widget.value = figure_png(dashboard_figure(hs, upto=max(h.num_epochs for h in hs.values()),
                                                        title=title))

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


# ---------------------------------------------------------------------------------- embeddings
UMAP_EXACT_BELOW = 4096   # umap-learn's own threshold: below it, exact distances, no NN-descent


def aligned_embeddings(history: History, reference: int | None = None, method: str = "umap",
                       seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                       n_epochs: int = 200) -> dict[int, np.ndarray]:
    """{epoch: (S, 2)}: every feature snapshot of a run placed in **one** 2-D map, fitted on the
    snapshot at ``reference`` (default: the last, where the features have the most structure);
    the other snapshots are put into that map by the fitted reducer (UMAP's ``transform``; for
    PCA, the same projection). An image keeps its place unless its feature moved, so stepping
    through the epochs shows images migrating between regions of the trained network's map.

    ``method``: ``"umap"`` (umap-learn, cosine distance; its first call in a process spends
    ~10-20 s compiling) or ``"pca"`` (instant, linear).
    """
    if method not in ("umap", "pca"):
        raise ValueError(f"unknown embedding method {method!r}; accepted: umap, pca")
    epochs = history.snapshot_epochs
    if not epochs:
        raise ValueError("this run kept no feature snapshots")
    reference = epochs[-1] if reference is None else reference
    if reference not in epochs:
        raise ValueError(f"no snapshot at epoch {reference}; snapshots: {epochs}")
    features = {e: np.asarray(history.snapshot(e)[0], dtype=np.float32) for e in epochs}
    if method == "pca":
        from sklearn.decomposition import PCA
        reducer = PCA(2, random_state=seed).fit(features[reference])
        return {e: reducer.transform(f).astype(np.float32) for e, f in features.items()}
    import umap
    inputs, metric = _umap_inputs(features, reference)
    with warnings.catch_warnings():
        # what umap-learn says of a precomputed metric (no inverse_transform; transform's input
        # is distances to the reference points) is what is meant here
        warnings.filterwarnings("ignore", message=".*precomputed metric", category=UserWarning)
        # n_jobs=1: a fixed random_state makes UMAP single-threaded anyway (it warns otherwise)
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs,
                            metric=metric, random_state=seed, n_jobs=1).fit(inputs[reference])
        return {e: np.asarray(reducer.embedding_ if e == reference else reducer.transform(x),
                              dtype=np.float32) for e, x in inputs.items()}


def _umap_inputs(features: Mapping[int, np.ndarray], reference: int):
    """What UMAP is given for each snapshot, and its metric: the features themselves with the
    cosine metric, or, for fewer than ``UMAP_EXACT_BELOW`` points, their cosine distances to the
    reference snapshot's points as a "precomputed" (S, S) matrix. For so few points umap-learn
    computes every distance itself, and its ``transform`` does so one pair at a time through
    Python (about 10 s per 2,000-image snapshot); one matrix product here gives the same
    distances, so the same neighbourhood graph, in well under a second."""
    if len(features[reference]) >= UMAP_EXACT_BELOW:
        return dict(features), "cosine"
    unit = {e: f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            for e, f in features.items()}
    inputs = {e: np.clip(1.0 - u @ unit[reference].T, 0.0, 2.0) for e, u in unit.items()}
    np.fill_diagonal(inputs[reference], 0.0)
    return inputs, "precomputed"


def _limits(coords: Sequence[np.ndarray]):
    allxy = np.concatenate(coords)
    lo, hi = np.percentile(allxy, 0.5, axis=0), np.percentile(allxy, 99.5, axis=0)
    pad = 0.05 * (hi - lo)
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def migration_figure(histories, embeddings: Mapping[str, Mapping[int, np.ndarray]], epoch: int,
                     previous: int | None = None, clusters: int = 4):
    """One panel per run, side by side at the same ``epoch``, in the run's aligned map
    (:func:`aligned_embeddings`): every snapshot image in light grey, and the members of a few
    clusters in colour, one colour per cluster. The clusters are the ``clusters`` largest among
    the snapshot images at ``previous`` (at ``epoch`` when there is none); a dot marks an image
    still in that cluster at ``epoch``, a cross one that has left it. The title says which share
    of those images stayed."""
    hs = _as_dict(histories)
    fig, axes = plt.subplots(1, len(hs), figsize=(10, 5.0), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    for ax, (name, h) in zip(axes[0], hs.items()):
        coords = embeddings[name]
        xy = coords[epoch]
        _, labels = h.snapshot(epoch)
        lims = _limits(list(coords.values()))
        ax.scatter(xy[:, 0], xy[:, 1], s=3, lw=0, color="0.82", zorder=1, rasterized=True)
        title = f"{_label(name)}, epoch {epoch}"
        if labels.min() < 0:     # DeepCluster before its first clustering: no labels yet
            title += "\nno clustering yet"
        else:
            since = previous if previous is not None and h.snapshot(previous)[1].min() >= 0 else None
            ref = labels if since is None else h.snapshot(since)[1]
            ids, counts = np.unique(ref, return_counts=True)
            stayed = members = 0
            for color, k in zip(palette, ids[np.argsort(-counts, kind="stable")[:clusters]]):
                inside = ref == k
                stay, left = inside & (labels == k), inside & (labels != k)
                ax.scatter(xy[stay, 0], xy[stay, 1], s=24, color=color, lw=0, zorder=3)
                ax.scatter(xy[left, 0], xy[left, 1], s=30, color=color, marker="x", lw=1.3, zorder=3)
                stayed, members = stayed + int(stay.sum()), members + int(inside.sum())
            if since is not None:
                title += f"\n{stayed / members:.0%} of the coloured images still in their cluster of epoch {since}"
            else:
                title += f"\nits {clusters} largest clusters"
        ax.set_title(title, fontsize=10)
        ax.set(xlim=lims[0], ylim=lims[1], xticks=[], yticks=[])
        ax.grid(False)
    handles = [plt.Line2D([], [], marker="o", ls="", color="0.3", label="still in its cluster"),
               plt.Line2D([], [], marker="x", ls="", color="0.3", mew=1.3, label="left its cluster"),
               plt.Line2D([], [], marker="o", ls="", color="0.82", label="the other snapshot images")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def migration_scrubber(histories, embeddings: Mapping[str, Mapping[int, np.ndarray]]):
    """:func:`migration_figure` at every snapshot epoch the runs share (each against the one
    before), the runs in lock-step, behind an epoch slider."""
    hs = _as_dict(histories)
    epochs = sorted(set.intersection(*(set(embeddings[n]) for n in hs)))
    frames = [figure_png(migration_figure(hs, embeddings, e, epochs[i - 1] if i else None))
              for i, e in enumerate(epochs)]
    return scrubber(frames, epochs)


# ---------------------------------------------------------------------------------- label changes
def label_change_epochs(history: History) -> np.ndarray:
    """(T,) the epoch at which each column of :func:`label_changes` ends."""
    return np.array(history.label_epochs[1:])


def plot_label_changes(histories, sample: int = 400, seed: int = 0, axes=None):
    """For a random sample of images (rows, sorted by how often they moved), which epochs moved
    them to another cluster (dark cells). Same images for every run."""
    hs = _as_dict(histories)
    if axes is None:
        _, axes = plt.subplots(1, len(hs), figsize=(min(10, 5 * len(hs)), 4), squeeze=False)
        axes = axes[0]
    for ax, (name, h) in zip(axes, hs.items()):
        changes = label_changes(h)
        rows = np.random.default_rng(seed).choice(len(changes), min(sample, len(changes)), replace=False)
        block = changes[rows]
        block = block[np.argsort(-block.sum(1), kind="stable")]
        ends = label_change_epochs(h)
        ax.imshow(block, aspect="auto", cmap="Greys", interpolation="nearest",
                  extent=(ends[0] - 0.5, ends[-1] + 0.5, len(block), 0))
        ax.set_title(f"{_label(name)}: {block.mean():.0%} of label slots changed", fontsize=10)
        ax.set(xlabel="epoch", ylabel="images (most-moved first)")
        ax.grid(False)
    return axes


# ---------------------------------------------------------------------------------- images
def image_grid(images, ax=None, nrow: int | None = None, titles: Sequence[str] | None = None):
    """uint8 images (n, 3, H, W) (numpy or torch) tiled into one picture."""
    images = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    n, _, hgt, wid = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    canvas = np.full((nrow * (hgt + 2), ncol * (wid + 2), 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[r * (hgt + 2):r * (hgt + 2) + hgt, c * (wid + 2):c * (wid + 2) + wid] = images[i].transpose(1, 2, 0)
    ax = ax or plt.gca()
    ax.imshow(canvas, interpolation="nearest")
    ax.set(xticks=[], yticks=[])
    ax.grid(False)
    if titles is not None:
        ax.set_title(" · ".join(titles), fontsize=10)
    return ax


def cluster_gallery(images, labels, clusters: Sequence[int], per_cluster: int = 10, seed: int = 0,
                    class_names: Sequence[str] | None = None, targets=None):
    """One row of ``per_cluster`` random member images per cluster id; the row title gives the
    cluster size and, with ``targets``, its most common true class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(clusters), 1, figsize=(per_cluster * 0.75, 0.95 * len(clusters)),
                             squeeze=False)
    for ax, k in zip(axes[:, 0], clusters):
        members = np.flatnonzero(labels == k)
        pick = rng.choice(members, min(per_cluster, len(members)), replace=False) if len(members) else []
        title = f"cluster {k}: {len(members)} images"
        if targets is not None and len(members):
            counts = np.bincount(np.asarray(targets)[members])
            top = int(counts.argmax())
            name = class_names[top] if class_names is not None else str(top)
            title += f", {counts[top] / len(members):.0%} {name}"
        if len(pick):
            image_grid(np.asarray(images)[pick] if not hasattr(images, "cpu") else images[pick], ax, nrow=1)
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=10)
        ax.axis("on")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- sweeps
def sweep_figure(results: Mapping, metrics: Mapping, xlabel: str, base=None, log: bool = False,
                 title: str | None = None, color: str = COLORS["odc"]):
    """One panel per metric against a knob's values. ``results``: ``{value: {seed: summary}}``
    (:func:`odc_mini.study.analysis.summary` of every run); ``metrics``: ``{key: (what,
    higher_is_better, percent)}`` as ``analysis.METRICS``. A dot per seed and a line through the
    seeds' means; with ``base`` (one of the values), a star at its mean and a grey band from its
    lowest to its highest seed: the noise a difference has to stand out from."""
    import textwrap
    values, rows = list(results), -(-len(metrics) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 2.6 * rows), squeeze=False)
    for ax, (key, (what, _, percent)) in zip(axes.flat, metrics.items()):
        y = np.array([[s[key] for s in results[v].values()] for v in values]) * (100 if percent else 1)
        if base is not None:
            b = y[values.index(base)]
            ax.axhspan(b.min(), b.max(), color="0.85", label="base: lowest to highest seed")
            ax.plot([base], [b.mean()], "*", ms=14, color="#ff7f0e", label="base setting", zorder=3)
        ax.plot(np.repeat(values, y.shape[1]), y.ravel(), ".", color=color, alpha=0.5, label="one seed")
        ax.plot(values, y.mean(axis=1), "o-", color=color, label="mean of the seeds")
        ax.set(xscale="log" if log else "linear", xlabel=xlabel,
               ylabel=textwrap.fill(what + (" (%)" if percent else ""), 24))
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.4 / (2.6 * rows), 1, 1))
    return fig
