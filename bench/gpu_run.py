"""One GPU slot, start to finish: throughput of supervised vs ODC vs DeepCluster training, then
ODC and DeepCluster with ResNet-18 on all of CIFAR-10 for as many epochs as the budget allows.

    python bench/gpu_run.py --data-root .gpu_data --out OUT [--budget-s 540] [--compile]
    python bench/gpu_run.py --tiny --out /tmp/gpu_tiny       # the same code on the CPU, in a minute

Writes, as it goes (so a run stopped at its time limit keeps what it measured):

* ``OUT/results.json``: machine, throughput (images/s of the real training loop, augmentation
  included), host synchronisations seen in the hot loop, the epochs chosen, and per method the
  final kNN / linear-probe / NMI figures, label churn, centroid drift and wall time;
* ``OUT/<method>/config.json`` and ``OUT/<method>/history.npz``: each run's record, which the
  book's full-scale chapter replays (weights and memory are left out: they are large).

``--data-root`` is a folder holding ``cifar10.npz``, or ``cifar10-jpeg.npz`` with the
``decode_jpeg.py`` that decodes it (copied from ``../shared/data/cifar10/`` into the git-ignored
``.gpu_data/``, the one folder a GPU slot is sent). Both methods get the same number of epochs:
the budget left after the throughput phase, split in two, divided by the slower method's
estimated epoch time.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from common import make_method, synchronize

import odc_mini
from odc_mini import Config, train
from odc_mini.data import load_dataset
from odc_mini.method import embed_images
from odc_mini.augment import AugmentConfig
from odc_mini.train import train_epoch

METHODS = ("supervised", "odc", "deepcluster")
FINAL_METRICS = ("knn_top1", "linear_top1", "nmi_classes", "ari_classes", "nmi_previous",
                 "change_ratio", "relabelled", "drift", "train_seconds", "wall_seconds")


def ensure_data(root: Path) -> Path:
    """``root/cifar10.npz``, decoded from the JPEG copy beside it when missing."""
    target = root / "cifar10.npz"
    if not target.is_file():
        jpeg, decoder = root / "cifar10-jpeg.npz", root / "decode_jpeg.py"
        if not (jpeg.is_file() and decoder.is_file()):
            raise SystemExit(f"error: {root} holds neither cifar10.npz nor cifar10-jpeg.npz with "
                             "decode_jpeg.py; copy them from ../shared/data/cifar10/")
        subprocess.run([sys.executable, str(decoder), str(jpeg), str(target)], check=True)
    return target


def count_host_syncs(method, images, cfg, steps: int) -> int | None:
    """Synchronising CUDA calls made by ``steps`` training iterations (None on the CPU)."""
    if images.device.type != "cuda":
        return None
    order = torch.randint(images.shape[0], (steps * cfg.batch_size,), device=images.device)
    gens = (torch.Generator(device=images.device).manual_seed(0), torch.Generator().manual_seed(0))
    train_epoch(method, images, order, 2, cfg.batch_size, AugmentConfig.of(cfg), gens)  # warm
    synchronize(images.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_epoch(method, images, order, steps, cfg.batch_size, AugmentConfig.of(cfg), gens)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def throughput(cfg: Config, train_set, device, steps: int, repeats: int) -> dict:
    """Images/s of the training loop (augmentation, step, memory) for each method, interleaved."""
    methods = {name: make_method(name, cfg, device) for name in METHODS}
    out = {}
    gens = (torch.Generator(device=device).manual_seed(0), torch.Generator().manual_seed(0))
    n = train_set.images.shape[0]
    times = {name: [] for name in METHODS}
    for r in range(repeats + 1):                 # round 0 warms up (and compiles)
        for name, method in methods.items():
            order = torch.randint(n, (steps * cfg.batch_size,), generator=gens[1]).to(device)
            synchronize(device)
            t0 = time.perf_counter()
            train_epoch(method, method.images, order, steps, cfg.batch_size, AugmentConfig.of(cfg), gens)
            synchronize(device)
            if r:
                times[name].append(time.perf_counter() - t0)
    for name in METHODS:
        t = sorted(times[name])[len(times[name]) // 2]
        out[f"{name}_img_s"] = steps * cfg.batch_size / t
    out["odc_over_supervised"] = out["odc_img_s"] / out["supervised_img_s"]
    out["deepcluster_over_supervised"] = out["deepcluster_img_s"] / out["supervised_img_s"]
    # Per-epoch extras: DeepCluster's clustering, and one evaluation's feature extraction.
    dc = methods["deepcluster"]
    synchronize(device)
    t0 = time.perf_counter()
    dc.start_epoch(2)
    synchronize(device)
    out["deepcluster_cluster_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_images(dc.model, dc.images, cfg.eval_batch_size)
    synchronize(device)
    out["extract_s"] = time.perf_counter() - t0
    out["host_syncs"] = {name: count_host_syncs(methods[name], methods[name].images, cfg, 20)
                         for name in ("odc", "deepcluster")}
    out["host_sync_steps"] = 20
    return out


def choose_epochs(tp: dict, n: int, seconds: float, max_epochs: int) -> tuple[int, int]:
    """Epochs both methods can afford in ``seconds`` each, and the evaluation interval."""
    evals = 11                                            # about 10 evaluations per run, + row 0
    eval_s = 1.5 * tp["extract_s"] + 1.0                  # train + test extraction, kNN, probe
    per_epoch = max(n / tp["odc_img_s"], n / tp["deepcluster_img_s"] + tp["deepcluster_cluster_s"])
    epochs = int((seconds - evals * eval_s - 2 * tp["extract_s"]) / (1.1 * per_epoch))
    epochs = max(1, min(max_epochs, epochs))
    return epochs, max(1, epochs // 10)


def write(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for results.json and the runs' histories")
    p.add_argument("--data-root", default=None, help="folder with cifar10.npz (or its JPEG copy)")
    p.add_argument("--budget-s", type=float, default=540, help="seconds for everything (9 min)")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--tiny", action="store_true",
                   help="CPU check of the whole script: small CNN, 1,000 images, 2 epochs")
    a = p.parse_args(argv)
    start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if a.compile and device.type != "cuda":
        raise SystemExit("error: --compile needs a CUDA GPU (torch.compile is off on the CPU)")
    root = Path(a.data_root) if a.data_root else odc_mini.data.default_root()
    ensure_data(root)

    if a.tiny:
        base = dict(profile="quick", subset=1000, num_clusters=20, min_cluster=5, batch_size=64,
                    eval_batch_size=500, snapshot_size=200)
        steps, repeats, max_epochs = 3, 1, min(a.max_epochs, 2)
    else:
        base = dict(profile="full")
        steps, repeats, max_epochs = 20, 3, a.max_epochs
    cfg = Config(data_root=str(root), device=device.type, compile=a.compile, **base)
    train_set, _ = load_dataset(cfg.dataset, cfg.data_root, cfg.subset, cfg.seed)
    n = len(train_set)

    results = {"machine": torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "odc_mini": odc_mini.__version__, "device": device.type,
               "arch": cfg.arch, "batch_size": cfg.batch_size, "num_images": n,
               "compile": a.compile, "budget_s": a.budget_s,
               "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}
    tp = throughput(cfg, train_set, device, steps, repeats)
    results["throughput"] = tp
    results["throughput_s"] = time.perf_counter() - start
    write(out / "results.json", results)
    print(json.dumps(tp, indent=2), flush=True)

    left = a.budget_s - (time.perf_counter() - start)
    epochs, eval_interval = choose_epochs(tp, n, left / 2, max_epochs)
    results.update(epochs=epochs, eval_interval=eval_interval, runs={})
    print(f"{left:.0f} s left: {epochs} epochs per method, evaluating every {eval_interval}", flush=True)
    for method in ("odc", "deepcluster"):
        run_cfg = Config(**{**cfg.to_dict(), "method": method, "epochs": epochs,
                            "eval_interval": eval_interval,
                            "snapshot_interval": None})   # None: recomputed from the epochs
        t0 = time.perf_counter()
        partial = out / method / "partial-history.npz"
        partial.parent.mkdir(parents=True, exist_ok=True)
        # Every 5th recorded epoch's history, so a run stopped at the slot's time limit keeps its
        # curves (not every epoch: compressing 100 epochs of labels takes about a second).
        def keep(history, partial=partial):
            if history.num_epochs % 5 == 0:
                history.save(partial)
        run = train(run_cfg, progress=False, callback=keep)
        partial.unlink(missing_ok=True)
        wall = time.perf_counter() - t0
        run.save(out / method, state=False)          # config.json and history.npz only
        h = run.history
        final = {k: float(h.epoch(k)[-1]) for k in FINAL_METRICS if k in h.epoch_keys}
        final.update(run_wall_s=wall, images_per_s=epochs * (n // cfg.batch_size) * cfg.batch_size
                     / max(final.get("train_seconds", wall), 1e-9), random_knn_top1=float(h.epoch("knn_top1")[0]))
        results["runs"][method] = final
        results["elapsed_s"] = time.perf_counter() - start
        write(out / "results.json", results)
        print(method, json.dumps(final), flush=True)
    return results


if __name__ == "__main__":
    main()
