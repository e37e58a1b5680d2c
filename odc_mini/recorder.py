"""Per-epoch measurements of a training run: evaluation of the features and of the clusters.

The training loop calls ``measure_features`` (kNN, linear probe, feature snapshots) and
``measure_clusters`` (NMI/ARI against the classes, sizes, churn and centroid drift against the
previous epoch) at the end of every epoch and writes what they return into the History.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import Config
from .data import ImageSet, stratified_subset
from .evaluate import ari, centroid_drift, hungarian_accuracy, knn_accuracy, linear_probe, nmi
from .history import History
from .method import Method, embed_images


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
        test_emb = embed_images(self.method.model, self.test_set.images, cfg.eval_batch_size,
                                precision=self.method.precision)
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

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """What the next epoch's measurements compare against."""
        labels = None if self.previous_labels is None else torch.from_numpy(self.previous_labels)
        return {"previous_labels": labels, "previous_centroids": self.previous_centroids}

    def load_state_dict(self, state: dict) -> None:
        labels = state["previous_labels"]
        self.previous_labels = None if labels is None else labels.numpy()
        centroids = state["previous_centroids"]
        self.previous_centroids = None if centroids is None else centroids.to(self.train_set.images.device)
