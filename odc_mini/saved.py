"""The saved runs the book replays: compact histories of :mod:`odc_mini.experiments`, committed
with the package, each with the command that trained it and the machine it ran on.

    from odc_mini import saved
    saved.names()                             # what is there
    run = saved.load("cpu50k-odc")            # .config, .history, .provenance
    run = saved.replay_or_train(config)       # the saved run of this config, else train (cached)
    saved.summary(run.history)                # the numbers of the results tables
    saved.compare(mine.history, run.history)  # "your numbers versus the book's", with bands

A folder ``saved_runs/<name>/`` holds ``config.json``, ``history.npz`` (compacted: every scalar
record, label banks and snapshots only where the experiment keeps them) and ``provenance.json``.
"""
from __future__ import annotations

import datetime
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import experiments
from .config import Config
from .history import History

SAVED_DIR = Path(__file__).with_name("saved_runs")
# Settings that say where and how a run was computed, not what it is: a saved run replays for a
# config that differs only in these.
_NOT_COMPARED = ("data_root", "download", "device", "compile")


@dataclass
class SavedRun:
    name: str
    config: Config
    history: History
    provenance: dict

    def __repr__(self) -> str:
        return f"SavedRun({self.name!r}, {self.provenance.get('machine', '?')})"


def settings(config: Config) -> dict:
    """What identifies a run's training: its config without where or how it ran."""
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_COMPARED}


def names(directory: str | Path | None = None) -> list[str]:
    root = Path(directory) if directory is not None else SAVED_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "history.npz").is_file())


def load(name: str, directory: str | Path | None = None) -> SavedRun:
    folder = (Path(directory) if directory is not None else SAVED_DIR) / name
    if not (folder / "history.npz").is_file():
        raise ValueError(f"no saved run {name!r} in {folder.parent}; saved: "
                         f"{', '.join(names(directory)) or 'none'}")
    config = Config(**json.loads((folder / "config.json").read_text()))
    history = History.load(folder / "history.npz")
    provenance = json.loads((folder / "provenance.json").read_text())
    return SavedRun(name, config, history, provenance)


def find(config: Config, directory: str | Path | None = None) -> SavedRun | None:
    """The saved run trained with ``config``'s settings (data folder and device aside), if any."""
    wanted = settings(config)
    for name in names(directory):
        folder = (Path(directory) if directory is not None else SAVED_DIR) / name
        stored = Config(**json.loads((folder / "config.json").read_text()))
        if settings(stored) == wanted:
            return load(name, directory)
    return None


def replay_or_train(config: Config, retrain: bool = False, **cached_run_options):
    """The saved run of ``config`` (instantly), or, when there is none or ``retrain`` is set, the
    run trained on this machine (:func:`odc_mini.cache.cached_run`, so only the first time)."""
    config = config.validate()
    if not retrain:
        found = find(config)
        if found is not None:
            return found
    from .cache import cached_run       # trains: imported only when needed
    return cached_run(config, **cached_run_options)


def _epochs_kept(rule: str, num_epochs: int, available: list[int]) -> list[int] | None:
    if rule == "all":
        return None
    if rule == "none" or not available:
        return []
    if rule == "ends":
        return sorted({available[0], available[-1]})
    if rule == "three":
        middle = min(available, key=lambda e: abs(e - num_epochs / 2))
        return sorted({available[0], middle, available[-1]})
    raise ValueError(f"unknown keep rule {rule!r}; accepted: all, ends, three, none")


def save(history: History, config: Config, name: str, directory: str | Path | None = None,
         **provenance) -> Path:
    """Write experiment ``name``'s run (its config must be the experiment's) compacted as the
    experiment says, with its provenance: the command, the machine and wall time from the
    history, and any ``provenance`` items given (they override)."""
    experiment = experiments.get(name)
    if settings(config) != settings(experiment.config()):
        differ = [k for k, v in settings(config).items() if settings(experiment.config())[k] != v]
        raise ValueError(f"this run is not experiment {name!r}: {', '.join(differ)} differ")
    compact = history.compact(
        label_epochs=_epochs_kept(experiment.keep_labels, history.num_epochs, history.label_epochs),
        snapshot_epochs=_epochs_kept(experiment.keep_snapshots, history.num_epochs,
                                     history.snapshot_epochs))
    folder = (Path(directory) if directory is not None else SAVED_DIR) / name
    folder.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in config.to_dict().items() if k not in ("data_root", "download")}
    (folder / "config.json").write_text(json.dumps(values, indent=1) + "\n")
    compact.save(folder / "history.npz")
    record = {"name": name, "about": experiment.about, "command": experiment.command(),
              "machine": history.meta.get("machine"), "device": history.meta.get("device"),
              "processes": history.meta.get("processes", 1),
              "odc_mini": history.meta.get("version"),
              "wall_seconds": history.last("wall_seconds"),
              "train_seconds": history.last("train_seconds"),
              "saved": datetime.date.today().isoformat(), "python": platform.python_version(),
              "torch": torch.__version__}
    if history.meta.get("device") == "cpu":
        record["cpu"] = cpu_model()
    record.update(provenance)
    (folder / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
    return folder


def cpu_model() -> str:
    """The processor's model name (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------- numbers
SUMMARY_KEYS = ("knn_top1", "linear_top1", "nmi_classes", "ari_classes", "nmi_previous",
                "churn", "drift", "wall_seconds")


def summary(history: History) -> dict[str, float]:
    """One run's row of the results tables: the last kNN / linear-probe / NMI / ARI against the
    classes and NMI between the last two epochs' labels; ``churn``, the mean share of a batch
    whose label changed, over all iterations; ``drift``, the mean centroid drift per epoch;
    ``wall_seconds``, the run's wall time; ``random_*``: the network before training (row 0)."""
    out = {key: history.last(key) for key in ("knn_top1", "linear_top1", "nmi_classes",
                                               "ari_classes", "nmi_previous", "wall_seconds")}
    out["churn"] = float(np.nanmean(history.iteration("change_ratio")))
    out["drift"] = float(np.nanmean(history.epoch("drift")[1:]))
    out["random_knn_top1"] = float(history.epoch("knn_top1")[0])
    out["random_linear_top1"] = float(history.epoch("linear_top1")[0])
    return out


# Bands of the golden check: how far a re-run may be from the saved run, per epoch. On the same
# CPU, torch version and thread count a run is bit-identical (difference 0); the bands leave room
# for another CPU's rounding, and stay well below the gaps the book discusses.
BANDS = {"loss": 0.02, "knn_top1": 0.01, "linear_top1": 0.015, "nmi_classes": 0.01,
         "nmi_previous": 0.02, "change_ratio": 0.02, "drift": 0.02}


def compare(mine: History, book: History, bands: dict[str, float] | None = None) -> list[dict]:
    """Per metric: the largest difference over epochs between ``mine`` and ``book`` (epochs
    where both measured it; a metric neither measured is left out), the band, and whether it
    holds. Raises ValueError when the two
    histories are of different configs or lengths, which no band can compare."""
    bands = BANDS if bands is None else bands
    if mine.meta.get("config", {}).get("method") != book.meta.get("config", {}).get("method") \
            or mine.num_epochs != book.num_epochs:
        raise ValueError("the two runs differ in method or number of epochs; compare runs "
                         "of the same config")
    rows = []
    for key, band in bands.items():
        a, b = mine.epoch(key), book.epoch(key)
        both = ~np.isnan(a) & ~np.isnan(b)
        if (~np.isnan(a) != ~np.isnan(b)).any():
            raise ValueError(f"{key} was measured at different epochs in the two runs")
        if not both.any():
            continue                      # measured by neither run (e.g. no linear probe)
        diff = np.abs(a[both] - b[both])
        worst = int(np.flatnonzero(both)[np.argmax(diff)])
        rows.append({"metric": key, "epochs": int(both.sum()),
                     "largest_difference": float(diff.max()), "at_epoch": worst,
                     "mine": float(a[worst]), "book": float(b[worst]), "band": band,
                     "within": bool(diff.max() <= band)})
    return rows
