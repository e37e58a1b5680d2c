"""One run store: where the book, the command line and a user get the run of a config.

    run = store.get(config)                 # saved with the book, else cached here, else trained
    run = store.get(config, replay=False)   # trained on this machine (cached after the first time)

Every run is looked up by one key, its config's identity (``Config.key()``: every setting but
where the data lives, the device and compile), in this order:

1. **the book's saved runs** (``odc_mini/study/saved_runs``, through their index): instantly, the
   history and provenance of a run trained elsewhere;
2. **the user's cache** (``$ODC_CACHE``, else ``~/.cache/odc_mini/runs``), in the folder
   ``<method>-<profile>-<key>``: a run this machine trained before, with its network and memory,
   reused when this version of odc_mini wrote it (another version's is stale and retrained);
3. **training** it, in ``<folder>.partial`` with checkpoints: a build killed part-way resumes
   there the next time (bit-identical to an uninterrupted run), and the finished run is renamed
   into place, so a half-written run is never taken for a cached one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..run import runfolder

from . import saved
from ..run.start import resolve_device
from ..config import Config
from ..history import History
from ..run.session import train
from ..version import __version__

CACHE_ENV = "ODC_CACHE"
KEY_FILE = "cache_key.json"


def default_cache_dir() -> Path:
    """``$ODC_CACHE`` if set, else ``~/.cache/odc_mini/runs`` (read at call time)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "odc_mini" / "runs"


def cache_path(config: Config, cache_dir: str | Path | None = None) -> Path:
    """The folder of ``config``'s run in the cache: a readable prefix, then its key (the version
    is not in the name, so a new version finds its stale predecessor and replaces it)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{config.method}-{config.profile}-{config.key()}"


def _stamp(config: Config) -> dict:
    return {"identity": config.identity(), "version": __version__}


def cache_status(config: Config, cache_dir: str | Path | None = None) -> str:
    """"fresh" (reusable), "stale" (trained with another version or config) or "missing"."""
    try:
        stored = json.loads((cache_path(config, cache_dir) / KEY_FILE).read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, json.JSONDecodeError):
        return "stale"
    return "fresh" if stored == _stamp(config) else "stale"


def training_time(config: Config, cache_dir: str | Path | None = None) -> str:
    """What a reader about to call ``get(config, replay=False)`` should know, in short lines (a
    notebook's output does not wrap): whether this machine has the run already, and if not, how
    long the book's saved run of the same settings took to train, and where."""
    config = config.validate()
    if cache_status(config, cache_dir) == "fresh":
        return "already in this machine's run cache: it loads in seconds."
    if (found := saved.find(config)) is None:
        return ("not trained on this machine yet.\n"
                "The book has no saved run of these settings to say how long training takes.")
    p = found.provenance
    return (f"not trained on this machine yet.\n"
            f"The book's saved run of these settings took {p['wall_seconds'] / 60:.1f} min to train\n"
            f"on {p['cpu']} ({p['machine']}).\n"
            "A progress bar follows the training; the run is cached after it.")


def get(config: Config, *, replay: bool = True, retrain: bool = False,
        cache_dir: str | Path | None = None, progress: bool = True,
        callback: Callable[[History], None] | None = None) -> runfolder.Run:
    """The run of ``config`` (see the module docstring). ``replay=False`` skips the saved runs
    (a run of this machine, with its network); ``retrain=True`` trains even when a run exists.
    ``callback(history)`` is called after every epoch that is trained, as :func:`train` does."""
    config = config.validate()
    if replay and not retrain and (found := saved.find(config)) is not None:
        return found
    path = cache_path(config, cache_dir)
    if not retrain and cache_status(config, cache_dir) == "fresh":
        run = runfolder.load_run(path)
        run.config = config          # the caller's data_root / device, not the trainer's
        return run
    tmp = path.with_name(path.name + ".partial")
    # Only a checkpoint is worth keeping, if it has the same config, version and device type.
    try:
        kind = runfolder.check(tmp, config, resume=True, device=resolve_device(config.device)).kind
    except ValueError:       # no run, another config, version or device, or a damaged checkpoint
        kind = None
    if kind != "unfinished":     # start afresh
        shutil.rmtree(tmp, ignore_errors=True)
    run = train(config, progress=progress, callback=callback, out=tmp, resume="auto")
    (tmp / KEY_FILE).write_text(json.dumps(_stamp(config), indent=2, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)
    return run
