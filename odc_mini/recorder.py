"""Per-epoch measurements of a training run: evaluation of the features and of the clusters.

The training loop calls ``measure_features`` (kNN, linear probe, feature snapshots) and
``measure_clusters`` (NMI/ARI against the classes, sizes, churn and centroid drift against the
previous epoch) at the end of every epoch and writes what they return into the History.

Two drifts are recorded. ``drift`` is each method's own view: ODC's centroids memory (momentum
averages of augmented features) and DeepCluster's k-means clusters (features at clustering time).
``feature_drift`` measures both methods alike: at every evaluation (every ``eval_interval``
epochs, where the features of all training images are extracted anyway), the centroids of the
*current* network's features under the method's current labels
(:func:`~odc_mini.evaluate.label_centroids`), compared with those of the previous evaluation,
over the clusters that are non-empty at both. It is a drift per evaluation interval, from the
second evaluation after training starts.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import Config
from .data import ImageSet, stratified_subset
from .evaluate import (ari, centroid_drift, hungarian_accuracy, knn_accuracy, label_centroids,
                       linear_probe, nmi)
from .history import History
from .kmeans import l2_normalize
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
        # What the next evaluation compares against (absent before the first): the labels and
        # drift centroids of the previous epoch, the current-feature centroids and cluster sizes
        # of the previous evaluation. Tensors only: this dict is the recorder's checkpoint.
        self.previous: dict[str, torch.Tensor] = {}

    def measure_features(self, epoch: int, final: bool) -> dict[str, float]:
        """kNN (and linear probe when asked) on frozen backbone features; feature snapshot."""
        cfg, out = self.cfg, {}
        t0 = time.perf_counter()
        train_emb = self.method.embed()   # shared with the method's next clustering
        test_emb = embed_images(self.method.model, self.test_set.images, cfg.eval_batch_size,
                                autocast=self.method.autocast)
        out["knn_top1"] = knn_accuracy(train_emb.backbone, self.train_set.labels, test_emb.backbone,
                                       self.test_set.labels, k=cfg.knn_k, temperature=cfg.knn_temperature)
        if cfg.linear_probe and (epoch == 0 or final or (
                cfg.probe_interval and epoch % cfg.probe_interval == 0)):
            out["linear_top1"] = linear_probe(train_emb.backbone, self.train_set.labels,
                                              test_emb.backbone, self.test_set.labels, seed=cfg.seed)
        # A snapshot at epoch 0, at the last epoch, and at the first evaluation at least
        # ``snapshot_interval`` epochs after the previous one (features exist at evaluations only,
        # so an interval that is no multiple of ``eval_interval`` still gives snapshots).
        taken = self.history.snapshot_epochs
        if epoch == 0 or final or not taken or epoch - taken[-1] >= cfg.snapshot_interval:
            snap = l2_normalize(train_emb.neck[self.snapshot_indices.to(train_emb.neck.device)])
            self.history.set_array(f"snapshot_features/{epoch}", snap.cpu().numpy().astype(np.float16))
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def measure_clusters(self, epoch: int, evaluated: bool = True) -> dict[str, float]:
        """Cluster quality and stability of the current pseudo-labels; ``evaluated``: the
        features were measured this epoch (``feature_drift`` is measured then)."""
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
        # the current network's features: the evaluation's extraction (cached by the method)
        feature_centroids = label_centroids(
            self.method.embed().neck, torch.from_numpy(labels).to(self.method.device),
            cfg.num_clusters) if evaluated and epoch > 0 else None   # epoch 0: DeepCluster has
        # no labels yet, so both methods start from their first evaluation after training begins
        before = self.previous
        if "labels" in before:
            previous_labels = before["labels"].numpy()
            out["nmi_previous"] = nmi(labels, previous_labels)
            out["relabelled"] = float((labels != previous_labels).mean())
            # Ids persist in ODC and are already matched for DeepCluster (label overlap).
            out["drift"] = centroid_drift(before["centroids"], centroids)
        if feature_centroids is not None:
            now, n_now = feature_centroids
            if "feature_centroids" in before:
                both = (before["feature_sizes"] > 0) & (n_now > 0)
                out["feature_drift"] = centroid_drift(before["feature_centroids"][both], now[both])
            before.update(feature_centroids=now, feature_sizes=n_now)
        before.update(labels=torch.from_numpy(labels), centroids=centroids)
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.previous)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.train_set.images.device
        self.previous = {k: v if k == "labels" else v.to(device) for k, v in state.items()}
