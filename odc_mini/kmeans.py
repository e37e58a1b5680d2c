"""Clustering: one k-means for both methods on every device, and DeepCluster's PCA whitening.

ODC initialises its memory with one k-means run; DeepCluster re-clusters every epoch. Both call
:func:`cluster`, one algorithm with the settings of the reference code (OpenSelfSup
``openselfsup/third_party/clustering.py``, ``Kmeans``; facebookresearch ``deepcluster/clustering.py``):
Lloyd's iterations from **K distinct data points drawn at random with the seed**, every point
used (no subsampling), exact squared-L2 assignment, empty clusters refilled by splitting a large
one. Two programs implement it:

* :func:`faiss_kmeans` on the CPU: FAISS, the library the reference clusters with, several times
  faster there than any k-means written in torch (``bench/kmeans_vs_faiss.py``);
* :func:`torch_kmeans` on a GPU, where the features already are: the textbook Lloyd algorithm
  the book reads (1. every point goes to its nearest centroid; 2. every centroid moves to the
  mean of its points), with the same initialisation rule and FAISS's way of splitting clusters.
  Its random draws differ from FAISS's, so the two agree in quality (inertia), not label for
  label (``tests/test_kmeans.py``).

``pca_whiten`` is the preprocessing DeepCluster applies before k-means (FAISS ``PCAMatrix`` with
``eigen_power=-0.5``). Shapes: N points, D feature dimensions, K clusters.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cluster", "cluster_means", "cluster_sums", "faiss_kmeans", "inertia", "l2_normalize",
           "pca_whiten", "PCAWhitening", "torch_kmeans"]

# Largest number of float32 entries in one (rows x K) distance block.
# On a GPU, big blocks amortise kernel-launch overhead and 2**26 floats
# (256 MiB) bounds the peak memory: with N = 1M, K = 1000 that is 67k rows
# per block.  On a CPU the block is written by the matmul and read back by
# the reduction, which is faster while it stays in cache (4 MiB).
_MAX_BLOCK_ELEMS_GPU = 2**26
_MAX_BLOCK_ELEMS_CPU = 2**20

# Relative perturbation used when an empty cluster steals half of a big one.
# FAISS (Clustering.cpp, split_clusters) uses 1/1024, "a bit above machine
# epsilon for float16"; it must be large enough that the two copies of the
# centroid stay distinguishable after the ||x||^2 - 2 x.c + ||c||^2
# expansion in float32, and small enough not to move the centroid noticeably.
_SPLIT_EPS = 1.0 / 1024.0


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------


def _check_points(x: Tensor, name: str = "x") -> None:
    """Raise a one-line ValueError unless ``x`` is a finite 2-D float tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    # min and max are NaN if any entry is (they propagate NaN) and +-Inf if
    # any entry is; one vectorised pass, no (N, D) boolean temporary as
    # ``isfinite(x).all()`` would make (which took 10x longer).
    if x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def _check_k(x: Tensor, k: int) -> tuple[int, int]:
    """(N, D) of the points ``x`` (checked as above), once ``k`` clusters fit them."""
    _check_points(x)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must satisfy 1 <= k <= N, got k={k}, N={x.shape[0]}")
    return x.shape


def _rows_per_block(k: int, device: torch.device) -> int:
    """Rows of ``x`` to process at once so that a (rows, k) block fits the budget."""
    budget = _MAX_BLOCK_ELEMS_CPU if device.type == "cpu" else _MAX_BLOCK_ELEMS_GPU
    return max(1, budget // max(k, 1))


# --------------------------------------------------------------------------
# assignment step
# --------------------------------------------------------------------------


def _assign(x: Tensor, centroids: Tensor, labels: Tensor, best: Tensor | None = None) -> None:
    """Write ``argmin_k (||c_k||^2 - 2 x_i.c_k)`` into ``labels`` (N,) int64.

    That is the nearest centroid (||x_i||^2 does not depend on k); ties go to
    the lowest index, as ``min`` breaks them.  If ``best`` (N,) is given it
    receives the minimum.  The heavy part is one matrix multiplication per
    block of rows.
    """
    n, k = x.shape[0], centroids.shape[0]
    c_sq = (centroids * centroids).sum(dim=1)  # (K,)
    rows = _rows_per_block(k, x.device)
    c_t = centroids.t()  # (D, K) view; addmm handles the transpose without a copy
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = torch.addmm(c_sq, x[start:stop], c_t, beta=1.0, alpha=-2.0)  # (rows, K)
        mins, idx = block.min(dim=1)
        labels[start:stop] = idx
        if best is not None:
            best[start:stop] = mins


# --------------------------------------------------------------------------
# empty clusters
# --------------------------------------------------------------------------


def _split_clusters(centroids: Tensor, counts: Tensor, gen: torch.Generator) -> None:
    """Refill empty clusters in place by splitting non-empty ones, as FAISS does.

    For every empty cluster e we pick a cluster j with probability
    proportional to ``size_j - 1`` (so singletons are never split and big
    clusters are split most often), copy its centroid into slot e, and push
    the two copies apart by a small symmetric relative perturbation:

        c_e = c_j * (1 + eps * s),   c_j = c_j * (1 - eps * s),
        s = (+1, -1, +1, -1, ...) over the D coordinates.

    The next assignment step then divides j's points between the two
    centroids along that direction.  We also pretend the split is even
    (``size_e = size_j // 2``) so that several empty clusters in the same
    iteration do not all pick the same donor.

    Args:
        centroids: (K, D) float32, modified in place.
        counts: (K,) int64 cluster sizes; some are 0.  Not modified.
        gen: generator on the centroids' device (for reproducibility).

    Note: a donor centroid that is exactly 0 cannot be split this way (the
    perturbation is relative); FAISS shares this limitation.
    """
    counts = counts.clone()
    d = centroids.shape[1]
    sign = torch.ones(d, dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1.0
    # One host sync to list the empty slots; this path runs rarely.
    for e in torch.nonzero(counts == 0).flatten().tolist():
        # At least one cluster has >= 2 points: K-1 or fewer clusters hold
        # N >= K points, and splitting keeps the total at N.  So the weights
        # below are never all zero.
        weights = (counts - 1).clamp_min(0).to(torch.float32)
        j = torch.multinomial(weights, 1, generator=gen)  # (1,)
        donor = centroids.index_select(0, j)  # (1, D)
        centroids[e] = donor[0] * (1.0 + _SPLIT_EPS * sign)
        centroids.index_copy_(0, j, donor * (1.0 - _SPLIT_EPS * sign))
        half = counts.index_select(0, j) // 2  # (1,)
        counts[e] = half[0]
        counts.index_add_(0, j, -half)


def cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """((K, D) sums of the rows of each cluster in x's dtype, (K,) int64 cluster sizes).

    ``index_add_`` sums the rows of each cluster in O(N D); a one-hot (K, N) matrix times ``x``
    would cost O(N K D), as much as an assignment step. (On CUDA, ``index_add_`` uses atomic
    float adds, so the last bits can differ from run to run.)
    """
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    return sums, torch.bincount(labels, minlength=k)


def cluster_means(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """((K, D) mean of the rows of each cluster in x's dtype, (K,) cluster sizes); an empty
    cluster's mean is all zeros (its size says it is empty)."""
    sums, counts = cluster_sums(x, labels, k)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


# --------------------------------------------------------------------------
# the k-means
# --------------------------------------------------------------------------


def torch_kmeans(x: Tensor, k: int, n_iter: int = 20, seed: int = 0,
                 init_centroids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on the rows of ``x`` (N, D), any device, computed in float32.

    Starts from ``k`` distinct rows of ``x`` drawn with ``seed`` (a generator on x's device;
    the rule FAISS follows), or from ``init_centroids`` (K, D). Runs at most ``n_iter``
    iterations of assignment + update and stops early once the assignment no longer changes
    (which gives exactly what the remaining iterations would). Empty clusters are refilled
    after every update by splitting a large one (``_split_clusters``).

    Returns (K, D) float32 centroids and (N,) int64 labels on x's device; the labels are the
    nearest centroid of every point w.r.t. the *returned* centroids.
    """
    n, d = _check_k(x, k)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got n_iter={n_iter}")
    x = x.float()  # no copy when already float32
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if init_centroids is None:
        centroids = x.index_select(0, torch.randperm(n, generator=gen, device=x.device)[:k])
    else:
        _check_points(init_centroids, "init_centroids")
        if tuple(init_centroids.shape) != (k, d):
            raise ValueError(f"init_centroids must have shape (k, D) = {(k, d)}, "
                             f"got {tuple(init_centroids.shape)}")
        centroids = init_centroids.to(device=x.device, dtype=torch.float32).clone()
    # Two label buffers, swapped every iteration: the assignment w.r.t. the current centroids
    # and the previous one, for the convergence test.
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    prev_labels = torch.full_like(labels, -1)
    split = False
    for _ in range(n_iter):
        _assign(x, centroids, labels)                                     # 1. assignment
        if torch.equal(labels, prev_labels) and not split:
            return centroids, labels   # converged: the centroids are these clusters' means
        sums, counts = cluster_sums(x, labels, k)                         # 2. update
        centroids = (sums.double() / counts.clamp_min(1).unsqueeze(1)).float()
        split = bool((counts == 0).any())
        if split:
            _split_clusters(centroids, counts, gen)
        labels, prev_labels = prev_labels, labels
    _assign(x, centroids, labels)
    return centroids, labels


def cluster(x: Tensor, k: int, n_iter: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The k-means both methods run (see the module notes): :func:`faiss_kmeans` when ``x`` is on
    the CPU, :func:`torch_kmeans` on a GPU. Returns (K, D) float32 centroids and (N,) int64
    labels (the nearest centroid of every point) on x's device."""
    if x.device.type == "cpu":
        return faiss_kmeans(x, k, n_iter=n_iter, seed=seed)
    return torch_kmeans(x, k, n_iter=n_iter, seed=seed)


def faiss_kmeans(x: Tensor, k: int, n_iter: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """FAISS's k-means with the reference code's settings: ``n_iter`` Lloyd iterations from k
    points drawn with ``seed``, every point used (no subsampling), exact L2 search, empty
    clusters refilled by splitting large ones. Returns (K, D) float32 centroids and (N,) int64
    labels on x's device."""
    n, d = _check_k(x, k)
    try:
        import faiss
    except ImportError:
        raise ImportError("odc_mini clusters on the CPU with FAISS: pip install faiss-cpu") from None
    points = x.detach().float().cpu().contiguous().numpy()
    km = faiss.Kmeans(d, k, niter=n_iter, seed=seed, verbose=False,
                      max_points_per_centroid=10**7,   # the reference: never subsample
                      min_points_per_centroid=1)       # (only silences a warning)
    km.train(points)
    _, nearest = km.index.search(points, 1)
    return (torch.from_numpy(km.centroids).to(x.device),
            torch.from_numpy(nearest[:, 0]).long().to(x.device))


def inertia(x: Tensor, centroids: Tensor, labels: Tensor) -> float:
    """Sum of squared distances of the points to their assigned centroids.

    Args:
        x: (N, D) points.
        centroids: (K, D).
        labels: (N,) int64 in [0, K).

    Returns:
        The k-means objective as a Python float.  Computed from the explicit
        differences (not the dot-product expansion, which loses precision) in
        blocks of rows, accumulated in float64.
    """
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"need x (N, D) and centroids (K, D), got {tuple(x.shape)} and "
                         f"{tuple(centroids.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape (N,) = ({x.shape[0]},), got {tuple(labels.shape)}")
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    rows = _rows_per_block(x.shape[1], x.device)
    for start in range(0, x.shape[0], rows):
        diff = x[start : start + rows] - centroids[labels[start : start + rows]]
        total += (diff * diff).sum(dtype=torch.float64)
    return float(total)


# --------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------


def l2_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Scale every row (last dimension) to unit L2 norm: ``x / (||x|| + eps)``.

    (..., D) -> (..., D).  ``eps`` keeps an all-zero row at zero instead of NaN.
    """
    return x / (x.norm(dim=-1, keepdim=True) + eps)


class PCAWhitening:
    """PCA projection to ``dim`` components followed by whitening.

    ``fit`` learns the mean and the top principal directions of (N, D) data;
    ``transform`` maps (M, D) -> (M, dim) with unit variance per component:

        y = (x - mean) @ V[:, :dim] / sqrt(lambda[:dim] + eps)

    This is FAISS ``PCAMatrix(D, dim, eigen_power=-0.5)``, the preprocessing
    of DeepCluster (whitening makes all kept directions equally important to
    k-means, so a few high-variance directions do not dominate the distances).
    Fitting on one set and applying to another is why this is a class;
    ``pca_whiten`` is the one-shot version.

    The covariance and its eigendecomposition use float64: eigenvalues of a
    float32 covariance lose relative precision in the small ones, which the
    whitening then divides by.  The covariance uses the unbiased 1/(N-1)
    normalisation, like ``torch.cov`` and scikit-learn's PCA.

    ``dim`` larger than D is clipped to D (you cannot keep more components
    than there are dimensions); ``self.dim`` holds the effective value after
    ``fit``.  Each eigenvector's sign is fixed so that its largest-magnitude
    entry is positive, making the output independent of the solver's choice.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got dim={dim}")
        self.dim = dim
        self.eps = eps
        self.mean: Tensor | None = None  # (D,) float64
        self.projection: Tensor | None = None  # (D, dim) float64, whitening included

    def fit(self, x: Tensor) -> "PCAWhitening":
        """Learn mean and whitened projection from (N, D) data, N >= 2."""
        _check_points(x)
        n, d = x.shape
        if n < 2:
            raise ValueError(f"need at least 2 rows to estimate a covariance, got N={n}")
        self.dim = min(self.dim, d)
        mean = x.sum(dim=0, dtype=torch.float64) / n
        # Accumulate the covariance block by block so that we never hold a
        # float64 copy of all of x (1M x 128 would be 1 GiB).
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        rows = _rows_per_block(d, x.device)
        for start in range(0, n, rows):
            xc = x[start : start + rows].double() - mean
            cov += xc.t() @ xc
        cov /= n - 1
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending order
        eigvals = eigvals.flip(0)[: self.dim].clamp_min(0.0)  # round-off can give -1e-17
        eigvecs = eigvecs.flip(1)[:, : self.dim]  # (D, dim), columns = components
        biggest = eigvecs.abs().argmax(dim=0)  # (dim,)
        signs = torch.sign(eigvecs[biggest, torch.arange(self.dim, device=x.device)])
        eigvecs = eigvecs * signs
        self.mean = mean
        self.projection = eigvecs / torch.sqrt(eigvals + self.eps)
        return self

    def transform(self, x: Tensor) -> Tensor:
        """(M, D) -> (M, dim), in x's dtype and device."""
        if self.mean is None or self.projection is None:
            raise RuntimeError("PCAWhitening.transform called before fit")
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x must have shape (M, {self.mean.shape[0]}), got {tuple(x.shape)}")
        out = torch.empty(x.shape[0], self.dim, dtype=x.dtype, device=x.device)
        rows = _rows_per_block(x.shape[1], x.device)
        for start in range(0, x.shape[0], rows):
            xc = x[start : start + rows].double() - self.mean
            out[start : start + rows] = (xc @ self.projection).to(x.dtype)
        return out


def pca_whiten(x: Tensor, dim: int, eps: float = 1e-5) -> Tensor:
    """PCA-reduce (N, D) to (N, dim) and whiten; see ``PCAWhitening``.

    ``dim > D`` is clipped to D.  The output has zero mean and (up to ``eps``)
    identity covariance.
    """
    return PCAWhitening(dim, eps).fit(x).transform(x)
