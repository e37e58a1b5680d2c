"""DeepCluster's cost per epoch: (feature extraction + PCA + k-means + training) / training alone.

DeepCluster re-clusters the whole training set at the start of every epoch: it extracts the
features of every image, whitens them with PCA and runs k-means, then trains one epoch on the
new pseudo-labels. A plain supervised epoch is only the training. Both run the training loop of
``odc_mini.train`` (augmentation included) over the same images, batch and network; epochs are
interleaved (supervised, DeepCluster, ...) and the medians compared. ODC's epoch is timed too:
its clustering happens inside the steps.

    python bench/deepcluster_epoch.py          # CPU: quick profile, 10,000 images
    python bench/deepcluster_epoch.py --tiny   # seconds; for the test suite

Goal: DeepCluster epoch / supervised epoch <= 1.35.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import bench_config, compare, make_method, print_table, synchronize, verdict

from odc_mini.augment import AugmentConfig
from odc_mini.train import train_epoch


def run(n: int, repeats: int, device: torch.device, tiny: bool = False) -> dict:
    overrides = {}
    if tiny:
        overrides.update(num_clusters=10, min_cluster=5, eval_batch_size=200, batch_size=32, pca_dim=16)
    cfg, source = bench_config(device, n, **overrides)
    names = ("supervised", "deepcluster", "odc")
    methods = {name: make_method(name, cfg, device) for name in names}
    augment_cfg = AugmentConfig.of(cfg)
    gens = (torch.Generator(device=device).manual_seed(0), torch.Generator().manual_seed(0))
    iters = n // cfg.batch_size
    parts: dict[str, list[float]] = {"cluster": []}

    def epoch(name):
        method = methods[name]

        def go():
            t0 = time.perf_counter()
            order = method.start_epoch(method.iteration // iters + 1).to(device)
            if name == "deepcluster":       # the clustering part of the epoch, timed on its own
                synchronize(device)
                parts["cluster"].append(time.perf_counter() - t0)
            train_epoch(method, method.images, order, iters, cfg.batch_size, augment_cfg, gens)
        return go

    times = compare({name: epoch(name) for name in names}, repeats=repeats, warmup=1, device=device)
    cluster = statistics.median(parts["cluster"][-repeats:])   # the timed epochs, not the warm-up
    return dict(device=device.type, arch=cfg.arch, batch_size=cfg.batch_size, num_images=n,
                data=source, supervised_s=times["supervised"], deepcluster_s=times["deepcluster"],
                odc_s=times["odc"], deepcluster_cluster_s=cluster,
                ratio=times["deepcluster"] / times["supervised"],
                odc_ratio=times["odc"] / times["supervised"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=10_000, help="training images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a few seconds, for tests")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    n, repeats = (400, 1) if a.tiny else (a.n, a.repeats)
    r = run(n, repeats, device, tiny=a.tiny)
    print_table(f"One epoch, {n:,} {r['data']} images ({r['arch']}, batch {r['batch_size']}, "
                f"{device.type}; median of {repeats} epochs each, interleaved)",
                ["method", "s/epoch", "of which clustering", "ratio to supervised"],
                [["supervised", f"{r['supervised_s']:.2f}", "-", "1.000"],
                 ["deepcluster", f"{r['deepcluster_s']:.2f}", f"{r['deepcluster_cluster_s']:.2f}",
                  f"{r['ratio']:.3f}  ({verdict(r['ratio'], 1.35)})"],
                 ["odc", f"{r['odc_s']:.2f}", "in the steps", f"{r['odc_ratio']:.3f}"]])
    return r


if __name__ == "__main__":
    main()
