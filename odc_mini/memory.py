"""The two memories of Online Deep Clustering (ODC; Zhan et al., CVPR 2020, Sec. 3.2).

* The **samples memory** keeps, for every training image i, a unit feature v_i (a momentum
  average of the network's neck outputs for that image) and a pseudo-label y_i.
* The **centroids memory** keeps one centroid per cluster: the plain mean of the memory
  features of its members (deliberately *not* re-normalised, as in the authors' code).

Labels are re-assigned batch by batch while the network trains, so labels and network evolve
together instead of jumping once per epoch as in DeepCluster.

Conventions follow the authors' implementation (OpenSelfSup,
``openselfsup/models/memories/odc_memory.py``, class ``ODCMemory``):

* momentum ``m`` multiplies the **new** feature: v <- normalise((1 - m) v_old + m u_new)
  (``update_samples_memory``);
* a sample's new label is the nearest centroid by dot product, computed on the *updated* memory
  feature (``update_samples_memory``);
* small clusters are first disbanded (members go to the nearest non-small centroid), then each is
  refilled by splitting the current largest cluster in two with 2-means
  (``deal_with_small_clusters``, ``_partition_max_cluster``).

Everything lives on one device (CPU or GPU); a CIFAR-10 memory is 50,000 x 256 floats, about
51 MB. Every tensor is a registered buffer, so ``state_dict()`` is a checkpoint of the memory.

**Cost per iteration is O(batch), not O(N).** The reference recomputes every centroid from the
whole memory (O(N D), ``update_centroids_memory``) and counts cluster sizes over all N labels.
Here the memory keeps running per-cluster sums (float64) and counts, updated by the batch's
changes only: the centroids published every ``centroid_interval`` iterations are still exactly
the member means (up to float rounding), and sizes come for free. A full recount
(:meth:`recount`) happens only when a small cluster is repaired, which is rare.

**No host synchronisation in the hot loop.** Deciding *whether* small clusters need repair is a
branch in Python, so it needs a value from the device. :meth:`step` computes that flag on the
device and reads it one ``deal_interval`` later, when it has long been computed, so a GPU never
waits: a cluster that falls below ``min_cluster`` is repaired one interval later than in the
reference (identically on every device).
"""
from __future__ import annotations

import torch
from torch import nn

from .kmeans import cluster, cluster_sums, l2_normalize


def loss_weights(sizes, power: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
    """(K,) loss weights w_k proportional to (n_k + eps)^-power of the cluster sizes ``sizes``
    (a tensor or array), summing to 1 (``ODC.set_reweight`` of the reference)."""
    w = (torch.as_tensor(sizes).to(torch.float32) + eps).pow(-power)
    return w / w.sum()


class ODCMemory(nn.Module):
    """Samples memory (features, labels) and centroids memory of ODC.

    Buffers:
        features:  (N, D) float32, unit rows v_i.
        labels:    (N,)  int64, pseudo-labels y_i in [0, K).
        centroids: (K, D) float32, c_k = mean of the member features (not unit length).
        sums, counts: (K, D) float64 and (K,) int64, running member sums and sizes.
        small_pending: () bool, "some cluster was below ``min_cluster`` at the last check".
    """

    def __init__(self, num_samples: int, feat_dim: int, num_clusters: int, *, momentum: float = 0.5,
                 min_cluster: int = 20, device: str | torch.device = "cpu",
                 cosine_centroids: bool = False, seed: int = 0, centroid_interval: int = 1,
                 deal_interval: int = 1):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum} is outside [0, 1]")
        if num_clusters < 2 or num_clusters > num_samples:
            raise ValueError(f"num_clusters={num_clusters} must be in [2, num_samples={num_samples}]")
        self.num_samples, self.feat_dim, self.num_clusters = num_samples, feat_dim, num_clusters
        self.momentum, self.min_cluster, self.seed = momentum, min_cluster, seed
        # Ablation switch (the paper's Sec. 3.2 assigns by dot product): cosine instead.
        self.cosine_centroids = cosine_centroids
        self.centroid_interval, self.deal_interval = centroid_interval, deal_interval
        device = torch.device(device)
        self.register_buffer("features", torch.zeros(num_samples, feat_dim, device=device))
        self.register_buffer("labels", torch.zeros(num_samples, dtype=torch.long, device=device))
        self.register_buffer("centroids", torch.zeros(num_clusters, feat_dim, device=device))
        # float64 sums, so that millions of +/- updates do not drift; exact integer counts.
        self.register_buffer("sums", torch.zeros(num_clusters, feat_dim, dtype=torch.float64,
                                                 device=device))
        self.register_buffer("counts", torch.zeros(num_clusters, dtype=torch.long, device=device))
        self.register_buffer("small_pending", torch.zeros((), dtype=torch.bool, device=device))
        self._small_host: torch.Tensor | None = None   # CUDA: pinned host copy of the flag ...
        self._small_event = None                       # ... and the event that says it is done

    @classmethod
    def of(cls, cfg, num_samples: int, device: str | torch.device = "cpu") -> "ODCMemory":
        """The memory of a run's Config for ``num_samples`` images."""
        return cls(num_samples, cfg.feat_dim, cfg.num_clusters, momentum=cfg.momentum,
                   min_cluster=cfg.min_cluster, device=device,
                   cosine_centroids=cfg.cosine_centroids, seed=cfg.seed,
                   centroid_interval=cfg.centroid_interval, deal_interval=cfg.deal_interval)

    # ------------------------------------------------------------------ set-up
    def init_memory(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fill the memory from an initial clustering (``ODCMemory.init_memory`` of the
        reference): features (N, D), L2-normalised here; labels (N,) cluster ids. Centroids
        are the member means; the k-means centroids are not reused."""
        if features.shape != (self.num_samples, self.feat_dim):
            raise ValueError(f"features have shape {tuple(features.shape)}, expected "
                             f"({self.num_samples}, {self.feat_dim})")
        if labels.shape != (self.num_samples,):
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected ({self.num_samples},)")
        self.features.copy_(l2_normalize(features.to(self.device, torch.float32)))
        self.labels.copy_(labels.to(self.device, torch.long))
        self.recount()
        self.update_centroids()

    @property
    def device(self) -> torch.device:
        return self.features.device

    # ------------------------------------------------------------------ per iteration
    def step(self, idx: torch.Tensor, feats: torch.Tensor,
             iteration: int) -> tuple[torch.Tensor, int]:
        """One ODC iteration of the memories, after the network's SGD step (``ODC.forward_train``
        and ``ODCHook.after_train_iter`` of the reference). ``iteration`` counts the steps taken,
        this one included (1, 2, ...).

        1. :meth:`update_samples` (momentum update and re-labelling of the batch);
        2. every ``centroid_interval`` iterations: centroids = member means;
        3. every ``deal_interval`` iterations: repair small clusters if the previous check found
           any, then check again on the device (read at the next interval, see the module notes).

        Returns (change ratio as a 0-d tensor, number of clusters repaired: 0 unless a repair ran).
        """
        change_ratio = self.update_samples(idx, feats)
        handled = 0
        if iteration % self.centroid_interval == 0:
            self.update_centroids()
        if iteration % self.deal_interval == 0:
            if self._small_seen():
                handled = self.deal_with_small_clusters()
            self.check_small_clusters()
        return change_ratio, handled

    def update_samples(self, idx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Momentum-update the memory features of a batch and re-label it.

        idx: (B,) int64 sample indices (duplicates allowed); feats: (B, D) neck outputs of the
        batch (detached). Returns the change ratio as a 0-d tensor (no host synchronisation).
        Costs O(B K D + B^2): nothing here touches all N rows.
        """
        idx = idx.to(self.device)
        new = l2_normalize(feats.detach().to(self.device, torch.float32))
        m = self.momentum
        old_features, old_labels = self.features[idx], self.labels[idx]
        updated = l2_normalize((1.0 - m) * old_features + m * new)
        new_labels = (updated @ self._assigning_centroids().T).argmax(dim=1)
        change_ratio = (new_labels != old_labels).float().mean()
        # With sampling with replacement a batch can hold an index twice. The reference code
        # lets the last write win; index_put with duplicates is unordered in torch, so every
        # occurrence writes the values of the last one: the result is the same whatever the
        # order, on every device, and no data-dependent shape (no host sync) is needed.
        last = self._last_positions(idx)
        self.features[idx] = updated[last]
        self.labels[idx] = new_labels[last]
        # Running statistics: each distinct index leaves its old cluster and joins its new one.
        once = (last == torch.arange(idx.numel(), device=idx.device)).to(torch.float64)   # (B,)
        self.sums.index_add_(0, old_labels, old_features.double() * -once[:, None])
        self.sums.index_add_(0, new_labels, updated.double() * once[:, None])
        once = once.long()
        self.counts.index_add_(0, old_labels, -once)
        self.counts.index_add_(0, new_labels, once)
        return change_ratio

    def _assigning_centroids(self) -> torch.Tensor:
        return l2_normalize(self.centroids) if self.cosine_centroids else self.centroids

    @staticmethod
    def _last_positions(idx: torch.Tensor) -> torch.Tensor:
        """(B,) position of the last occurrence of ``idx[i]`` in ``idx``, for every i.

        A (B, B) comparison: B is a batch (hundreds), and unlike ``torch.unique`` the output
        shape does not depend on the data, so a GPU never has to report back to the host.
        """
        positions = torch.arange(idx.numel(), device=idx.device)
        same = idx[:, None] == idx[None, :]                                       # (B, B)
        return torch.where(same, positions[None, :], -1).amax(dim=1)

    def update_centroids(self, clusters: torch.Tensor | None = None) -> None:
        """Centroids = member means (running sums / counts), for all clusters or only the ids in
        ``clusters``. An empty cluster keeps its previous centroid (reference behaviour)."""
        keep = self.counts > 0
        if clusters is not None:
            chosen = torch.zeros(self.num_clusters, dtype=torch.bool, device=self.device)
            chosen[clusters.to(self.device)] = True
            keep &= chosen
        means = (self.sums / self.counts.clamp(min=1).unsqueeze(1)).to(self.centroids.dtype)
        self.centroids = torch.where(keep.unsqueeze(1), means, self.centroids)

    def recount(self) -> None:
        """Running sums and counts from the whole memory (O(N D)): after an initialisation, a
        repair, or labels written from outside."""
        self.sums, self.counts = cluster_sums(self.features.double(), self.labels,
                                              self.num_clusters)

    def check_small_clusters(self) -> None:
        """Start the device-side check "is some cluster smaller than ``min_cluster``?".

        The answer is copied to the host asynchronously and read by the next :meth:`step` that
        reaches a ``deal_interval``.
        """
        self.small_pending = (self.counts < self.min_cluster).any()
        if self.small_pending.device.type == "cuda":
            # One pinned buffer, reused: its previous value was read before this call.
            if self._small_host is None:
                self._small_host = torch.empty((), dtype=torch.bool, pin_memory=True)
                self._small_event = torch.cuda.Event()
            self._small_host.copy_(self.small_pending, non_blocking=True)
            self._small_event.record()

    def _small_seen(self) -> bool:
        if self._small_host is not None:
            # Recorded one interval ago: the GPU has at most the current step left to run
            # when this returns, so the host stays one step ahead and the GPU stays busy.
            self._small_event.synchronize()
            return bool(self._small_host)
        return bool(self.small_pending)

    def cluster_sizes(self) -> torch.Tensor:
        """(K,) int64 number of samples per cluster, counted from the labels (O(N))."""
        return torch.bincount(self.labels, minlength=self.num_clusters)

    def deal_with_small_clusters(self) -> int:
        """Disband every cluster smaller than ``min_cluster`` and refill it by splitting the
        largest cluster (``deal_with_small_clusters`` of the reference). Returns the number of
        clusters handled (0 if none was small).
        """
        self.recount()      # exact statistics for a repair (rare, so O(N D) is fine here)
        small = self.counts < self.min_cluster
        small_ids = torch.nonzero(small).flatten().tolist()
        if not small_ids or len(small_ids) == self.num_clusters:
            # None is small, or all are and there is nothing to disband into (Config validation,
            # min_cluster * K <= N, prevents that in training): keep the memory as it is.
            return 0
        # 1. Disband: members of small clusters move to the nearest *non-small* centroid.
        members = small[self.labels]
        if members.any():
            sims = self.features[members] @ self._assigning_centroids().T
            sims[:, small] = -torch.inf
            self.labels[members] = sims.argmax(dim=1)
        # 2. Refill each (now empty) small cluster with half of the current largest cluster.
        for empty in small_ids:
            largest = int(self.cluster_sizes().argmax())
            member_idx = torch.nonzero(self.labels == largest).flatten()
            if member_idx.numel() < 2:
                break  # nothing left to split (only possible when N is tiny)
            second_half = self._split_in_two(self.features[member_idx], member_idx)
            self.labels[member_idx[second_half]] = empty
            self.recount()
            self.update_centroids(torch.tensor([largest, empty]))
        self.recount()
        return len(small_ids)

    def _split_in_two(self, feats: torch.Tensor, member_idx: torch.Tensor) -> torch.Tensor:
        """Boolean mask (M,) of the members that form the second part of a 2-way split.

        The reference (``_partition_max_cluster``) runs sklearn KMeans(2, random_state=0,
        max_iter=20) on the CPU; we run the package's k-means (``kmeans.cluster``) with the same
        budget. If one side comes out empty, a random split in halves (reference rule), drawn
        from a generator seeded by the run's seed and the cluster's first member.
        """
        if not torch.isfinite(feats).all():
            raise FloatingPointError("memory features contain NaN or inf; cannot split a cluster")
        _, part = cluster(feats, 2, n_iter=20, seed=0)
        second = part == 1
        n_second = int(second.sum())
        if n_second == 0 or n_second == feats.shape[0]:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(member_idx[0]))
            order = torch.randperm(feats.shape[0], generator=generator).to(feats.device)
            second = torch.zeros(feats.shape[0], dtype=torch.bool, device=feats.device)
            second[order[feats.shape[0] // 2:]] = True
        return second

    # ------------------------------------------------------------------ loss weights
    def class_weights(self, power: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
        """(K,) loss weights w_k proportional to (n_k + eps)^-power, summing to 1
        (``ODC.set_reweight`` of the reference).

        The normalisation does not change a weighted-mean cross-entropy; it only makes the
        weights readable. ``power=0`` gives uniform weights (re-weighting off).
        """
        return loss_weights(self.counts, power, eps)             # running counts: O(K)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._small_host = self._small_event = None    # the restored flag is read directly
