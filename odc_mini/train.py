"""The training loop: a config in, a recorded run out.

    run = odc_mini.train(odc_mini.Config(method="odc", profile="quick"))
    run.history.epoch("knn_top1")      # what the book draws
    run.save("runs/odc-quick"); run = odc_mini.load_run("runs/odc-quick")

The loop is the same for both methods; only ``method.epoch_indices`` (DeepCluster clusters there)
and ``method.train_step`` (ODC updates its memories there) differ. Per-iteration numbers stay on
the device until the end of the epoch, so a GPU never waits for the host in the hot loop.
"""
from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .augment import augment
from .config import Config
from .data import ImageSet, load_dataset, stratified_subset
from .deepcluster import DeepCluster
from .evaluate import ari, centroid_drift, hungarian_accuracy, knn_accuracy, linear_probe, nmi
from .history import History
from .memory import ODCMemory
from .method import Method, embed_images, recalibrate_batchnorm
from .models import ClusterNet
from .odc import ODC

METHOD_CLASSES = {"odc": ODC, "deepcluster": DeepCluster}


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when there is one; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but this machine has no CUDA GPU; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, device: torch.device) -> ClusterNet:
    model = ClusterNet(cfg.arch, cfg.num_clusters, cfg.hid_dim, cfg.feat_dim, cfg.neck_bn_momentum,
                       cfg.sobel)
    # channels_last: faster convolutions on GPUs and, measured here, on the CPU too (1.7x).
    return model.to(device, memory_format=torch.channels_last)


@dataclass
class Run:
    """A finished (or loaded) run: its config, history, trained network and, for ODC, memory."""
    config: Config
    history: History
    model: ClusterNet
    memory: ODCMemory | None = None

    def save(self, directory: str | Path, state: bool = True) -> Path:
        """Write ``config.json``, ``history.npz`` (no pickles) and, unless ``state=False``,
        ``model.pt`` (a state dict) and, for ODC, ``memory.npz`` into ``directory``.
        ``state=False`` keeps only the small record a chapter replays (ResNet-18 weights and a
        50,000-image memory are some 100 MB)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(directory / "config.json", json.dumps(self.config.to_dict(), indent=2))
        self.history.save(directory / "history.npz")
        if not state:
            return directory
        tmp = directory / "model.pt.tmp"
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, tmp)
        tmp.replace(directory / "model.pt")
        if self.memory is not None:
            tmp = directory / "memory.tmp.npz"
            np.savez(tmp, features=self.memory.features.cpu().numpy(),
                     labels=self.memory.labels.cpu().numpy(),
                     centroids=self.memory.centroids.cpu().numpy())
            tmp.replace(directory / "memory.npz")
        return directory


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_run(directory: str | Path, device: str = "cpu") -> Run:
    """Load what ``Run.save`` wrote. The model is rebuilt from the config and its weights are
    loaded with ``weights_only=True``; history and memory are plain arrays."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no odc_mini run (no config.json)")
    try:
        cfg = Config.from_dict(json.loads((directory / "config.json").read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{directory / 'config.json'} is not a valid odc_mini config ({err})") from None
    history = History.load(directory / "history.npz")
    dev = torch.device(device)
    model = ClusterNet(cfg.arch, cfg.num_clusters, cfg.hid_dim, cfg.feat_dim, cfg.neck_bn_momentum,
                       cfg.sobel)
    model.load_state_dict(torch.load(directory / "model.pt", map_location=dev, weights_only=True))
    model.to(dev).eval()
    memory = None
    if (directory / "memory.npz").is_file():
        with np.load(directory / "memory.npz") as arrays:
            features = torch.from_numpy(arrays["features"])
            memory = ODCMemory(features.shape[0], features.shape[1], cfg.num_clusters, cfg.momentum,
                               cfg.min_cluster, dev, cfg.cosine_centroids, cfg.seed)
            memory.features.copy_(features)
            memory.labels.copy_(torch.from_numpy(arrays["labels"]))
            memory.centroids = torch.from_numpy(arrays["centroids"]).to(dev)
            memory.recount()   # the running sums and sizes behind the loss weights
    return Run(cfg, history, model, memory)


class Recorder:
    """Per-epoch measurements of a method; writes them into a History."""

    def __init__(self, cfg: Config, method: Method, train_set: ImageSet, test_set: ImageSet,
                 history: History):
        self.cfg, self.method, self.history = cfg, method, history
        self.train_set, self.test_set = train_set, test_set
        self.targets = train_set.labels.cpu().numpy()
        self.snapshot_indices = stratified_subset(train_set.labels.cpu(),
                                                  min(cfg.snapshot_size, len(train_set)), seed=cfg.seed)
        history.set_array("targets", self.targets.astype(np.int16))
        history.set_array("snapshot_indices", self.snapshot_indices.numpy())
        history.set_array("snapshot_targets", self.targets[self.snapshot_indices.numpy()].astype(np.int16))
        self.previous_labels: np.ndarray | None = None
        self.previous_centroids: torch.Tensor | None = None

    def measure_features(self, epoch: int, final: bool) -> dict[str, float]:
        """kNN (and linear probe when asked) on frozen backbone features; feature snapshot."""
        cfg, out = self.cfg, {}
        t0 = time.perf_counter()
        train_emb = self.method.embed()   # shared with the method's next clustering
        test_emb = embed_images(self.method.model, self.test_set.images, cfg.eval_batch_size)
        out["knn_top1"] = knn_accuracy(train_emb.backbone, self.train_set.labels, test_emb.backbone,
                                       self.test_set.labels, k=cfg.knn_k, temperature=cfg.knn_temperature)
        if cfg.linear_probe and (epoch == 0 or final):
            out["linear_top1"] = linear_probe(train_emb.backbone, self.train_set.labels,
                                              test_emb.backbone, self.test_set.labels, seed=cfg.seed)
        if epoch % cfg.snapshot_interval == 0 or final:
            snap = train_emb.neck[self.snapshot_indices.to(train_emb.neck.device)]
            snap = snap / (snap.norm(dim=1, keepdim=True) + 1e-10)
            self.history.set_array(f"snapshot_features/{epoch}", snap.cpu().numpy().astype(np.float16))
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def measure_clusters(self, epoch: int) -> dict[str, float]:
        """Cluster quality and stability of the current pseudo-labels."""
        cfg, out = self.cfg, {}
        labels = self.method.pseudo_labels().cpu().numpy().copy()  # never alias the live labels
        if f"snapshot_features/{epoch}" in self.history.arrays:
            self.history.set_array(f"snapshot_labels/{epoch}", labels[self.snapshot_indices.numpy()].astype(np.int16))
        if labels.min() < 0:  # DeepCluster before its first clustering: no labels yet (-1)
            return out
        sizes = np.bincount(labels, minlength=cfg.num_clusters)
        self.history.set_array(f"labels/{epoch}", labels.astype(np.int16 if cfg.num_clusters < 2**15 else np.int32))
        self.history.set_array(f"sizes/{epoch}", sizes.astype(np.int32))
        out.update(nmi_classes=nmi(labels, self.targets), ari_classes=ari(labels, self.targets),
                   empty_clusters=int((sizes == 0).sum()),
                   small_clusters=int((sizes < cfg.min_cluster).sum()),
                   min_size=int(sizes.min()), max_size=int(sizes.max()),
                   clusters_handled=self.method.clusters_handled)
        self.method.clusters_handled = 0
        if cfg.num_clusters == len(self.train_set.classes):
            out["acc_classes"] = hungarian_accuracy(labels, self.targets)
        centroids = self.method.drift_centroids()
        if self.previous_labels is not None:
            out["nmi_previous"] = nmi(labels, self.previous_labels)
            out["relabelled"] = float((labels != self.previous_labels).mean())
            # Ids persist in ODC and are already matched for DeepCluster (label overlap), so no
            # further matching by distance here.
            out["drift"] = centroid_drift(self.previous_centroids, centroids, match=False)
        self.previous_labels, self.previous_centroids = labels, centroids
        return out


def train(config: Config, progress: bool = True,
          callback: Callable[[History], None] | None = None) -> Run:
    """Train ``config.method`` and record its dynamics. Returns a :class:`Run`.

    Row 0 of the per-epoch history is measured before any training step: it is the random-init
    network's kNN/linear accuracy (the baseline) and, for ODC, the initial clustering.
    ``callback(history)``, if given, is called after every recorded epoch, row 0 included (the
    book's live dashboard redraws there); it must not modify the history.
    """
    cfg = config.validate()
    device = resolve_device(cfg.device)
    if cfg.compile and device.type != "cuda":
        raise ValueError(f"compile=True needs a CUDA device, but the run is on {device.type}; "
                         "torch.compile is off on the CPU (set compile=False)")
    seed_everything(cfg.seed)
    train_set, test_set = load_dataset(cfg.dataset, cfg.data_root, cfg.subset, cfg.seed, cfg.download)
    cfg.check_against_data(len(train_set))
    train_set, test_set = train_set.to(device), test_set.to(device)

    model = build_model(cfg, device)
    sampler_generator = torch.Generator().manual_seed(cfg.seed)
    method = METHOD_CLASSES[cfg.method](model, train_set.images, cfg, sampler_generator)
    if cfg.compile:
        method.compile()
    history = History({"config": cfg.to_dict(), "version": __version__, "device": str(device),
                       "machine": _machine_description(device), "classes": list(train_set.classes)})
    recorder = Recorder(cfg, method, train_set, test_set, history)
    augment_cfg = cfg.augment_config()
    augment_generator = torch.Generator(device=device).manual_seed(cfg.seed)
    order_generator = torch.Generator().manual_seed(cfg.seed)   # host side: no GPU sync per batch

    start = time.perf_counter()
    if cfg.recalibrate_bn:  # before the baseline too, so the random network is measured at its best
        recalibrate_batchnorm(model, train_set.images, cfg.eval_batch_size)
    row = recorder.measure_features(0, final=False)       # the random-init network
    t0 = time.perf_counter()
    method.setup(progress=progress)
    row["train_seconds"] = time.perf_counter() - t0
    row.update(recorder.measure_clusters(0))
    row["wall_seconds"] = time.perf_counter() - start
    history.add_epoch(epoch=0, **row)
    if callback is not None:
        callback(history)

    iters_per_epoch = len(train_set) // cfg.batch_size    # the last partial batch is dropped
    bar = tqdm(total=cfg.epochs * iters_per_epoch, desc=cfg.method, disable=not progress,
               unit="it", dynamic_ncols=True)
    train_seconds = row["train_seconds"]
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = cfg.lr * (0.4 if epoch > int(0.9 * cfg.epochs) else 1.0)  # reference: x0.4 late
        for group in method.optimizer.param_groups:
            group["lr"] = lr
        # One host-to-device copy per epoch: a blocking copy per batch would wait for the GPU.
        order = method.epoch_indices(epoch).to(device)

        def show(b: int, step: torch.Tensor) -> None:
            bar.update()
            if not bar.disable and (b % 10 == 0 or b == iters_per_epoch - 1):  # a sync per 10 steps
                loss, _, churn = step.tolist()
                bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", churn=f"{churn:.3f}")

        steps = train_epoch(method, train_set.images, order, iters_per_epoch, cfg.batch_size,
                            augment_cfg, (augment_generator, order_generator), on_step=show)
        steps = steps.cpu().numpy()
        train_seconds += time.perf_counter() - t0
        history.add_iterations(loss=steps[:, 0], acc=steps[:, 1], change_ratio=steps[:, 2],
                               epoch=epoch - 1 + np.arange(1, iters_per_epoch + 1) / iters_per_epoch,
                               lr=np.full(iters_per_epoch, lr))
        final = epoch == cfg.epochs
        row = dict(epoch=epoch, loss=float(np.mean(steps[:, 0])), acc=float(np.mean(steps[:, 1])),
                   change_ratio=float(np.nanmean(steps[:, 2])) if not np.isnan(steps[:, 2]).all() else float("nan"),
                   lr=lr, train_seconds=train_seconds)
        if epoch % cfg.eval_interval == 0 or final:
            row.update(recorder.measure_features(epoch, final))
        row.update(recorder.measure_clusters(epoch))
        row["wall_seconds"] = time.perf_counter() - start
        history.add_epoch(**row)
        if callback is not None:
            callback(history)
    bar.close()
    memory = method.memory if isinstance(method, ODC) else None
    return Run(cfg, history, model, memory)


def train_epoch(method: Method, images: torch.Tensor, order: torch.Tensor, iterations: int,
                batch_size: int, augment_cfg, generators: tuple[torch.Generator, torch.Generator],
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The hot loop: ``iterations`` steps over consecutive batches of ``order`` (indices on the
    images' device). Returns an (iterations, 3) tensor of loss, pseudo-label accuracy and change
    ratio, still on the device: nothing here waits for a GPU unless ``on_step`` does."""
    method.model.train()
    steps = []
    for b in range(iterations):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x = augment(images[idx], augment_cfg, *generators)
        out = method.train_step(x.contiguous(memory_format=torch.channels_last), idx)
        steps.append(torch.stack([out["loss"], out["acc"], out["change_ratio"]]))
        if on_step is not None:
            on_step(b, steps[-1])
    return torch.stack(steps)


def _machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
