"""Command line: ``python -m odc_mini train ...`` and ``python -m odc_mini compare ...``.

    python -m odc_mini train --method odc --profile quick --out runs/odc-quick
    python -m odc_mini compare --profile quick --out runs/compare-quick

Bad input is reported in one line, without a traceback, with exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from .config import ARCHS, DATASETS, METHODS, PROFILES, SAMPLERS, Config

# CLI flag -> Config field, for the settings people change most.
OVERRIDES = {
    "dataset": str, "data_root": str, "subset": int, "arch": str, "epochs": int,
    "batch_size": int, "lr": float, "num_clusters": int, "momentum": float, "min_cluster": int,
    "centroid_interval": int, "sampler": str, "pca_dim": int, "device": str, "seed": int,
}
CHOICES = {"dataset": DATASETS, "arch": ARCHS, "sampler": SAMPLERS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m odc_mini", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} "
                       "(default: $ODC_PROFILE, else quick)")
        p.add_argument("--out", required=True, help="folder the run(s) are saved in")
        p.add_argument("--download", action="store_true",
                       help="download CIFAR-10 with torchvision if it is not in the data folder")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the training forward pass (CUDA only)")
        for name, kind in OVERRIDES.items():
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                           help=f"one of {', '.join(CHOICES[name])}" if name in CHOICES else None)

    train_p = commands.add_parser("train", help="train one method and save its run")
    train_p.add_argument("--method", default="odc", help=f"one of {', '.join(METHODS)}")
    common(train_p)
    compare_p = commands.add_parser("compare", help="train both methods with the same settings "
                                    "and print a summary table")
    common(compare_p)
    return parser


def config_from_args(args: argparse.Namespace, method: str) -> Config:
    values = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    if args.profile is not None:
        values["profile"] = args.profile
    if args.compile:
        values["compile"] = True
    return Config(method=method, download=args.download, **values).validate()


def summary_table(runs: dict) -> str:
    """One row per method plus the random-init network (row 0 of the first run)."""
    def fmt(x, pct=True):
        return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else (
            f"{100 * x:5.1f}%" if pct else f"{x:6.3f}")
    header = f"{'method':<14}{'kNN top-1':>10}{'linear':>9}{'NMI cls':>9}{'NMI t-1,t':>11}{'churn':>8}{'wall s':>8}"
    lines = [header, "-" * len(header)]
    first = next(iter(runs.values())).history
    lines.append(f"{'random init':<14}{fmt(first.epoch('knn_top1')[0]):>10}"
                 f"{fmt(first.epoch('linear_top1')[0]):>9}{'-':>9}{'-':>11}{'-':>8}{'-':>8}")
    for name, run in runs.items():
        h = run.history
        lines.append(f"{name:<14}{fmt(h.last('knn_top1')):>10}{fmt(h.last('linear_top1')):>9}"
                     f"{fmt(h.last('nmi_classes'), False):>9}{fmt(h.last('nmi_previous'), False):>11}"
                     f"{fmt(float(np.nanmean(h.epoch('change_ratio')[1:])), False):>8}"
                     f"{h.last('wall_seconds'):>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import train  # after parsing, so --help stays fast
    try:
        methods = [args.method] if args.command == "train" else list(METHODS)
        configs = {m: config_from_args(args, m) for m in methods}   # validate all before training
        runs = {}
        for method, cfg in configs.items():
            run = train(cfg, progress=not args.no_progress)
            out = Path(args.out) if args.command == "train" else Path(args.out) / method
            run.save(out)
            runs[method] = run
            print(f"{method}: saved to {out}", flush=True)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
