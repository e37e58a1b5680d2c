"""The saved runs the book replays: compact histories of :mod:`odc_mini.experiments`, committed
with the package, each with the command that trained it and the machine it ran on.

    from odc_mini import saved
    saved.names()                             # what is there
    run = saved.load("cpu50k-odc")            # .config, .history, .provenance
    run = saved.replay_or_train(config)       # the saved run of this config, else train (cached)
    saved.summary(run.history)                # the numbers of the results tables
    saved.differences(mine.history, run.history)  # [] when bit-identical (one kernel path)

Whether a run of another machine agrees with a saved run *within seed noise* is
:mod:`odc_mini.seeds`' question.

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

from . import experiments, kernels
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
              "saved": datetime.date.today().isoformat(),
              # what the training process recorded (runs from before it: the saving process's)
              "python": history.meta.get("python", platform.python_version()),
              "torch": history.meta.get("torch", torch.__version__)}
    if history.meta.get("device") == "cpu":
        record["cpu"] = history.meta.get("cpu", kernels.cpu_model())
        record.update({k: history.meta[k] for k in ("kernels", "kernel_fingerprint")
                       if k in history.meta})
    record.update(provenance)
    (folder / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
    return folder


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


# Records that measure the machine, not the run.
TIMINGS = ("wall_seconds", "train_seconds", "eval_seconds")


def differences(mine: History, book: History) -> list[str]:
    """Everything in which ``mine`` is not bit-identical to ``book``, one line each (an empty
    list: identical): every per-epoch and per-iteration record but the timings, and every array
    ``book`` keeps (label banks, cluster sizes, snapshots, targets). On one kernel path
    (:mod:`odc_mini.kernels`) a re-run of unchanged code has none."""
    out = []
    if mine.num_epochs != book.num_epochs:
        return [f"{mine.num_epochs} epochs here, {book.num_epochs} in the saved run"]

    def column(kind: str, key: str, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            out.append(f"{kind} {key}: {a.shape} values here, {b.shape} saved")
            return
        differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if differ.any():
            i = int(np.argmax(np.where(differ, np.abs(np.nan_to_num(a - b, nan=np.inf)), -1)))
            out.append(f"{kind} {key}: {int(differ.sum())} of {len(a)} differ, most at "
                       f"{'epoch' if kind == 'per-epoch' else 'iteration'} {i}: {a[i]!r} here, "
                       f"{b[i]!r} saved")

    for key in sorted(set(mine.epoch_keys) | set(book.epoch_keys)):
        if key not in TIMINGS:
            column("per-epoch", key, mine.epoch(key), book.epoch(key))
    for key in sorted(set(mine.iteration_keys) | set(book.iteration_keys)):
        if key not in mine.iteration_keys or key not in book.iteration_keys:
            out.append(f"per-iteration {key}: recorded by one run only")
        else:
            column("per-iteration", key, mine.iteration(key), book.iteration(key))
    for name, saved_array in sorted(book.arrays.items()):
        if name not in mine.arrays:
            out.append(f"array {name}: missing here")
        elif not np.array_equal(mine.arrays[name], saved_array):
            a, b = mine.arrays[name], saved_array
            count = int((a != b).sum()) if a.shape == b.shape else "shape"
            out.append(f"array {name}: {count} entries differ")
    return out
