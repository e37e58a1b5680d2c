"""A run's folder, its whole life: created or checked, checkpointed while the run trains,
resumed, finished, loaded.

A finished run (``Run.save``) is::

    config.json    the Config, as JSON
    history.npz    the History (plain arrays, no pickles)
    model.pt       the network's state dict (loaded with weights_only=True)
    memory.pt      ODC only: the samples and centroids memories (the memory's state dict)

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
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..files import atomic_write
from ..history import History
from ..memory import ODCMemory
from ..models import network_of
from ..version import __version__

CHECKPOINT = "checkpoint.pt"
FORMAT = "odc_mini checkpoint"
FORMAT_VERSION = 2       # 2: the method module's state dict (network, memories, optimiser)


@dataclass
class Run:
    """A run: its config and history, and, when it was trained or loaded from its folder, the
    trained network and (ODC) memory. A saved run of the book (``odc_mini.study.saved``) carries its
    ``name`` and ``provenance`` instead of the network."""
    config: Config
    history: History
    model: torch.nn.Module | None = None
    memory: ODCMemory | None = None
    name: str | None = None
    provenance: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        where = self.provenance.get("machine") or self.history.meta.get("machine", "?")
        return f"Run({self.name or self.config.method!r}, {self.history.num_epochs} epochs, {where})"

    def save(self, directory: str | Path, state: bool = True) -> Path:
        """Write ``config.json``, ``history.npz`` (no pickles) and, unless ``state=False``,
        ``model.pt`` and, for ODC, ``memory.pt`` (state dicts) into ``directory``, each file
        atomically. ``state=False`` keeps only the small record a chapter replays (ResNet-18
        weights and a 50,000-image memory are some 100 MB)."""
        directory = Path(directory)
        self.history.save(directory / "history.npz")     # first: it creates the folder
        if state and self.model is None:
            raise ValueError("this run has no network to save (a saved run of the book); use "
                             "state=False")
        if state:
            for name, module in (("model.pt", self.model), ("memory.pt", self.memory)):
                if module is not None:
                    weights = {k: v.cpu() for k, v in module.state_dict().items()}
                    atomic_write(directory / name, lambda f, w=weights: torch.save(w, f))
        # Last: a folder with config.json is a finished run, so the other files are in place.
        text = json.dumps(self.config.to_dict(), indent=2).encode()
        atomic_write(directory / "config.json", lambda f: f.write(text))
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
    model = network_of(cfg)
    _load_state(model, _required(directory, "model.pt"),
                f"the network of config.json (arch={cfg.arch}, num_clusters={cfg.num_clusters})")
    model.to(dev).eval()
    memory = None
    if cfg.method == "odc":
        if not (directory / "memory.pt").is_file():
            raise ValueError(f"{directory} holds an ODC run without memory.pt (saved with "
                             "state=False?); its history loads with History.load")
        memory = ODCMemory.of(cfg, len(history.arrays["targets"]))
        _load_state(memory, directory / "memory.pt",
                    f"the memory of the run ({len(memory.labels)} images, feat_dim="
                    f"{cfg.feat_dim}, num_clusters={cfg.num_clusters})")
        if memory.labels.min() < 0 or memory.labels.max() >= cfg.num_clusters:
            raise ValueError(f"{directory / 'memory.pt'} holds labels outside "
                             f"0..{cfg.num_clusters - 1}")
        memory.to(dev)
    return Run(cfg, history, model, memory, provenance=provenance(history))


def provenance(history: History) -> dict:
    """What a run's history records of where and how it was trained."""
    keys = ("machine", "device", "processes", "torch", "python", "cpu", "kernels",
            "kernel_fingerprint")
    return {**{k: history.meta[k] for k in keys if k in history.meta},
            "odc_mini": history.meta.get("version"), "wall_seconds": history.last("wall_seconds"),
            "train_seconds": history.last("train_seconds")}


def _required(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{directory} is an incomplete run: {name} is missing"
                         + ("; it was saved with state=False, and History.load reads its history"
                            if name == "model.pt" else ""))
    return path


def _load_state(module: torch.nn.Module, path: Path, what: str) -> None:
    """Load a state dict file (``weights_only``) into ``module``; one ValueError line when it is
    unreadable or does not fit ``what``."""
    state = _torch_load(path, "torch state dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a dict of tensors)")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {kind} (first: {keys[0]})" for kind, keys in
                 (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong)) if keys]
        raise ValueError(f"{path} does not fit {what}: tensors " + ", ".join(parts))
    module.load_state_dict(state)


# ---------------------------------------------------------------------------- checking a folder

def check(out: str | Path, cfg: Config, resume: bool | str,
          device: torch.device | None = None) -> FolderContent:
    """Check that the folder ``out`` can take the run of ``cfg`` (empty or new), or, with
    ``resume``, that it holds a run of ``cfg`` to continue (on ``device``'s type, if given: the
    augmentation's generator lives on the device, and its state does not move); ``"auto"``
    resumes when ``out`` holds a run. One ``ValueError`` line otherwise. Reads no more than the
    config of what is there."""
    out = Path(out)
    content = inspect_folder(out)
    if resume == "auto":
        resume = content.kind in ("unfinished", "finished")
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
        if device is not None and content.device_type not in (None, device.type):
            raise ValueError(f"cannot resume {out} on {device.type}: it was trained on "
                             f"{content.device_type}; resume it on {content.device_type} "
                             f"(device={content.device_type!r})")
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
    content = check(out, cfg, resume, device)
    if content.kind == "empty":
        return None
    if content.kind == "finished":
        return load_run(out, str(device))
    return read_checkpoint(out / CHECKPOINT)



# ---------------------------------------------------------------------------------- checkpoints

def write_checkpoint(out: Path, state: dict) -> None:
    """Write ``state`` as the folder's checkpoint, atomically."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__, **state}
    atomic_write(out / CHECKPOINT, lambda f: torch.save(state, f))


def remove_partial_writes(out: Path) -> None:
    """Delete the hidden files of a checkpoint write that a kill cut short."""
    for stale in out.glob(f".{CHECKPOINT}.*.tmp"):
        stale.unlink()


def finish(out: Path, run: Run) -> None:
    """Save the finished run into ``out`` and remove its checkpoint."""
    run.save(out)
    (out / CHECKPOINT).unlink(missing_ok=True)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """Load and check a checkpoint. ``ValueError`` (one line) if the file is not a readable
    odc_mini checkpoint; ``mmap=True`` maps the tensors lazily (cheap when only the config is
    wanted)."""
    path = Path(path)
    state = _torch_load(path, "checkpoint, it is probably truncated or not written by odc_mini",
                        mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an odc_mini checkpoint (a torch file without the "
                         f"{FORMAT!r} marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {state.get('format_version')!r}; this "
                         f"odc_mini reads format {FORMAT_VERSION}")
    return state


def _torch_load(path: Path, what: str, mmap: bool | None = None):
    """``torch.load(weights_only=True)`` onto the CPU; a file that is there but cannot be read is
    one ValueError line: "<path> is not a readable <what> (<the error>)"."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:   # a truncated zip, a pickle with code in it, ...
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not a readable {what} ({type(err).__name__}: "
                         f"{reason})") from None


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
