"""The methods' clustering step on the CPU (``odc_mini.kmeans.cluster``) against FAISS called
directly, and the book's readable torch k-means against both.

    python bench/kmeans_vs_faiss.py [--n 50000 --dim 128 --ks 10 100 1000 --iters 20 --seeds 3]
    python bench/kmeans_vs_faiss.py --tiny      # seconds; used by tests/test_kmeans.py

Goal: on the CPU the clustering step ODC and DeepCluster run takes at most as long as FAISS
itself (``faiss.Kmeans`` with the reference code's settings: ``niter`` iterations, no
subsampling, then the nearest centroid of every point by ``index.search``) for K in
{10, 100, 1000} on 50,000 x 128 float32 points, with inertia within 1% of FAISS's. The torch
``torch_kmeans`` (the same initialisation rule and iterations) is timed too: it is what the book reads and
what a GPU runs, and this table shows why the CPU does not.

Data. L2-normalised rows with clusters at several scales, like CNN features (two levels of
``make_blobs``: 2,000 sub-cluster centres around 20 group centres, isotropic noise on top), so
that each K finds structure at its own scale.

Timing. For each seed, the three calls run interleaved (after one warm-up round); the table
gives the median over seeds. Every call uses all the threads OpenMP and torch see. Inertia is
recomputed by ``odc_mini.kmeans.inertia`` (explicit differences, float64) from each result, and
averaged over seeds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np
import torch
from sklearn.datasets import make_blobs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # odc_mini

from common import print_table, timed, verdict  # noqa: E402

from odc_mini.kmeans import cluster, inertia, l2_normalize, torch_kmeans  # noqa: E402

GOAL = 1.0  # time of odc_mini's clustering step / FAISS
INERTIA_TOL = 0.01  # |inertia ratio - 1|


def make_data(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(n, dim) float32 L2-normalised rows with clusters at several scales (see module doc)."""
    groups = 20
    subclusters = min(2000, max(n // 25, groups))
    centres, _ = make_blobs(n_samples=subclusters, n_features=dim, centers=groups,
                            cluster_std=3.0, center_box=(-10.0, 10.0), random_state=seed)
    x, _ = make_blobs(n_samples=n, n_features=dim, centers=centres, cluster_std=2.0,
                      random_state=seed + 1)
    x += np.random.default_rng(seed).normal(scale=2.0, size=x.shape)
    return l2_normalize(torch.from_numpy(x).float()).contiguous()


def faiss_direct(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=10**7,
                      min_points_per_centroid=1)
    km.train(x)
    return km.centroids, km.index.search(x, 1)[1][:, 0]


def run_one(x: torch.Tensor, k: int, iters: int, seeds: int) -> dict:
    x_np = x.numpy()
    calls = {
        "cluster": lambda s: cluster(x, k, n_iter=iters, seed=s),
        "faiss": lambda s: tuple(map(torch.from_numpy, faiss_direct(x_np, k, iters, s))),
        "torch": lambda s: torch_kmeans(x, k, n_iter=iters, seed=s),
    }
    for call in calls.values():                       # warm-up
        call(0)
    times = {name: [] for name in calls}
    inertias = {name: [] for name in calls}
    for s in range(seeds):
        for name, call in calls.items():
            out = {}
            times[name].append(timed(lambda: out.setdefault("r", call(s))))
            c, labels = out["r"]
            inertias[name].append(inertia(x, c.float(), labels.long()))
    t = {name: statistics.median(v) for name, v in times.items()}
    i = {name: statistics.fmean(v) for name, v in inertias.items()}
    return dict(k=k, cluster_s=t["cluster"], faiss_s=t["faiss"], torch_s=t["torch"],
                time_ratio=t["cluster"] / t["faiss"], torch_ratio=t["torch"] / t["faiss"],
                inertia_ratio=i["cluster"] / i["faiss"], torch_inertia_ratio=i["torch"] / i["faiss"])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tiny", action="store_true",
                   help="n=10000, dim=16, K 10 and 100, 1 seed: a seconds-long check")
    a = p.parse_args(argv)
    if a.tiny:
        a.n, a.dim, a.seeds, a.ks = 10_000, 16, 1, [10, 100]
    x = make_data(a.n, a.dim)
    load = os.getloadavg()[0]
    rows = [run_one(x, k, a.iters, a.seeds) for k in a.ks]
    print_table(
        f"k-means on the CPU, N={a.n} D={a.dim} {a.iters} iterations, {torch.get_num_threads()} "
        f"threads, median of {a.seeds} seeds, load {load:.1f} at start",
        ["K", "cluster s", "FAISS s", "torch s", "cluster/FAISS", "torch/FAISS",
         "inertia cluster/FAISS", "inertia torch/FAISS", "verdict"],
        [[r["k"], f"{r['cluster_s']:.3f}", f"{r['faiss_s']:.3f}", f"{r['torch_s']:.3f}",
          f"{r['time_ratio']:.2f}", f"{r['torch_ratio']:.2f}", f"{r['inertia_ratio']:.4f}",
          f"{r['torch_inertia_ratio']:.4f}", verdict(r["time_ratio"], GOAL)] for r in rows],
    )
    print(f"inertia of the clustering step within {INERTIA_TOL:.0%} of FAISS's for every K: "
          f"{'yes' if inertia_agrees(rows) else 'NO'}")
    return rows


def inertia_agrees(rows: list[dict]) -> bool:
    return all(abs(r["inertia_ratio"] - 1.0) <= INERTIA_TOL for r in rows)


if __name__ == "__main__":
    sys.exit(0 if inertia_agrees(main()) else 1)
