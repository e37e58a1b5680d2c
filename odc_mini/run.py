"""A run folder: what a finished run writes, how it is loaded back, and what a folder holds.

A finished run (``Run.save``) is::

    config.json    the Config, as JSON
    history.npz    the History (plain arrays, no pickles)
    model.pt       the network's state dict (loaded with weights_only=True)
    memory.npz     ODC only: the samples and centroids memories

A run still training, or stopped before its end, holds ``checkpoint.pt`` instead (see
``checkpoint.py``); the checkpoint is removed once the finished run is saved.

``load_run`` checks every file against the others and turns a missing, truncated or foreign file
into one ``ValueError`` line naming the file and what is wrong, instead of a trace from torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import Config
from .history import History
from .memory import ODCMemory
from .models import ClusterNet

RUN_FILES = ("config.json", "history.npz", "model.pt", "memory.npz")


@dataclass
class Run:
    """A finished (or loaded) run: its config, history, trained network and, for ODC, memory."""
    config: Config
    history: History
    model: ClusterNet
    memory: ODCMemory | None = None

    def save(self, directory: str | Path, state: bool = True) -> Path:
        """Write ``config.json``, ``history.npz`` (no pickles) and, unless ``state=False``,
        ``model.pt`` (a state dict) and, for ODC, ``memory.npz`` into ``directory``, each file
        atomically. ``state=False`` keeps only the small record a chapter replays (ResNet-18
        weights and a 50,000-image memory are some 100 MB)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.history.save(directory / "history.npz")
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
    if checkpoint.FILE_NAME in names:
        state = checkpoint.read(directory / checkpoint.FILE_NAME, mmap=True)
        return FolderContent("unfinished", state["config"], describe_position(state), state["version"])
    if "config.json" in names:
        return FolderContent("finished", _read_config(directory / "config.json").to_dict())
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


def _read_config(path: Path) -> Config:
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
    if not isinstance(recorded, dict) or checkpoint.config_differences(recorded, cfg.to_dict()):
        raise ValueError(f"{directory / 'history.npz'} does not belong to the run of "
                         f"{directory / 'config.json'} (its recorded config differs)")
    dev = torch.device(device)
    model = ClusterNet(cfg.arch, cfg.num_clusters, cfg.hid_dim, cfg.feat_dim, cfg.neck_bn_momentum,
                       cfg.sobel)
    _load_weights(model, _required(directory, "model.pt"), cfg)
    model.to(dev).eval()
    memory = None
    if (directory / "memory.npz").is_file():
        num_samples = len(history.arrays["targets"]) if "targets" in history.arrays else None
        memory = _load_memory(directory / "memory.npz", cfg, num_samples, dev)
    elif cfg.method == "odc":
        raise ValueError(f"{directory} holds an ODC run without memory.npz (saved with "
                         "state=False?); its history loads with History.load")
    return Run(cfg, history, model, memory)


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
    memory = ODCMemory(n, cfg.feat_dim, cfg.num_clusters, cfg.momentum, cfg.min_cluster, device,
                       cfg.cosine_centroids, cfg.seed)
    memory.features.copy_(torch.from_numpy(features))
    memory.labels.copy_(torch.from_numpy(labels.astype(np.int64)))
    memory.centroids = torch.from_numpy(centroids).to(device)
    memory.recount()   # the running sums and sizes behind the loss weights
    return memory
