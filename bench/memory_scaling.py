"""Does ODC's memory work grow with the data set? Cost per iteration at N = 1M / at N = 50k.

Times what one ODC iteration does to its memories, exactly as training calls it
(``ODCMemory.step``: momentum update and re-labelling of the batch, centroid means from the
running sums, the small-cluster check; then the loss weights from the cluster sizes), for a
memory of N unit features with random labels, on the training device. The reference recomputes
every centroid from all N features each iteration, an O(N) cost; odc_mini's should not grow.

    python bench/memory_scaling.py           # N = 50,000 and 1,000,000, D = 256, K = 100
    python bench/memory_scaling.py --tiny    # seconds; for the test suite

Goal: time(N = 1M) / time(N = 50k) <= 1.2. The table also times the reference's full recompute
(``recount`` + ``update_centroids``) at both sizes, for scale.
"""
from __future__ import annotations

import argparse

import torch

from common import compare, print_table, verdict

from odc_mini.memory import ODCMemory


def make_memory(n: int, dim: int, k: int, device: torch.device, seed: int = 0) -> ODCMemory:
    g = torch.Generator().manual_seed(seed)
    # min_cluster 1: random labels give ~N/K members each, so no repair runs while timing.
    mem = ODCMemory(n, dim, k, momentum=0.5, min_cluster=1, device=device)
    feats = torch.randn(n, dim, generator=g)
    mem.init_memory(feats.to(device), torch.randint(k, (n,), generator=g).to(device))
    mem.check_small_clusters()
    return mem


def full_recompute(mem):
    """The reference's centroid update: every member sum from all N features, then the means."""
    def go():
        mem.recount()
        mem.update_centroids()
    return go


def run(sizes: list[int], dim: int, k: int, batch: int, steps: int, repeats: int,
        device: torch.device) -> list[dict]:
    memories = {n: make_memory(n, dim, k, device) for n in sizes}
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(steps, batch, dim, generator=g).to(device)

    def iterations(mem):
        def go():
            for s in range(steps):
                idx = torch.randint(mem.num_samples, (batch,), generator=g).to(device)
                mem.step(idx, feats[s], s + 1)
                mem.class_weights(0.5)
        return go

    fns = {}
    for n, mem in memories.items():
        fns[("step", n)] = iterations(mem)
        fns[("recompute", n)] = full_recompute(mem)        # the reference's O(N D) recompute
    times = compare(fns, repeats=repeats, warmup=1, device=device)
    small = min(sizes)
    return [dict(n=n, step_s=times[("step", n)] / steps, recompute_s=times[("recompute", n)],
                 ratio=(times[("step", n)] / times[("step", small)])) for n in sizes]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--batch", type=int, default=None, help="default: 128 on the CPU, 512 on a GPU")
    p.add_argument("--steps", type=int, default=50, help="iterations per timed block")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="a few seconds, for tests")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    batch = a.batch or (512 if device.type == "cuda" else 128)
    sizes, steps, repeats = a.sizes, a.steps, a.repeats
    if a.tiny:
        sizes, steps, repeats = [2_000, 40_000], 5, 2
    rows = run(sizes, a.dim, a.k, batch, steps, repeats, device)
    print_table(f"ODC memory work per iteration (D={a.dim}, K={a.k}, batch {batch}, {device.type}; "
                f"median of {repeats} blocks of {steps} iterations)",
                ["N", "ms/iteration", f"ratio to N={min(sizes):,}", "full recompute ms (reference, per call)"],
                [[f"{r['n']:,}", f"{1e3 * r['step_s']:.3f}",
                  f"{r['ratio']:.3f}" + (f"  ({verdict(r['ratio'], 1.2)})" if r['n'] == max(sizes) else ""),
                  f"{1e3 * r['recompute_s']:.1f}"] for r in rows])
    return rows


if __name__ == "__main__":
    main()
