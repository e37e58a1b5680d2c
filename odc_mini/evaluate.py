"""Evaluation of clusterings and of learned features.

Two kinds of questions are asked in this project:

* How good is a clustering?  ``nmi``, ``ari`` and ``hungarian_accuracy``
  compare pseudo-labels with the CIFAR-10 classes; ``centroid_drift`` and
  ``label_centroids`` measure how much the clustering moves between epochs.
* How good are the features?  ``knn_accuracy`` (weighted k-NN, no training)
  and ``linear_probe`` (logistic regression) on frozen features
  (``method.embed_images`` extracts them).

Label arrays may be NumPy arrays or torch tensors (any device); feature
tensors stay on their device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from .kmeans import cluster_means, l2_normalize

__all__ = ["nmi", "ari", "hungarian_accuracy", "centroid_drift", "label_centroids",
           "knn_accuracy", "linear_probe"]


# --------------------------------------------------------------------------
# clustering vs. classes
# --------------------------------------------------------------------------


def _as_label_array(a, name: str) -> np.ndarray:
    """Convert a 1-D label tensor/array/list to a NumPy int64 array."""
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _label_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_label_array(a, "a"), _as_label_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    return a, b


def nmi(a, b) -> float:
    """Normalized mutual information of two labellings of the same N items.

    Symmetric, in [0, 1], invariant to renaming the labels (so cluster ids do
    not need to match class ids).  scikit-learn's default arithmetic-mean
    normalisation.
    """
    return float(normalized_mutual_info_score(*_label_pair(a, b)))


def ari(a, b) -> float:
    """Adjusted Rand index of two labellings: 1 = identical partitions,
    ~0 = as similar as random partitions (can be slightly negative)."""
    return float(adjusted_rand_score(*_label_pair(a, b)))


def hungarian_accuracy(pred, true) -> float:
    """Clustering accuracy under the best one-to-one cluster -> class mapping.

    Builds the (P, T) contingency matrix (P distinct predicted clusters, T
    distinct classes) and finds the mapping that maximises the number of
    correctly "classified" items with the Hungarian algorithm.  With P != T
    the matrix is rectangular and only min(P, T) clusters get a class; the
    items of the other clusters count as errors.  (So with many more
    clusters than classes -- DeepCluster uses K >> 10 -- this accuracy is
    low by construction; NMI is the fairer number there.)

    Args:
        pred: (N,) integer cluster ids.
        true: (N,) integer class ids.

    Returns:
        Fraction of items in [0, 1].
    """
    pred, true = _label_pair(pred, true)
    if pred.size == 0:
        raise ValueError("cannot compute accuracy of empty label arrays")
    # Re-index both labellings to 0..P-1 and 0..T-1 so arbitrary ids work.
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    n_p, n_t = p.max() + 1, t.max() + 1
    contingency = np.bincount(p * n_t + t, minlength=n_p * n_t).reshape(n_p, n_t)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / pred.size)


# --------------------------------------------------------------------------
# clustering vs. previous clustering
# --------------------------------------------------------------------------


def centroid_drift(prev: Tensor, cur: Tensor) -> float:
    """Mean distance ``mean_k ||cur_k - prev_k||`` between two (K, D) centroid sets whose ids
    name the same clusters. ODC's ids persist (cluster k at one epoch *is* cluster k at the
    next); DeepCluster's k-means ids are an arbitrary permutation each time, so its clusters are
    renamed after the previous ones by label overlap first (``deepcluster.match_cluster_ids``).
    """
    if prev.ndim != 2 or prev.shape != cur.shape:
        raise ValueError(f"prev and cur must both be (K, D), got {tuple(prev.shape)} and "
                         f"{tuple(cur.shape)}")
    return float((cur.to(prev.device).double() - prev.double()).norm(dim=1).mean())


def label_centroids(features: Tensor, labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """((K, D) float64 mean of the unit-length ``features`` of each cluster, (K,) cluster sizes).

    An empty cluster's centroid is all zeros (its size says it is empty). This is how the book
    measures drift *alike* for both methods: centroids of the current network's features under
    each method's current labels, whatever the method keeps internally.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, D) and labels (N,), got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    labels = torch.as_tensor(labels, device=features.device).long()
    return cluster_means(l2_normalize(features.double()), labels, num_clusters)


# --------------------------------------------------------------------------
# feature quality
# --------------------------------------------------------------------------


def _check_features(feats: Tensor, labels: Tensor, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name}_feats must be 2-D (N, D), got shape {tuple(feats.shape)}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(f"{name}_labels must have shape ({feats.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    if feats.shape[0] == 0:
        raise ValueError(f"{name}_feats has no rows (shape {tuple(feats.shape)}); "
                         "at least one image is needed")


@torch.no_grad()
def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 k: int = 200, temperature: float = 0.07, num_classes: int | None = None,
                 chunk: int = 1024) -> float:
    """Top-1 accuracy of a weighted k-nearest-neighbour classifier.

    The "kNN monitor" of Wu et al. (InstDisc, 2018), used since by most
    self-supervised papers because it needs no training: for each test
    feature, take the ``k`` training features with the highest cosine
    similarity s_i; each neighbour votes for its class with weight
    exp(s_i / temperature); predict the class with the largest total vote.
    The exponential makes close neighbours count much more than far ones.

    Args:
        train_feats: (N, D) memory bank features.
        train_labels: (N,) int64 classes.
        test_feats: (M, D) query features, same device as train_feats.
        test_labels: (M,) int64 classes.
        k: number of neighbours, clipped to N.
        temperature: softmax-like temperature of the vote weights.
        num_classes: C; by default 1 + the largest label seen.
        chunk: test rows per block; the (chunk, N) similarity matrix is the
            peak memory (1024 x 50000 float32 = 200 MB).

    Returns:
        Fraction of test rows classified correctly, in [0, 1].
    """
    _check_features(train_feats, train_labels, "train")
    _check_features(test_feats, test_labels, "test")
    device = train_feats.device
    train = F.normalize(train_feats.float(), dim=1)  # (N, D)
    test = F.normalize(test_feats.float().to(device), dim=1)  # (M, D)
    train_labels = train_labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train.shape[0])

    correct = torch.zeros((), dtype=torch.long, device=device)  # summed on device: no sync per chunk
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.t()  # (B, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
        weights = (top_sim / temperature).exp()  # (B, k)
        votes = torch.zeros(sim.shape[0], num_classes, device=device)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # (B, C)
        correct += (votes.argmax(dim=1) == test_labels[start : start + chunk]).sum()
    return float(correct) / test.shape[0]


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 epochs: int = 100, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 512, seed: int = 0) -> float:
    """Test top-1 accuracy of a logistic-regression classifier on frozen features.

    Choices, all aimed at "simple, fast, deterministic, no tuning":

    * features are standardised with the training mean/std, so one learning
      rate works whatever the scale of the features;
    * the model is a single linear layer initialised to zero (the problem is
      convex, so the start point hardly matters, and zeros need no RNG);
    * mini-batch Adam with the given ``weight_decay`` as L2 penalty, for
      ``epochs`` passes over shuffled training data.  The only randomness is
      the shuffling, drawn from a generator seeded with ``seed``.

    10k x 512 features, 100 epochs: 2000 steps of a (512 x 512) @ (512 x C)
    matmul, a few seconds on 2 CPU cores.

    Args:
        train_feats: (N, D) features, train_labels: (N,) int64 classes.
        test_feats: (M, D) features, test_labels: (M,) int64 classes.
        epochs, lr, weight_decay, batch_size: optimiser settings.
        seed: seed of the shuffling generator.

    Returns:
        Fraction of test rows classified correctly, in [0, 1].
    """
    _check_features(train_feats, train_labels, "train")
    _check_features(test_feats, test_labels, "test")
    device = train_feats.device
    x_train = train_feats.detach().float()
    x_test = test_feats.detach().float().to(device)
    y_train = train_labels.to(device=device, dtype=torch.long)
    y_test = test_labels.to(device=device, dtype=torch.long)
    num_classes = int(max(y_train.max(), y_test.max())) + 1

    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0).clamp_min(1e-6)  # constant features would divide by 0
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std

    n, d = x_train.shape
    weight = torch.zeros(num_classes, d, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator(device=device).manual_seed(seed)

    with torch.enable_grad():  # callers may be inside torch.no_grad()
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen, device=device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                logits = F.linear(x_train[idx], weight, bias)  # (B, C)
                loss = F.cross_entropy(logits, y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    with torch.no_grad():
        pred = F.linear(x_test, weight, bias).argmax(dim=1)
        return float((pred == y_test).float().mean())
