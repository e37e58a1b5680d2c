"""A run's folder, its whole life: created or checked, checkpointed while the run trains,
resumed, finished, loaded.

A finished run (``Run.save``) is::

    config.json    the Config, as JSON
    history.npz    the History (plain arrays, no pickles)
    model.pt       the network's state dict (loaded with weights_only=True)
    memory.npz     ODC only: the samples and centroids memories

A run still training, or stopped before its end, holds ``checkpoint.pt`` instead: everything the
run needs to continue exactly where it stopped (network, optimiser, the method's state, every
random-number generator, the history so far, the config and the package version; an epoch
stopped part-way with its sample order and the steps already taken). It is written after the
initial clustering, at every epoch end and when the run is interrupted, and removed once the
finished run is saved. A resumed run ends bit for bit where the run left alone would have ended,
on the same kernel path (``kernels.py`` says what is deterministic where).

Writing is atomic: a temporary file in the same folder, flushed to disk, then renamed over the
old one, so a crash (even SIGKILL) leaves either the old or the new checkpoint, never a half of
one. Reading uses ``torch.load(weights_only=True)``: a checkpoint holds only tensors, numbers,
strings, lists and dicts, so loading one cannot run code. Anything wrong with a folder or a file
is one ``ValueError`` line naming it, never a trace from torch.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..history import History
from ..memory import ODCMemory
from ..models import ClusterNet
from ..version import __version__

RUN_FILES = ("config.json", "history.npz", "model.pt", "memory.npz")
CHECKPOINT = "checkpoint.pt"
FORMAT = "odc_mini checkpoint"
FORMAT_VERSION = 1


@dataclass
class Run:
    """A run: its config and history, and, when it was trained or loaded from its folder, the
    trained network and (ODC) memory. A saved run of the book (``odc_mini.saved``) carries its
    ``name`` and ``provenance`` instead of the network."""
    config: Config
    history: History
    model: ClusterNet | None = None
    memory: ODCMemory | None = None
    name: str | None = None
    provenance: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        where = self.provenance.get("machine") or self.history.meta.get("machine", "?")
        return f"Run({self.name or self.config.method!r}, {self.history.num_epochs} epochs, {where})"

    def save(self, directory: str | Path, state: bool = True) -> Path:
        """Write ``config.json``, ``history.npz`` (no pickles) and, unless ``state=False``,
        ``model.pt`` (a state dict) and, for ODC, ``memory.npz`` into ``directory``, each file
        atomically. ``state=False`` keeps only the small record a chapter replays (ResNet-18
        weights and a 50,000-image memory are some 100 MB)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.history.save(directory / "history.npz")
        if state and self.model is None:
            raise ValueError("this run has no network to save (a saved run of the book); use "
                             "state=False")
        if state:
            tmp = directory / "model.pt.tmp"
            torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, tmp)
            tmp.replace(directory / "model.pt")
            if self.memory is not None:
                tmp = directory / "memory.tmp.npz"
                np.savez(tmp, features=self.memory.features.cpu().numpy(),
                         labels=self.memory.labels.cpu().numpy(),
                         centroids=self.memory.centroids.cpu().numpy())
                tmp.replace(directory / "memory.npz")
        # Last: a folder with config.json is a finished run, so the other files are in place.
        tmp = directory / "config.json.tmp"
        tmp.write_text(json.dumps(self.config.to_dict(), indent=2))
        tmp.replace(directory / "config.json")
        return directory


@dataclass
class FolderContent:
    """What a folder holds: ``kind`` is "empty" (or missing), "unfinished" (a checkpoint),
    "finished" (a saved run) or "foreign" (other files); ``config`` is the run's config dict."""
    kind: str
    config: dict | None = None
    detail: str = ""
    version: str | None = None   # the package version that wrote it (a checkpoint)
    device_type: str | None = None   # what a checkpoint's run trains on ("cpu", "cuda")


def inspect_folder(directory: str | Path) -> FolderContent:
    """Classify ``directory`` without loading anything heavy (a checkpoint is memory-mapped).
    ``ValueError`` if it holds a checkpoint or config that cannot be read."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        return FolderContent("foreign", detail=f"{directory} is a file, not a folder")
    names = sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) \
        if directory.is_dir() else []
    if not names:
        return FolderContent("empty")
    if CHECKPOINT in names:
        state = read_checkpoint(directory / CHECKPOINT, mmap=True)
        return FolderContent("unfinished", state["config"], describe_position(state),
                             state["version"], state.get("device_type"))
    if "config.json" in names:
        return FolderContent("finished", read_config(directory / "config.json").to_dict())
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return FolderContent("foreign", detail=f"it holds {shown} and no odc_mini run")


def describe_position(state: dict) -> str:
    """"stopped after epoch 3 of 10" or "stopped in epoch 4 of 10, after step 17 of 78"."""
    epochs = state["config"]["epochs"]
    partial = state.get("partial")
    if partial is None:
        return f"stopped after epoch {state['epoch']} of {epochs}"
    return (f"stopped in epoch {partial['epoch']} of {epochs}, after step {partial['step']} "
            f"of {partial['iterations']}")


def read_config(path: Path) -> Config:
    """The validated Config in ``path`` (a run's ``config.json``); one ValueError line otherwise."""
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise TypeError(f"a JSON {type(values).__name__}, not an object")
        return Config.from_dict(values).validate()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{path} is not a valid odc_mini config ({reason})") from None


def load_run(directory: str | Path, device: str = "cpu") -> Run:
    """Load what ``Run.save`` wrote. The model is rebuilt from the config and its weights are
    loaded with ``weights_only=True``; history and memory are plain arrays. Every file is
    checked, and anything wrong raises one ``ValueError`` line."""
    directory = Path(directory)
    content = inspect_folder(directory)
    if content.kind == "unfinished":
        raise ValueError(f"{directory} holds an unfinished run ({content.detail}); continue it with "
                         f"train(config, out={str(directory)!r}, resume=True) or "
                         f"python -m odc_mini train --out {directory} --resume")
    if content.kind != "finished":
        raise FileNotFoundError(f"{directory} holds no odc_mini run (no config.json)")
    cfg = Config.from_dict(content.config)
    history = History.load(_required(directory, "history.npz"))
    recorded = history.meta.get("config")
    if not isinstance(recorded, dict) or cfg.differences(recorded):
        raise ValueError(f"{directory / 'history.npz'} does not belong to the run of "
                         f"{directory / 'config.json'} (its recorded config differs)")
    dev = torch.device(device)
    model = ClusterNet.of(cfg)
    _load_weights(model, _required(directory, "model.pt"), cfg)
    model.to(dev).eval()
    memory = None
    if (directory / "memory.npz").is_file():
        num_samples = len(history.arrays["targets"]) if "targets" in history.arrays else None
        memory = _load_memory(directory / "memory.npz", cfg, num_samples, dev)
    elif cfg.method == "odc":
        raise ValueError(f"{directory} holds an ODC run without memory.npz (saved with "
                         "state=False?); its history loads with History.load")
    return Run(cfg, history, model, memory, provenance=provenance(history))


def provenance(history: History) -> dict:
    """What a run's history records of where and how it was trained."""
    keys = ("machine", "device", "processes", "torch", "python", "cpu", "kernels",
            "kernel_fingerprint")
    out = {k: history.meta[k] for k in keys if k in history.meta}
    out["odc_mini"] = history.meta.get("version")
    out["wall_seconds"] = history.last("wall_seconds")
    out["train_seconds"] = history.last("train_seconds")
    return out


def _required(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{directory} is an incomplete run: {name} is missing"
                         + ("; it was saved with state=False, and History.load reads its history"
                            if name == "model.pt" else ""))
    return path


def _load_weights(model: ClusterNet, path: Path, cfg: Config) -> None:
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not a readable torch state dict ({type(err).__name__}: "
                         f"{reason})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path} is not a state dict (a dict of tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong)) if keys]
        raise ValueError(f"{path} does not fit the network of config.json (arch={cfg.arch}, "
                         f"num_clusters={cfg.num_clusters}): tensors " + ", ".join(parts))
    model.load_state_dict(weights)


def _load_memory(path: Path, cfg: Config, num_samples: int | None, device: torch.device) -> ODCMemory:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("features", "labels", "centroids")}
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not a readable ODC memory file ({type(err).__name__}: "
                         f"{reason})") from None
    features, labels, centroids = arrays["features"], arrays["labels"], arrays["centroids"]
    n = features.shape[0] if features.ndim == 2 else -1
    problems = []
    if features.ndim != 2 or features.shape[1] != cfg.feat_dim or features.dtype != np.float32:
        problems.append(f"features {features.shape} {features.dtype}, expected (N, {cfg.feat_dim}) float32")
    if num_samples is not None and n != num_samples:
        problems.append(f"{n} samples, but the history has {num_samples}")
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        problems.append(f"labels {labels.shape} {labels.dtype}, expected ({n},) integers")
    elif labels.size and (labels.min() < 0 or labels.max() >= cfg.num_clusters):
        problems.append(f"labels outside 0..{cfg.num_clusters - 1}")
    if centroids.shape != (cfg.num_clusters, cfg.feat_dim):
        problems.append(f"centroids {centroids.shape}, expected ({cfg.num_clusters}, {cfg.feat_dim})")
    if problems:
        raise ValueError(f"{path} does not fit the run of config.json: " + "; ".join(problems))
    memory = ODCMemory.of(cfg, n, device)
    memory.features.copy_(torch.from_numpy(features))
    memory.labels.copy_(torch.from_numpy(labels.astype(np.int64)))
    memory.centroids = torch.from_numpy(centroids).to(device)
    memory.recount()   # the running sums and sizes behind the loss weights
    return memory


# ---------------------------------------------------------------------------- checking a folder

def check(out: str | Path, cfg: Config, resume: bool) -> FolderContent:
    """Check that the folder ``out`` can take the run of ``cfg`` (empty or new), or, with
    ``resume``, that it holds a run of ``cfg`` to continue. One ``ValueError`` line otherwise.
    Reads no more than the config of what is there."""
    out = Path(out)
    content = inspect_folder(out)
    if content.kind == "foreign":
        raise ValueError(f"output folder {out} cannot take the run: {content.detail}; choose an "
                         "empty or new folder")
    if content.kind == "empty":
        if resume:
            raise ValueError(f"cannot resume {out}: it holds no run (no {CHECKPOINT})")
        return content
    differences = cfg.differences(content.config)
    if resume:
        if content.version is not None and content.version != __version__:
            raise ValueError(f"cannot resume {out}: its checkpoint was written by odc_mini "
                             f"{content.version} and this is {__version__}; resume with that "
                             "version or start a new run")
        if differences:
            raise ValueError(f"cannot resume {out} with a different config: " + "; ".join(differences))
        return content
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise ValueError(f"output folder {out} holds a different run ({shown}); choose another "
                         "folder")
    if content.kind == "unfinished":
        raise ValueError(f"output folder {out} holds an unfinished run of this config "
                         f"({content.detail}); continue it with resume=True (CLI: --resume) or "
                         "choose another folder")
    raise ValueError(f"output folder {out} already holds the finished run of this config; load it "
                     f"with odc_mini.load_run({str(out)!r}) or choose another folder")


def open_run(out: Path | None, cfg: Config, resume: bool | str,
             device: torch.device) -> dict | Run | None:
    """None (start afresh), the checkpoint to resume from, or the finished run to return."""
    if out is None:
        if resume:
            raise ValueError(f"resume={resume!r} needs out=<the folder of the run to continue>")
        return None
    if resume == "auto":
        resume = inspect_folder(out).kind in ("unfinished", "finished")
    content = check(out, cfg, resume)
    if content.kind == "empty":
        return None
    if content.kind == "finished":
        return load_run(out, str(device))
    state = read_checkpoint(out / CHECKPOINT)
    check_resumable(state, cfg, device, out / CHECKPOINT)
    return state



# ---------------------------------------------------------------------------------- checkpoints

def write_checkpoint(out: Path, state: dict) -> None:
    """Write ``state`` as the folder's checkpoint, atomically."""
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
                 **state}, out / CHECKPOINT)


def remove_partial_writes(out: Path) -> None:
    """Delete the hidden files of a checkpoint write that a kill cut short."""
    for stale in out.glob(f".{CHECKPOINT}.*.tmp"):
        stale.unlink()


def finish(out: Path, run: Run) -> None:
    """Save the finished run into ``out`` and remove its checkpoint."""
    run.save(out)
    (out / CHECKPOINT).unlink(missing_ok=True)


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


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
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


def check_resumable(state: dict, cfg: Config, device: torch.device, path: Path) -> None:
    """Refuse, in one line, to resume a checkpoint of another version, config or device type
    (the augmentation's generator lives on the device: its state does not move)."""
    if state["version"] != __version__:
        raise ValueError(f"cannot resume {path}: it was written by odc_mini {state['version']} and "
                         f"this is {__version__}; resume with that version or start a new run")
    differences = cfg.differences(state["config"])
    if differences:
        raise ValueError(f"cannot resume {path} with a different config: "
                         + "; ".join(differences))
    saved = state.get("device_type")
    if saved is not None and saved != device.type:
        raise ValueError(f"cannot resume {path} on {device.type}: it was trained on {saved}; "
                         f"resume it on {saved} (device={saved!r})")


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
