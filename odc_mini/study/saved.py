"""The saved runs the book replays: compact histories of :mod:`odc_mini.study.experiments`, committed
with the package, each with the command that trained it and the machine it ran on.

    from odc_mini.study import saved
    saved.names()                             # what is there
    run = saved.load("quick-odc")             # a Run: .config, .history, .provenance, .name
    run = saved.find(config)                  # the saved run of this config's identity, or None
    saved.differences(mine.history, run.history)  # [] when bit-identical (one kernel path)

:func:`odc_mini.study.store.get` looks here first, then in the user's cache, else trains. Whether a run
of another machine agrees with a saved run *within seed noise* is :mod:`odc_mini.study.seeds`'
question.

A folder ``saved_runs/<name>/`` holds ``config.json`` (the run's identity), ``history.npz``
(compacted: every scalar record, label banks and snapshots only where the experiment keeps them)
and ``provenance.json``. ``saved_runs/index.json`` maps each run's key (``Config.key()``) to its
name, so a lookup reads one small file.
"""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import numpy as np

from . import experiments

from ..run import kernels
from ..config import Config
from ..history import History
from ..run.runfolder import Run, provenance, read_config

SAVED_DIR = Path(__file__).with_name("saved_runs")
INDEX = "index.json"


def _root(directory: str | Path | None) -> Path:
    return Path(directory) if directory is not None else SAVED_DIR


def names(directory: str | Path | None = None) -> list[str]:
    return sorted(p.parent.name for p in _root(directory).glob("*/history.npz") if p.is_file())


def load(name: str, directory: str | Path | None = None) -> Run:
    """The saved run ``name``: its config, history, provenance and name (no network)."""
    folder = _root(directory) / name
    if not (folder / "history.npz").is_file():
        raise ValueError(f"no saved run {name!r} in {folder.parent}; saved: "
                         f"{', '.join(names(directory)) or 'none'}")
    return Run(read_config(folder / "config.json"), History.load(folder / "history.npz"),
               name=name, provenance=json.loads((folder / "provenance.json").read_text()))


def index(directory: str | Path | None = None) -> dict[str, str]:
    """``{key: name}`` of the saved runs (``Config.key()`` of each run's config)."""
    path = _root(directory) / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def index_of_folders(directory: str | Path | None = None) -> dict[str, str]:
    """``{key: name}`` computed from the saved runs' own configs (what the index must say)."""
    root = _root(directory)
    return {read_config(root / name / "config.json").key(): name for name in names(directory)}


def find(config: Config, directory: str | Path | None = None) -> Run | None:
    """The saved run with ``config``'s identity (data folder, device and compile aside), if any."""
    name = index(directory).get(config.key())
    return load(name, directory) if name is not None else None


def _epochs_kept(rule: str, available: list[int]) -> list[int] | None:
    if rule == "all":
        return None
    if rule == "none" or not available:
        return []
    if rule == "ends":
        return sorted({available[0], available[-1]})
    raise ValueError(f"unknown keep rule {rule!r}; accepted: all, ends, none")


def compact_for(history: History, name: str) -> History:
    """``history`` with the label banks and snapshots that experiment ``name`` keeps."""
    experiment = experiments.get(name)
    return history.compact(
        label_epochs=_epochs_kept(experiment.keep_labels, history.label_epochs),
        snapshot_epochs=_epochs_kept(experiment.keep_snapshots, history.snapshot_epochs))


def save(history: History, config: Config, name: str, directory: str | Path | None = None,
         **notes) -> Path:
    """Write experiment ``name``'s run (its config must be the experiment's) compacted as the
    experiment says, with its provenance: the command, and the machine, software and times the
    history recorded; ``notes`` are added (they override). Updates the index."""
    experiment = experiments.get(name)
    if differ := experiment.config().differences(config):
        raise ValueError(f"this run is not experiment {name!r}: "
                         f"{', '.join(d.split(' ')[0] for d in differ)} differ")
    folder = _root(directory) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.identity(), indent=1) + "\n")
    compact_for(history, name).save(folder / "history.npz")
    record = {"name": name, "about": experiment.about, "command": experiment.command(),
              **provenance_of(history), "saved": datetime.date.today().isoformat(), **notes}
    (folder / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
    entries = {k: v for k, v in index(directory).items() if v != name} | {config.key(): name}
    (folder.parent / INDEX).write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")
    return folder


def provenance_of(history: History) -> dict:
    """:func:`odc_mini.run.runfolder.provenance`, completed for runs recorded before torch, python
    and the processor went into the history (the saving process's are taken)."""
    import torch
    record = provenance(history)
    record.setdefault("python", platform.python_version())
    record.setdefault("torch", torch.__version__)
    if history.meta.get("device") == "cpu":
        record.setdefault("cpu", kernels.cpu_model())
    record.setdefault("processes", 1)
    return record


# Records that measure the machine, not the run.
TIMINGS = ("wall_seconds", "train_seconds", "eval_seconds")


def differences(mine: History, book: History) -> list[str]:
    """Everything in which ``mine`` is not bit-identical to ``book``, one line each (an empty
    list: identical): every per-epoch record ``book`` has but the timings (a metric added to the
    package after ``book`` was saved is not held against it), every per-iteration record, and every
    array ``book`` keeps (label banks, cluster sizes, snapshots, targets). On one kernel path
    (:mod:`odc_mini.run.kernels`) a re-run of unchanged code has none."""
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

    for key in sorted(book.epoch_keys):
        if key not in TIMINGS:
            column("per-epoch", key, mine.epoch(key), book.epoch(key))
    for key in sorted(set(mine.iteration_keys) | set(book.iteration_keys)):
        if key not in mine.iteration_keys or key not in book.iteration_keys:
            out.append(f"per-iteration {key}: recorded by one run only")
        else:
            column("per-iteration", key, mine.iteration(key), book.iteration(key))
    for name, b in sorted(book.arrays.items()):
        a = mine.arrays.get(name)
        if a is None:
            out.append(f"array {name}: missing here")
        elif not np.array_equal(a, b):
            count = int((a != b).sum()) if a.shape == b.shape else "shape"
            out.append(f"array {name}: {count} entries differ")
    return out
