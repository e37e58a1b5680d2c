"""The numbers of finished runs: one run's summary, the results table, and comparisons over
seeds, the numbers behind every comparative sentence of the book.

A claim such as "ODC learns better features than DeepCluster" rests on several runs of each
configuration that differ only in their seed (:func:`odc_mini.study.experiments.seed_group`).
Runs of the same seed share the subset, the initial network and the data order, so the two methods are
compared seed by seed (paired), and the verdict is a plain count, not a test:

* "higher in all 3 seeds" / "lower in all 3 seeds": every paired difference has that sign;
* "within seed noise": the signs disagree, so the seeds do not say which is higher.

With 3 seeds, "in all 3" happens by chance alone one time in four, so the book also prints the
mean difference with the smallest and largest paired difference, which say how far apart the
methods are against how far apart the seeds are.

    analysis.summary(history)                     # one run's final numbers
    header, rows = analysis.results_table({"ODC": h1, "DeepCluster": h2})   # one column per run
    groups = analysis.load_groups({"ODC": "quick-odc", "DeepCluster": "quick-deepcluster"})
    table = analysis.table(groups)                # mean ± sd per metric and group
    c = analysis.compare(groups["ODC"], groups["DeepCluster"], "knn_top1")
    c.sentence("ODC", "DeepCluster")              # "kNN top-1 is higher for ODC than for ..."
    analysis.book_answer("medium")                # the book's answer, one sentence
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..history import History

# The measures the comparisons cover: (summary key, what it is, higher is better or None when
# neither is, format as a percentage).
METRICS = {
    "knn_top1": ("kNN top-1", True, True),
    "linear_top1": ("linear probe top-1", True, True),
    "nmi_classes": ("NMI with the classes", True, False),
    "change_ratio": ("label churn per batch", None, True),
    "relabelled": ("images relabelled in the last epoch", None, True),
    "nmi_previous": ("NMI between the last two epochs' labels", None, False),
    "feature_drift": ("centroid drift of the current features", None, False),
    "drift": ("centroid drift, each method's own centroids", None, False),
}

# How a sentence names each measure (singular, so that "is higher" reads right).
PHRASES = {"knn_top1": "kNN top-1", "linear_top1": "the linear probe's top-1",
           "nmi_classes": "the NMI with the classes", "change_ratio": "the label churn per batch",
           "relabelled": "the share of images relabelled in the last epoch",
           "nmi_previous": "the NMI between the last two epochs' labels",
           "feature_drift": "the drift of the current features' centroids",
           "drift": "the drift of each method's own centroids"}


def summary(history: History, churn_from: int = 1) -> dict[str, float]:
    """One run's row of the results tables: the last kNN / linear-probe / NMI / ARI against the
    classes and NMI between the last two epochs' labels; ``change_ratio`` (label churn), the mean
    share of a batch whose label changed, over the iterations of epochs ``churn_from`` to the last (iterations
    without a previous label, DeepCluster's first epoch, do not count); ``relabelled``, the share
    of images whose label changed in the last epoch; ``drift``, the mean centroid drift per
    epoch, and ``final_drift`` the last epoch's; ``feature_drift``, the mean drift of the
    centroids of the current network's features, measured alike for both methods (NaN for runs
    saved before it existed); ``handled``, the small clusters repaired in the whole run;
    ``min_size`` and ``max_size``, the smallest and largest cluster at the end;
    ``wall_seconds``, the run's wall time; ``random_*``: the network before training (row 0)."""
    out = {key: history.last(key) for key in ("knn_top1", "linear_top1", "nmi_classes",
                                               "ari_classes", "nmi_previous", "wall_seconds",
                                               "min_size", "max_size", "relabelled")}
    epoch = np.ceil(history.iteration("epoch") - 1e-9)        # iteration i belongs to epoch 1..E
    out["change_ratio"] = float(np.nanmean(history.iteration("change_ratio")[epoch >= churn_from]))
    out["drift"] = float(np.nanmean(history.epoch("drift")[1:]))
    out["final_drift"] = history.last("drift")
    feature = history.epoch("feature_drift")[1:] if "feature_drift" in history.epoch_keys else []
    out["feature_drift"] = float(np.nanmean(feature)) if np.isfinite(feature).any() else float("nan")
    out["handled"] = float(np.nansum(history.epoch("clusters_handled")))
    out["random_knn_top1"] = float(history.epoch("knn_top1")[0])
    out["random_linear_top1"] = float(history.epoch("linear_top1")[0])
    return out


# One run's facts that more than one page quotes: each with its one definition and format, so
# that two pages quoting the same run say the same thing (tests/test_book.py checks that they do).
# name: (what it is, function of the history, format)
def label_changes(history: History) -> np.ndarray:
    """(N, T) bool: did image i's pseudo-label change in transition t? Transition t ends at
    epoch ``label_change_epochs(history)[t]``. Epochs without a recorded label bank (DeepCluster's
    epoch 0) are skipped, so for DeepCluster the first transition is epoch 1 -> 2."""
    banks = np.stack([history.labels(e) for e in history.label_epochs], axis=1)
    return banks[:, 1:] != banks[:, :-1]


def _changes_at_visits(h: History) -> float:
    """Label changes per image over the run, counted at every visit: the mean churn per batch
    times the images drawn, divided by the number of images."""
    drawn = h.iteration("change_ratio").size * h.meta["config"]["batch_size"]
    return summary(h)["change_ratio"] * drawn / len(h.labels(h.label_epochs[0]))


def _changes_at_epoch_ends(h: History) -> float:
    """Label changes per image over the run, counted between consecutive epoch ends only (a
    label that leaves and comes back within an epoch counts nothing)."""
    return float(label_changes(h).sum(axis=1).mean())


def _handled(h: History) -> np.ndarray:
    return h.epoch("clusters_handled")[1:]          # row 0: the repairs of the initial clustering


FACTS = {
    "knn_last": ("kNN top-1 at the end", lambda h: h.last("knn_top1"), "{:.1%}"),
    "linear_last": ("linear probe top-1 at the end", lambda h: h.last("linear_top1"), "{:.1%}"),
    "nmi_classes_last": ("NMI with the classes at the end", lambda h: h.last("nmi_classes"),
                         "{:.3f}"),
    "nmi_previous_last": ("NMI between the last two epochs' labels",
                          lambda h: h.last("nmi_previous"), "{:.3f}"),
    "relabelled_last": ("images whose label changed in the last epoch",
                        lambda h: h.last("relabelled"), "{:.1%}"),
    "churn_mean": ("mean share of a batch whose label changed",
                   lambda h: summary(h)["change_ratio"], "{:.1%}"),
    "largest_last": ("largest cluster at the end (images)", lambda h: h.last("max_size"),
                     "{:,.0f}"),
    "smallest_last": ("smallest cluster at the end (images)", lambda h: h.last("min_size"),
                      "{:,.0f}"),
    "handled_training": ("small clusters handled during training (epochs 1 to the last)",
                         lambda h: float(np.nansum(_handled(h))), "{:,.0f}"),
    "handled_peak": ("most small clusters handled in one epoch",
                     lambda h: float(np.nanmax(_handled(h))), "{:,.0f}"),
    "handled_peak_epoch": ("the epoch that handled the most small clusters",
                           lambda h: int(np.nanargmax(_handled(h))) + 1, "{:d}"),
    "changes_at_visits": ("label changes per image over the run, counted at every visit",
                          _changes_at_visits, "{:.1f}"),
    "changes_at_epoch_ends": ("label changes per image over the run, counted between epoch ends",
                              _changes_at_epoch_ends, "{:.1f}"),
}


def fact(history: History, name: str) -> str:
    """The fact ``name`` of :data:`FACTS` of one run, formatted as every page prints it."""
    if name not in FACTS:
        raise ValueError(f"unknown fact {name!r}; accepted: {', '.join(FACTS)}")
    _, compute, fmt = FACTS[name]
    return fmt.format(compute(history))


def pct(x) -> str:
    """A fraction as a percentage with one decimal ("41.4%"); a dash for a missing value."""
    return "–" if x is None or x != x else f"{x:.1%}"


def num(x, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash for a missing value."""
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def results_table(runs: dict[str, History],
                  churn_from: int = 1) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the side-by-side results, one column per run (``{name: History}``): the
    :func:`summary` of the end of each run, the random-init network for reference, and the mean
    churn over the epochs from ``churn_from`` on (the same epochs for every run, e.g. those where
    all of them have a previous label)."""
    rows = {name: summary(history, churn_from) for name, history in runs.items()}
    first = next(iter(rows.values()))
    lines = [
        (f"kNN top-1 (random init: {pct(first['random_knn_top1'])})", "knn_top1", pct),
        (f"linear probe top-1 (random init: {pct(first['random_linear_top1'])})",
         "linear_top1", pct),
        ("NMI vs classes", "nmi_classes", num),
        ("ARI vs classes", "ari_classes", num),
        (f"mean churn per batch (epoch {churn_from} to the end)", "change_ratio", pct),
        ("images relabelled in the last epoch", "relabelled", pct),
        ("final NMI(t−1, t)", "nmi_previous", num),
        ("final centroid drift", "final_drift", num),
        ("smallest / largest cluster", None, lambda r: f"{r['min_size']:.0f} / {r['max_size']:.0f}"),
        ("wall time (training + evaluation)", "wall_seconds", lambda s: f"{s / 60:.1f} min"),
    ]
    body = [[label] + [fmt(r if key is None else r[key]) for r in rows.values()]
            for label, key, fmt in lines]
    return [""] + list(runs), body


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A table as aligned plain text (the command line prints it)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def load_groups(names: dict[str, str], directory=None) -> dict[str, dict[int, History]]:
    """``{label: {seed: history}}`` of the saved runs of each experiment's seed group."""
    from . import experiments, saved
    def seeds(name: str) -> dict[int, History]:
        return {experiments.get(member).config().seed: saved.load(member, directory).history
                for member in experiments.seed_group(name)}
    return {label: seeds(name) for label, name in names.items()}


def finals(runs: dict[int, History], metric: str, churn_from: int = 1) -> dict[int, float]:
    """``{seed: value}`` of :func:`summary`'s ``metric`` for each run."""
    return {seed: summary(h, churn_from)[metric] for seed, h in sorted(runs.items())}


@dataclass
class Comparison:
    metric: str
    a: dict[int, float]        # seed -> value of the first group
    b: dict[int, float]        # seed -> value of the second group (the same seeds)

    @property
    def differences(self) -> np.ndarray:
        return np.array([self.a[s] - self.b[s] for s in self.a])

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def verdict(self) -> str:
        d = self.differences
        if np.all(d > 0):
            return f"higher in all {self.n} seeds"
        if np.all(d < 0):
            return f"lower in all {self.n} seeds"
        return "within seed noise"

    def _fmt(self, value: float, signed: bool = False) -> str:
        percent = METRICS.get(self.metric, ("", None, False))[2]
        if percent:
            return f"{100 * value:+.1f} points" if signed else f"{100 * value:.1f}%"
        return f"{value:+.3f}" if signed else f"{value:.3f}"

    def sentence(self, name_a: str, name_b: str) -> str:
        """One sentence, e.g. "kNN top-1 is higher for ODC than for DeepCluster in all 3 seeds (by
        +1.2 points on average; per seed +0.4 to +2.1 points)"."""
        what = PHRASES.get(self.metric, self.metric)
        what = what if what.startswith("kNN") else what[0].upper() + what[1:]
        d = self.differences
        spread = (f"by {self._fmt(d.mean(), True)} on average; per seed {self._fmt(d.min(), True)} "
                  f"to {self._fmt(d.max(), True)}")
        verdict = self.verdict
        if verdict == "within seed noise":
            return (f"{what} is within seed noise between {name_a} and {name_b}: neither is higher "
                    f"in every one of the {self.n} seeds ({name_a} minus {name_b}: {spread})")
        word = verdict.split()[0]
        return f"{what} is {word} for {name_a} than for {name_b} in all {self.n} seeds ({spread})"


def compare(a: dict[int, History], b: dict[int, History], metric: str,
            churn_from: int = 1) -> Comparison:
    """``metric`` of group ``a`` against group ``b``, paired by seed (the seeds both have)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"a comparison needs at least 2 seeds that both groups have; got {seeds}")
    return Comparison(metric, finals({s: a[s] for s in seeds}, metric, churn_from),
                      finals({s: b[s] for s in seeds}, metric, churn_from))


def headline(a: dict[int, History], b: dict[int, History], name_a: str, name_b: str,
             metrics=("knn_top1", "linear_top1")) -> str:
    """The book's answer as one sentence, from the seed verdicts of ``metrics`` (paired by seed):
    which group learns better features, or that neither does by every measure in every seed,
    with each measure's mean ± sd per group and its verdict."""
    comparisons = [compare(a, b, metric) for metric in metrics]
    words = {c.verdict.split()[0] for c in comparisons}
    if words == {"higher"}:
        lead = f"{name_a} learns better features than {name_b}"
    elif words == {"lower"}:
        lead = f"{name_b} learns better features than {name_a}"
    else:
        lead = f"neither {name_a} nor {name_b} learns better features by every measure in every seed"
    parts = []
    for c in comparisons:
        scale, digits, unit = (100, 1, "%") if METRICS[c.metric][2] else (1, 3, "")
        (ma, sa), (mb, sb) = (mean_sd(scale * np.array(list(g.values()))) for g in (c.a, c.b))
        word = c.verdict.split()[0]
        verdict = c.verdict if word == "within" else f"{word} for {name_a} in all {c.n} seeds"
        parts.append(f"{METRICS[c.metric][0]} {ma:.{digits}f} ± {sa:.{digits}f}{unit} against "
                     f"{mb:.{digits}f} ± {sb:.{digits}f}{unit}, {verdict} "
                     f"(by {c._fmt(c.differences.mean(), True)} on average)")
    return f"{lead}: " + "; ".join(parts)


def book_answer(profile: str) -> str:
    """The book's answer at a profile ("quick" or "medium"): :func:`headline` of ODC against
    DeepCluster at its reference settings, over the saved seeds of both."""
    pair = load_groups({"ODC": f"{profile}-odc", "DC": f"{profile}-deepcluster-ref"})
    return headline(pair["ODC"], pair["DC"], "ODC", "DeepCluster at its reference settings")


def gaps(a: dict[int, History], b: dict[int, History], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, differences)``: ``metric`` of group ``a`` minus that of group ``b`` at every
    epoch that both measured in each seed they share, paired by seed, as a (seeds, epochs) array:
    how a gap opens or closes as training goes on."""
    seeds = sorted(set(a) & set(b))
    rows = np.stack([a[s].epoch(metric) - b[s].epoch(metric) for s in seeds])
    measured = ~np.isnan(rows).any(axis=0)
    return np.flatnonzero(measured), rows[:, measured]


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def table(groups: dict[str, dict[int, History]], metrics=tuple(METRICS), churn_from: int = 1,
          compare_to: str | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of "mean ± sd (n seeds)" per metric and group; with ``compare_to`` (a
    group label) one more column per other group with its verdict against that group."""
    labels = list(groups)
    header = ["measure"] + [f"{g} ({len(groups[g])} seeds)" for g in labels]
    others = [g for g in labels if g != compare_to] if compare_to else []
    header += [f"{g} vs {compare_to}" for g in others]
    rows = []
    for metric in metrics:
        what, _, percent = METRICS[metric]
        row = [what]
        for g in labels:
            mean, sd = mean_sd(finals(groups[g], metric, churn_from).values())
            row.append(f"{100 * mean:.1f} ± {100 * sd:.1f}%" if percent else f"{mean:.3f} ± {sd:.3f}")
        row += [compare(groups[g], groups[compare_to], metric, churn_from).verdict for g in others]
        rows.append(row)
    return header, rows
