"""Both golden checks across CPU kernel paths, side by side, and what pinning costs.

For each kernel path (environment variables set before torch loads, as another processor would
choose them) and each method, in fresh processes:

* the **seed-noise check**: golden seed 0 trained on that path, located in the spread of the
  other nine seeds (``odc_mini.study.seeds``); also whether its bits equal the saved run's;
* the **exact check**: the pinned run started from a process with that environment
  (``python -m odc_mini experiment golden-<method>``), compared bit for bit with the saved run;
* the time of each, and their ratio (pinned / own kernels).

    python bench/kernel_paths.py                         # every path this CPU has, both methods
    python bench/kernel_paths.py --paths own default --methods odc
    python bench/kernel_paths.py --tiny                  # the test suite's smoke run (synthetic)

Needs ``data/cifar10.npz`` (except ``--tiny``). About a minute per path and method on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import print_table  # noqa: E402

# What another processor's torch would pick, forced here. "own": nothing forced.
PATHS = {
    "own": {},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "avx2-all": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                 "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
}


TINY = dict(dataset="synthetic", subset=300, epochs=2, batch_size=50, num_clusters=6,
            min_cluster=5, pca_dim=16, eval_batch_size=300, linear_probe=False, device="cpu")


def fingerprint(history) -> str:
    """A short hash of every record but the timings: equal hashes, bit-identical runs."""
    import hashlib

    import numpy as np
    from odc_mini.study.saved import TIMINGS
    digest = hashlib.sha256()
    for key in sorted(history.epoch_keys):
        if key not in TIMINGS:
            digest.update(key.encode() + history.epoch(key).tobytes())
    for key in sorted(history.iteration_keys):
        digest.update(key.encode() + np.ascontiguousarray(history.iteration(key)).tobytes())
    return digest.hexdigest()[:12]


def child(method: str, data_root: str, tiny: bool) -> None:
    """Train golden seed 0 on this process's kernels; print one JSON line."""
    from odc_mini import Config, train
    from odc_mini.run import kernels
    from odc_mini.study import experiments, saved, seeds
    name = f"golden-{method}"
    if kernels.is_pinned():
        kernels.apply_in_process()
    if tiny:
        config = Config(method=method, **TINY)
    else:
        config = experiments.get(name).config(data_root=data_root, device="cpu")
    t0 = time.perf_counter()
    mine = train(config, progress=False).history
    seconds = time.perf_counter() - t0
    out = {"kernels": kernels.describe(), "seconds": seconds, "fingerprint": fingerprint(mine)}
    if not tiny:
        positions = seeds.locate(mine, seeds.spread_of(name, exclude=[config.seed]))
        worst = max(positions, key=lambda p: abs(p.deviation[p.worst]) / p.band[p.worst])
        out.update(within=all(p.within for p in positions), worst=worst.metric,
                   worst_share=float(abs(worst.deviation[worst.worst]) / worst.band[worst.worst]),
                   worst_z=float(worst.z[worst.worst]),
                   identical=not saved.differences(mine, saved.load(name).history))
    print(json.dumps(out))


def pinned_exact(method: str, env: dict, data_root: str, work: Path, tiny: bool) -> dict:
    """The exact check, started from a process with ``env``. ``tiny``: the pinned path on the
    synthetic set, reported by its fingerprint (equal across rows: the path ignores ``env``)."""
    from odc_mini.run import kernels
    from odc_mini.study import saved
    name = f"golden-{method}"
    if tiny:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", method, "--tiny"],
                              env=kernels.pinned_env(env), check=True, capture_output=True,
                              text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {"identical": None, "fingerprint": result["fingerprint"],
                "seconds": time.perf_counter() - t0}
    command = [sys.executable, "-m", "odc_mini", "experiment", name, "--work", str(work / "w"),
               "--saved-dir", str(work / "s"), "--data-root", data_root, "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    differ = saved.differences(saved.load(name, work / "s").history, saved.load(name).history)
    return {"identical": not differ, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help="kernel paths to try (default: every one this CPU can take)")
    parser.add_argument("--methods", nargs="+", default=["odc", "deepcluster"])
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--tiny", action="store_true", help="synthetic data, 2 epochs (smoke)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data_root, args.tiny)
        return
    import torch
    has = torch.backends.cpu.get_cpu_capability()
    paths = args.paths or [p for p in PATHS if not (p == "avx512" and has != "AVX512")]
    rows = []
    for path in paths:
        env = {k: v for k, v in os.environ.items() if k not in
               ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")}
        env.update(PATHS[path])
        for method in args.methods:
            command = [sys.executable, __file__, "--child", method, "--data-root", args.data_root]
            done = subprocess.run(command + (["--tiny"] if args.tiny else []), env=env,
                                  check=True, capture_output=True, text=True)
            own = json.loads(done.stdout.strip().splitlines()[-1])
            with tempfile.TemporaryDirectory() as work:
                exact = pinned_exact(method, env, args.data_root, Path(work), args.tiny)
            if args.tiny:      # no saved runs to hold them to: the runs' fingerprints
                noise, same, check = "–", own["fingerprint"], exact["fingerprint"]
            else:
                noise = (f"{'within' if own['within'] else 'OUTSIDE'} ({own['worst']} "
                         f"{own['worst_share']:.0%} of band, z = {own['worst_z']:+.1f})")
                same = "yes" if own["identical"] else "no"
                check = "bit-identical" if exact["identical"] else "DIFFERS"
            rows.append([path, method, noise, same, check, f"{own['seconds']:.0f}",
                         f"{exact['seconds']:.0f}", f"{exact['seconds'] / own['seconds']:.1f}",
                         own["kernels"]])
    print_table("Golden checks across kernel paths (seed 0 on each path; exact check pinned)",
                ["path", "method", "seed-noise check", "bits = saved", "pinned exact check",
                 "own s", "pinned s", "pinned/own", "kernels of the run"], rows)


if __name__ == "__main__":
    main()
