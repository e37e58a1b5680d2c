"""Every CPU benchmark in one run, then one summary table of the ratios against their goals.

    python bench/all.py           # about 10 minutes on 2 cores
    python bench/all.py --tiny    # each benchmark in its tiny setting (a check, not a measurement)

Each benchmark prints its own table as it finishes; the summary repeats the ratios.
"""
from __future__ import annotations

import argparse

import torch

import augment_throughput
import deepcluster_epoch
import kmeans_vs_faiss
import memory_scaling
import step_overhead
from common import print_table, verdict


def main(argv=None) -> list[list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args(argv)
    extra = ["--tiny"] if a.tiny else []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []

    r = step_overhead.main(extra)
    goal = 1.05 if device == "cpu" else 1 / 0.9
    rows.append(["ODC step / supervised step", f"{r['ratio']:.3f}", verdict(r["ratio"], goal)])
    r = deepcluster_epoch.main(extra)
    rows.append(["DeepCluster epoch / supervised epoch", f"{r['ratio']:.3f}", verdict(r["ratio"], 1.35)])
    for k_row in kmeans_vs_faiss.main(extra):
        rows.append([f"clustering step / FAISS, K={k_row['k']} (inertia ratio "
                     f"{k_row['inertia_ratio']:.4f}; torch k-means {k_row['torch_ratio']:.1f}x)",
                     f"{k_row['time_ratio']:.3f}", verdict(k_row["time_ratio"], 1.0)])
    r = memory_scaling.main(extra)
    rows.append([f"memory work, N={r[-1]['n']:,} / N={r[0]['n']:,}", f"{r[-1]['ratio']:.3f}",
                 verdict(r[-1]["ratio"], 1.2)])
    r = augment_throughput.main(extra)
    for name, row in r["rows"].items():
        if "PIL" not in name:
            rows.append([f"augmentation {name} / PIL", f"{row['ratio']:.1f}",
                         verdict(row["ratio"], 20, higher_is_better=True)])
    print_table(f"Summary ({device}, {torch.get_num_threads()} threads)", ["benchmark", "ratio", "goal"], rows)
    return rows


if __name__ == "__main__":
    main()
