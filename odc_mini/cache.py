"""Training runs cached on disk, keyed by their config, so that several chapters of the book share
one run and a rebuild does not retrain.

    run = cached_run(Config(method="odc", profile="quick"))   # trains once, then loads

A cached run is reused only when its config (every field except where the data lives and whether
it may be downloaded, with ``device="auto"`` resolved to the device type it would use) *and* the
package version it was trained with both match; otherwise it is stale and is trained again, and
the new run replaces it. The cache folder is ``$ODC_CACHE``, else ``~/.cache/odc_mini/runs``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from . import __version__
from .config import Config
from .history import History
from .run import Run, inspect_folder, load_run
from .train import check_output, resolve_device, train

CACHE_ENV = "ODC_CACHE"
KEY_FILE = "cache_key.json"
# Fields that say where the data comes from, not what is trained.
_NOT_IN_KEY = ("data_root", "download", "device")


def default_cache_dir() -> Path:
    """``$ODC_CACHE`` if set, else ``~/.cache/odc_mini/runs`` (read at call time)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "odc_mini" / "runs"


def cache_key(config: Config) -> dict:
    """What identifies a run: the training settings, the device type and the package version."""
    values = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
    return {"config": values, "device": resolve_device(config.device).type, "version": __version__}


def cache_path(config: Config, cache_dir: str | Path | None = None) -> Path:
    """The folder a run with this config is cached in: readable prefix, then a hash of the config
    (the version is not in the name, so a new version finds its stale predecessor and replaces it)."""
    key = cache_key(config)
    digest = hashlib.sha256(json.dumps([key["config"], key["device"]], sort_keys=True).encode())
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{config.method}-{config.profile}-{digest.hexdigest()[:12]}"


def cache_status(config: Config, cache_dir: str | Path | None = None) -> str:
    """"fresh" (reusable), "stale" (trained with another version or config) or "missing"."""
    path = cache_path(config, cache_dir)
    try:
        stored = json.loads((path / KEY_FILE).read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, json.JSONDecodeError):
        return "stale"
    return "fresh" if stored == cache_key(config) else "stale"


def cached_run(config: Config, cache_dir: str | Path | None = None, progress: bool = True,
               callback: Callable[[History], None] | None = None, retrain: bool = False) -> Run:
    """Load the cached run of ``config``, or train it (calling ``callback`` after every epoch, as
    :func:`odc_mini.train` does) and cache it. ``retrain=True`` trains even when a fresh run exists.

    The run is trained in a side folder (``<name>.partial``), checkpointed there after every
    epoch, and renamed into place once finished: an interrupted training never leaves a
    half-written run that a later call would take for a cached one, and the next call resumes it
    (bit-identical to an uninterrupted run) instead of starting again.
    """
    config = config.validate()
    path = cache_path(config, cache_dir)
    if not retrain and cache_status(config, cache_dir) == "fresh":
        run = load_run(path)
        run.config = config          # the caller's data_root / device, not the trainer's
        return run
    # Trained in a side folder with checkpoints: a build that dies part-way (a killed kernel, a
    # timeout) continues there the next time instead of starting again.
    tmp = path.with_name(path.name + ".partial")
    kind = "empty"
    try:
        kind = inspect_folder(tmp).kind
        if kind == "unfinished":
            check_output(tmp, config, resume=True)    # same config and version?
    except ValueError:       # another config or version, or a damaged checkpoint
        kind = "stale"
    if kind != "unfinished":  # only a checkpoint is worth keeping: start afresh otherwise
        shutil.rmtree(tmp, ignore_errors=True)
    run = train(config, progress=progress, callback=callback, out=tmp, resume="auto")
    (tmp / KEY_FILE).write_text(json.dumps(cache_key(config), indent=2, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)
    return run
