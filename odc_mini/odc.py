"""Online Deep Clustering: labels are re-assigned batch by batch while the network trains.

One iteration (spec §7), in this order:

1. forward the augmented batch (train mode): neck features z and logits;
2. weighted cross-entropy against the labels *currently stored* in the samples memory, SGD step;
3. samples memory: momentum update of the batch's features, re-label by nearest centroid;
4. every ``centroid_interval`` iterations: recompute all centroids as member means;
5. every ``deal_interval`` iterations: disband small clusters and split the largest ones;
6. refresh the loss weights w_k ~ n_k^-0.5 from the cluster sizes of the whole label bank.

Steps 3-5 are ``ODCMemory.step``; it keeps running sums and sizes, so the whole iteration costs
O(batch) however many images the memory holds.

Before the first iteration the memory is filled once from k-means on the features of the
untrained network (spec §6); after that no global clustering ever happens again.
"""
from __future__ import annotations

import torch

from . import distributed
from .kmeans import cluster
from .memory import ODCMemory
from .method import Method


class ODC(Method):
    name = "odc"

    def __init__(self, model, images, cfg, generator):
        super().__init__(model, images, cfg, generator)
        self.memory = ODCMemory.of(cfg, self.num_samples, images.device)
        self.weights = torch.full((cfg.num_clusters,), 1.0 / cfg.num_clusters, device=images.device)

    def setup(self, progress: bool = False) -> None:
        """Initial clustering: k-means on the L2-normalised neck features of every image."""
        self.progress = progress
        z = self.embed().neck
        z = z / (z.norm(dim=1, keepdim=True) + 1e-10)
        _, labels = cluster(z, self.cfg.num_clusters, n_iter=self.cfg.kmeans_iters, seed=self.cfg.seed)
        self.memory.init_memory(z, distributed.broadcast_(labels))   # rank 0's clustering
        # The reference asserts that no cluster is empty here; small data or a large K can break
        # that, so we repair instead (spec §6 [R]).
        self.clusters_handled += self.memory.deal_with_small_clusters()
        self.memory.check_small_clusters()
        self.refresh_weights()
        self.model.head.reset_parameters()

    def refresh_weights(self) -> None:
        if self.cfg.reweight:
            self.weights = self.memory.class_weights(self.cfg.reweight_power)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """N indices: uniformly with replacement (the reference sampler, ~37 % of the images unseen
        per epoch) or a random permutation (every image once)."""
        n = self.num_samples
        if self.cfg.sampler == "replacement":
            return torch.randint(n, (n,), generator=self.generator)
        return torch.randperm(n, generator=self.generator)

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        z, logits = self.forward(x)
        out = self.sgd_step(logits, self.memory.labels[idx], self.weights)
        # Several ranks: every replica of the memory takes the whole global batch.
        z, idx = distributed.gather_cat(z.detach().float()), distributed.gather_cat(idx)
        out["finite"] = out["finite"] & torch.isfinite(z).all()
        out["change_ratio"], handled = self.memory.step(idx, z)
        self.clusters_handled += handled
        self.iteration += 1
        self.refresh_weights()
        return out

    def pseudo_labels(self) -> torch.Tensor:
        return self.memory.labels

    def drift_centroids(self) -> torch.Tensor:
        # Cluster ids persist in ODC, so centroid k now is centroid k before: no matching.
        return self.memory.centroids.clone()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": self.memory.state_dict(), "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.weights = state["weights"].to(self.device)
