"""DeepCluster (Caron et al., ECCV 2018): the *alternating* baseline that ODC improves on.

Every epoch (Caron et al., Sec. 3; OpenSelfSup ``DeepClusterHook.deepcluster``, facebookresearch
``deepcluster/main.py``):

1. extract the features of all N images with the current network (eval mode, no augmentation);
2. PCA to ``pca_dim`` dimensions with whitening, then L2-normalise every row;
3. k-means with K clusters (20 iterations, a new seed every epoch);
4. re-initialise the head: the new cluster ids have nothing to do with the old ones;
5. train one epoch with plain cross-entropy, visiting clusters uniformly (each cluster
   contributes about N/K samples, drawn with replacement only when it is small).

It uses exactly the network, augmentation, K, batch size and epochs of ODC. We cluster the neck
output (256-d) rather than the backbone's pooled features so that both methods own the same
parameters; DeepCluster's PCA-whitening and head reset are kept as in the reference.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .kmeans import cluster_means, l2_normalize, pca_whiten
from .method import Method, Step


def uniform_cluster_sampler(labels: torch.Tensor, num_samples: int,
                            generator: torch.Generator) -> torch.Tensor:
    """(num_samples,) indices that visit every non-empty cluster equally often (FBDC's
    ``UnifLabelSampler``): floor(N'/K') + 1 members per cluster, with replacement only if the
    cluster has no more members than that, then shuffled and truncated to N'."""
    labels = labels.cpu()
    clusters = torch.unique(labels)
    per_cluster = num_samples // len(clusters) + 1
    picks = []
    for k in clusters.tolist():
        members = torch.nonzero(labels == k).flatten()
        if len(members) > per_cluster:
            chosen = members[torch.randperm(len(members), generator=generator)[:per_cluster]]
        else:
            chosen = members[torch.randint(len(members), (per_cluster,), generator=generator)]
        picks.append(chosen)
    picks = torch.cat(picks)
    return picks[torch.randperm(len(picks), generator=generator)][:num_samples]


def match_cluster_ids(previous: torch.Tensor, current: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """(K,) map from current cluster id to the previous id it overlaps most, one-to-one
    (Hungarian method on the K x K contingency table). DeepCluster's ids are arbitrary after
    every k-means, so any comparison across epochs needs this."""
    table = torch.zeros(num_clusters, num_clusters, dtype=torch.long)
    table.index_put_((current.cpu(), previous.cpu()), torch.ones_like(current.cpu()), accumulate=True)
    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    mapping = np.empty(num_clusters, dtype=np.int64)
    mapping[rows] = cols
    return torch.from_numpy(mapping)


class DeepCluster(Method):
    name = "deepcluster"

    def __init__(self, model, images, cfg, generator, **precision):
        super().__init__(model, images, cfg, generator, **precision)
        n, device = self.num_samples, images.device
        self.register_buffer("labels", torch.zeros(n, dtype=torch.long, device=device))
        # Labels of the previous clustering, renamed into the ids of the one before it, so that
        # "did this sample change cluster?" is meaningful across epochs (-1: no previous one).
        self.register_buffer("matched_labels", torch.full((n,), -1, dtype=torch.long, device=device))
        self.register_buffer("previous_matched", torch.full((n,), -1, dtype=torch.long,
                                                            device=device))
        self.register_buffer("centroids", torch.zeros(cfg.num_clusters, cfg.feat_dim, device=device))

    def setup(self) -> None:
        """Nothing to cluster yet: DeepCluster clusters at the start of every epoch."""

    def start_epoch(self, epoch: int) -> torch.Tensor:
        """Cluster (steps 1-4 above), then visit the clusters uniformly (step 5)."""
        self.cluster(epoch)
        return uniform_cluster_sampler(self.labels, self.num_samples, self.generator)

    def cluster(self, epoch: int) -> None:
        """Steps 1-4 above."""
        z = self.embed().neck
        labels = self.kmeans_labels(l2_normalize(pca_whiten(z, self.cfg.pca_dim)),
                                    seed=self.cfg.seed + epoch)
        if self.matched_labels[0] >= 0:
            self.previous_matched = self.matched_labels
            mapping = match_cluster_ids(self.previous_matched, labels, self.cfg.num_clusters)
            self.matched_labels = mapping.to(labels.device)[labels]
        else:
            self.matched_labels = labels.clone()
        self.labels = labels
        # Centroids for the drift measure: means of the unit neck features (the space ODC's
        # centroids live in), in matched ids, so that drift compares like with like.
        self.centroids = cluster_means(l2_normalize(z), self.matched_labels, self.cfg.num_clusters)[0]
        self.model.head.reset_parameters()
        # The head's momentum is 0, so no optimiser state refers to the old head.

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> Step:
        _, logits = self.forward(x)
        loss, acc, finite = self.sgd_step(logits, self.labels[idx])
        # Churn as ODC measures it: the fraction of the batch whose label differs from the one
        # it had before (here: in the previous clustering, after matching ids). NaN in epoch 1.
        prev = self.previous_matched[idx]
        changed = (self.matched_labels[idx] != prev).float().mean()
        return Step(loss, acc, torch.where(prev[0] >= 0, changed, torch.full_like(changed, float("nan"))),
                    finite)

    def pseudo_labels(self) -> torch.Tensor:
        return self.matched_labels

    def drift_centroids(self) -> torch.Tensor:
        # Already in matched ids (Hungarian matching on label overlap, see ``cluster``).
        return self.centroids.clone()
