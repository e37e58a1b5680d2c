"""The search for a quick profile that shows learning on a 2-core CPU in minutes.

Goal (issue 17): ODC's kNN top-1 gain over the random-init network (row 0 of the same run)
>= +5 points as the mean of 3 seeds and >= +3 in every seed, in <= 5 minutes of wall time per
method (training and every evaluation the run does) on 2 cores.

Each candidate is one ODC run (seed 0 unless it says otherwise) trained longer than the goal's
budget and evaluated every few epochs, so one run gives a whole gain-versus-minutes curve. Results
are appended to a JSON file as each run ends (a stopped search keeps what it measured) and a
candidate already in the file is not trained again.

    python bench/quick_profile_search.py                 # every candidate, then the table
    python bench/quick_profile_search.py --only lr0.2    # some of them
    python bench/quick_profile_search.py --table         # the table of what is in the file
    python bench/quick_profile_search.py --tiny --out /tmp/search.json   # a smoke test

Nothing else may run on the machine meanwhile: the minutes are wall time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from odc_mini import Config, train  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "quick_profile_search.json"
BUDGET_MIN = 5.0

# name -> (Config overrides on top of the quick profile, what it tries). Evaluated every
# ``eval_interval`` epochs for ``epochs`` epochs: about 6 minutes, a little past the budget.
CANDIDATES: dict[str, tuple[dict, str]] = {
    "base-0.1.0": (dict(epochs=30, eval_interval=3),
                   "the quick profile as it was (10,000 images, Sobel, K = 100, lr 0.1, batch 128), "
                   "longer"),
    "lr0.2": (dict(epochs=30, eval_interval=3, lr=0.2), "twice the learning rate"),
    "lr0.4": (dict(epochs=30, eval_interval=3, lr=0.4), "four times the learning rate"),
    "crop0.5": (dict(epochs=30, eval_interval=3, crop_min_scale=0.5),
                "milder crops (at least half the image)"),
    "k30": (dict(epochs=30, eval_interval=3, num_clusters=30, min_cluster=50),
            "K = 30 (min_cluster 50, the same share of N/K)"),
    "subset5k": (dict(epochs=60, eval_interval=6, subset=5000, min_cluster=8),
                 "5,000 images, twice the epochs"),
    "batch64": (dict(epochs=30, eval_interval=3, batch_size=64, lr=0.05),
                "batch 64 at lr 0.05 (twice the steps)"),
}


def run_candidate(name: str, overrides: dict, tiny: bool) -> dict:
    settings = dict(method="odc", profile="quick", **overrides)
    if tiny:
        settings.update(dataset="synthetic", subset=600, epochs=2, eval_interval=1,
                        num_clusters=10, min_cluster=5, snapshot_size=100, batch_size=64)
    cfg = Config(**settings)
    t0 = time.perf_counter()
    run = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    h = run.history
    knn = h.epoch("knn_top1")
    minutes = h.epoch("wall_seconds") / 60
    measured = ~np.isnan(knn)
    curve = [(int(e), round(float(m), 2), round(100 * float(k), 2))
             for e, m, k in zip(np.flatnonzero(measured), minutes[measured], knn[measured])]
    return {"name": name, "settings": overrides, "seed": cfg.seed, "wall_minutes": round(wall / 60, 2),
            "curve": curve, "linear": [round(100 * float(v), 2) for v in h.epoch("linear_top1")
                                       if not np.isnan(v)]}


def gain_within(result: dict, budget: float = BUDGET_MIN) -> tuple[float, float, int]:
    """(gain in points, minutes, epoch) at the last evaluation within ``budget`` minutes."""
    start = result["curve"][0][2]
    inside = [c for c in result["curve"] if c[1] <= budget] or result["curve"][:1]
    epoch, minutes, knn = inside[-1]
    return knn - start, minutes, epoch


def table(results: list[dict]) -> None:
    print(f"\n{'candidate':14s} {'seed':>4s} {'random':>7s} {'best':>7s}  gain @ <= {BUDGET_MIN:g} min"
          f"   curve (minutes: gain)")
    for r in results:
        gain, minutes, epoch = gain_within(r)
        start = r["curve"][0][2]
        curve = "  ".join(f"{m:.1f}:{k - start:+.1f}" for _, m, k in r["curve"][1:])
        print(f"{r['name']:14s} {r['seed']:4d} {start:7.1f} {max(c[2] for c in r['curve']):7.1f}  "
              f"{gain:+5.1f} (ep {epoch}, {minutes:.1f} min)   {curve}"
              + (f"\n{'':14s} note: {r['note']}" if r.get("note") else ""))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--table", action="store_true", help="print the table of the file and stop")
    p.add_argument("--tiny", action="store_true", help="synthetic images, seconds per candidate")
    args = p.parse_args(argv)
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {', '.join(unknown)}; accepted: {', '.join(CANDIDATES)}")
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    if not args.table:
        for name in names:
            if any(r["name"] == name for r in results):
                continue
            print(f"training {name}: {CANDIDATES[name][1]}", flush=True)
            results.append(run_candidate(name, CANDIDATES[name][0], args.tiny))
            args.out.write_text(json.dumps(results, indent=1) + "\n")
            table(results[-1:])
    table(results)


if __name__ == "__main__":
    main()
