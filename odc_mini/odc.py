"""Online Deep Clustering: labels are re-assigned batch by batch while the network trains.

One iteration (the paper's Sec. 3.2 and Fig. 2; OpenSelfSup ``ODC.forward_train`` and
``ODCHook.after_train_iter``), in this order:

1. forward the augmented batch (train mode): neck features z and logits;
2. weighted cross-entropy against the labels *currently stored* in the samples memory, SGD step;
3. samples memory: momentum update of the batch's features, re-label by nearest centroid;
4. every ``centroid_interval`` iterations: recompute all centroids as member means;
5. every ``deal_interval`` iterations: disband small clusters and split the largest ones;
6. refresh the loss weights w_k ~ n_k^-0.5 from the cluster sizes of the whole label bank.

Steps 3-5 are ``ODCMemory.step``; it keeps running sums and sizes, so the whole iteration costs
O(batch) however many images the memory holds.

Before the first iteration the memory is filled once from k-means on the features of the
untrained network (OpenSelfSup's ``DeepClusterHook`` with ``init_memory=True``); after that no
global clustering ever happens again.
"""
from __future__ import annotations

import torch

from .kmeans import l2_normalize
from .memory import ODCMemory
from .method import Method, Step


class ODC(Method):
    name = "odc"
    memory_class = ODCMemory

    def __init__(self, model, images, cfg, generator, **precision):
        super().__init__(model, images, cfg, generator, **precision)
        self.memory = self.memory_class.of(cfg, self.num_samples, images.device)
        self.register_buffer("weights", torch.full((cfg.num_clusters,), 1.0 / cfg.num_clusters,
                                                   device=images.device))

    def setup(self) -> None:
        """Initial clustering: k-means on the L2-normalised neck features of every image."""
        z = l2_normalize(self.embed().neck)
        self.memory.init_memory(z, self.kmeans_labels(z, seed=self.cfg.seed))
        # The reference asserts that no cluster is empty here; small data or a large K can break
        # that, so we repair instead.
        self.clusters_handled += self.memory.deal_with_small_clusters()
        self.memory.check_small_clusters()
        self.refresh_weights()
        self.model.head.reset_parameters()

    def refresh_weights(self) -> None:
        if self.cfg.reweight:
            self.weights = self.memory.class_weights(self.cfg.reweight_power)

    def start_epoch(self, epoch: int) -> torch.Tensor:
        """N indices: uniformly with replacement (the reference sampler, ~37 % of the images unseen
        per epoch) or a random permutation (every image once)."""
        n = self.num_samples
        if self.cfg.sampler == "replacement":
            return torch.randint(n, (n,), generator=self.generator)
        return torch.randperm(n, generator=self.generator)

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> Step:
        z, logits = self.forward(x)
        loss, acc, finite = self.sgd_step(logits, self.memory.labels[idx], self.weights)
        z, idx = self.global_batch(z.detach().float(), idx)
        change_ratio, handled = self.memory.step(idx, z, self.iteration)
        self.clusters_handled += handled
        self.refresh_weights()
        return Step(loss, acc, change_ratio, finite & torch.isfinite(z).all())

    def pseudo_labels(self) -> torch.Tensor:
        return self.memory.labels

    def drift_centroids(self) -> torch.Tensor:
        # Cluster ids persist in ODC, so centroid k now is centroid k before: no matching.
        return self.memory.centroids.clone()
