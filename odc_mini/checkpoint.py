"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file, ``<run folder>/checkpoint.pt``, written by ``train(config, out=...)`` after
the initial clustering, at the end of every epoch and when the run is interrupted (Ctrl-C). It
holds the network, the optimiser, the method's state (for ODC the whole samples and centroids
memory with its running sums, sizes, loss weights and iteration counter; for DeepCluster the
current clustering), every random-number generator (torch, numpy, python, the sampler's,
augmentation's and colour-order generators), the history so far, the config and the package
version. An interrupted epoch is stored with its sample order and the steps already taken, so a
resumed run takes the very next step.

Writing is atomic: a temporary file in the same folder, flushed to disk, then renamed over the
old checkpoint, so a crash (even SIGKILL) leaves either the old or the new checkpoint, never a
half-written one. Reading uses ``torch.load(weights_only=True)``: a checkpoint holds only
tensors, numbers, strings, lists and dicts, so loading one cannot run code.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import __version__

FILE_NAME = "checkpoint.pt"
FORMAT = "odc_mini checkpoint"
FORMAT_VERSION = 1
# Config fields that say where the data is, not what is trained: a run may resume with others.
NOT_COMPARED = ("data_root", "download")


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name: a file left by a kill in mid-write is not taken for part of the run.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read(path: str | Path, mmap: bool = False) -> dict:
    """Load and check a checkpoint. ``ValueError`` (one line) if the file is not a readable
    odc_mini checkpoint; ``mmap=True`` maps the tensors lazily (cheap when only the config is
    wanted)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:   # a truncated zip, a pickle with code in it, ...
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not a readable checkpoint, it is probably truncated or not "
                         f"written by odc_mini ({type(err).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an odc_mini checkpoint (a torch file without the "
                         f"{FORMAT!r} marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {state.get('format_version')!r}; this "
                         f"odc_mini reads format {FORMAT_VERSION}")
    return state


def config_differences(saved: dict, now: dict) -> list[str]:
    """``["epochs (saved 3, now 10)", ...]`` for every compared field that differs."""
    keys = sorted((set(saved) | set(now)) - set(NOT_COMPARED))
    return [f"{k} (saved {saved.get(k)!r}, now {now.get(k)!r})"
            for k in keys if saved.get(k) != now.get(k)]


def check_resumable(state: dict, config: dict, path: Path) -> None:
    """Refuse, in one line, to resume a checkpoint of another version or another config."""
    if state["version"] != __version__:
        raise ValueError(f"cannot resume {path}: it was written by odc_mini {state['version']} and "
                         f"this is {__version__}; resume with that version or start a new run")
    differences = config_differences(state["config"], config)
    if differences:
        raise ValueError(f"cannot resume {path} with a different config: "
                         + "; ".join(differences))


# ---------------------------------------------------------------------------------------- RNGs

def capture_rng(generators: dict[str, torch.Generator]) -> dict:
    """The state of every random-number generator a run draws from."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_cpu(obj):
    """A copy of nested dicts/lists/tuples with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
