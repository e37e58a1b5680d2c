"""ODC's overhead per training step: ODC step time / plain supervised step time.

Both steps run the same network on the same augmented batch, with the same optimiser; the ODC
step adds the weighted loss and the memory work of ``ODCMemory.step`` (momentum update,
re-labelling, centroid means, the small-cluster check) and the loss-weight refresh. Steps are
timed in blocks, interleaved (supervised, ODC, supervised, ...), and the medians compared.

    python bench/step_overhead.py            # CPU: quick profile's small CNN, batch 128, N=10k
    python bench/step_overhead.py --tiny     # seconds; for the test suite

On a GPU it uses the full profile (ResNet-18, batch 512, N=50k) and also reports images/s.
Goal: ratio <= 1.05 on the CPU; on a GPU, ODC throughput >= 0.9 of supervised.
"""
from __future__ import annotations

import argparse

import torch

from common import bench_config, compare, make_method, print_table, verdict

from odc_mini.augment import AugmentConfig, augment


def run(n: int, steps: int, repeats: int, device: torch.device, tiny: bool = False) -> dict:
    overrides = {}
    if tiny:
        overrides.update(num_clusters=10, min_cluster=5, eval_batch_size=200, batch_size=32)
    cfg, source = bench_config(device, n, **overrides)
    methods = {name: make_method(name, cfg, device) for name in ("supervised", "odc")}
    gen = torch.Generator(device=device).manual_seed(0)
    x_uint8 = methods["odc"].images[:cfg.batch_size]
    x = augment(x_uint8, AugmentConfig.of(cfg), gen).contiguous(memory_format=torch.channels_last)
    idx_gen = torch.Generator().manual_seed(1)

    def block(method):
        def go():
            for _ in range(steps):
                idx = torch.randint(n, (cfg.batch_size,), generator=idx_gen).to(device, non_blocking=True)
                method.train_step(x, idx)
        return go

    times = compare({name: block(m) for name, m in methods.items()}, repeats=repeats, warmup=1,
                    device=device)
    per_step = {name: t / steps for name, t in times.items()}
    ratio = per_step["odc"] / per_step["supervised"]
    return dict(device=device.type, arch=cfg.arch, batch_size=cfg.batch_size, num_images=n,
                data=source, supervised_s=per_step["supervised"], odc_s=per_step["odc"],
                ratio=ratio, supervised_img_s=cfg.batch_size / per_step["supervised"],
                odc_img_s=cfg.batch_size / per_step["odc"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=None, help="images in the memory (CPU 10k, GPU 50k)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="a few seconds, for tests")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    n = a.n or (50_000 if device.type == "cuda" else 10_000)
    steps, repeats = a.steps, a.repeats
    if a.tiny:
        n, steps, repeats = 400, 2, 2
    r = run(n, steps, repeats, device, tiny=a.tiny)
    goal = 1.05 if device.type == "cpu" else 1 / 0.9
    print_table(f"ODC step / supervised step ({r['arch']}, batch {r['batch_size']}, N={n:,} {r['data']} "
                f"images, {device.type}; median of {repeats} blocks of {steps} steps)",
                ["method", "ms/step", "images/s", "ratio to supervised"],
                [["supervised", f"{1e3 * r['supervised_s']:.1f}", f"{r['supervised_img_s']:,.0f}", "1.000"],
                 ["odc", f"{1e3 * r['odc_s']:.1f}", f"{r['odc_img_s']:,.0f}",
                  f"{r['ratio']:.3f}  ({verdict(r['ratio'], goal)})"]])
    return r


if __name__ == "__main__":
    main()
