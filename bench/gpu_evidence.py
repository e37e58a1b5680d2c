"""One GPU call: the book's full-scale evidence, ODC and DeepCluster each at its own reference
settings with two seeds (ResNet-18, all 50,000 CIFAR-10 images, 50 epochs; the ``full-*``
experiments of ``odc_mini/experiments.py``).

    python bench/gpu_evidence.py --data-root .gpu_data --out OUT/evidence [--budget-s 530]
    python bench/gpu_evidence.py --tiny --out /tmp/evidence_tiny   # the same code on the CPU

Trains ``full-odc``, ``full-deepcluster-ref``, ``full-odc-seed1``, ``full-deepcluster-ref-seed1``
in that order (a call cut short still has one seed of each method), one after another, about
100-120 s each on an H200. Each run checkpoints into its own folder under ``--work`` (default
``runs/evidence``, git-ignored, so it stays on the machine between calls; with ``--tiny``,
``OUT/checkpoints``): the same command run again continues an unfinished run where it stopped and
reloads a finished one instead of training it again. A run is started only if the time left of
``--budget-s`` is at least 1.15 x the longest run so far (before any run has finished, an
estimate: 2.4 s per epoch, DeepCluster's 236 s for 100 epochs on an H200, plus 10 s of start-up,
so 130 s for 50 epochs); the runs it leaves out are named in results.json and on stdout.

Writes, as it goes (so a call stopped at its time limit keeps what it measured):

* ``OUT/results.json``: machine, versions, the plan, and per run its final kNN top-1, linear
  probe, NMI with the classes, ``relabelled``, ``drift`` and ``feature_drift`` (last epoch's;
  their means over the epochs too), the random-init kNN (row 0), epochs and wall seconds;
  rewritten atomically after every run, with the runs skipped for want of time;
* ``OUT/evidence.tar``: for each finished run a folder ``<experiment>/`` with its
  ``config.json`` and its history compacted as the experiment keeps it (the book's saved runs keep
  the label banks of the first and last epoch), rewritten after every run; weights and memory stay
  in ``--work``. One file, because a GPU call brings back at most 8;
* ``OUT/partial-history.npz``: the history of the run in progress, every 5 epochs.

Save each run into the package afterwards (its compact history and provenance):

    mkdir -p runs/evidence-records && tar -xf OUT/evidence.tar -C runs/evidence-records
    python -m odc_mini experiment full-odc --from runs/evidence-records/full-odc

and likewise for the other three names.
"""
from __future__ import annotations

import argparse
import tarfile
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gpu_run import ensure_data, write

import odc_mini
from odc_mini.run import runfolder
from odc_mini.study import experiments, saved
from odc_mini import TrainingDiverged, train

NAMES = ("full-odc", "full-deepcluster-ref", "full-odc-seed1", "full-deepcluster-ref-seed1")
# --tiny: the same four configs, small enough for a CPU in well under a minute.
TINY = dict(dataset="synthetic", arch="small_cnn", subset=600, epochs=2, num_clusters=10,
            min_cluster=5, batch_size=64, eval_batch_size=300, snapshot_size=100,
            eval_interval=1, device="cpu")
MARGIN = 1.15                # a run starts only with 1.15 x the longest run so far left
EPOCH_S, STARTUP_S = 2.4, 10.0   # the estimate of a first run: DeepCluster on an H200
STARTED_FROM = {"empty": "start", "unfinished": "checkpoint", "finished": "finished run"}
FINAL = ("knn_top1", "linear_top1", "nmi_classes", "relabelled", "drift", "feature_drift")


def first_run_estimate(epochs: int) -> float:
    """Seconds a full run of ``epochs`` epochs takes on an H200 before any was measured here."""
    return EPOCH_S * epochs + STARTUP_S


def summarize(history, call_s: float, resumed: str) -> dict:
    """The run's final figures (last recorded, non-NaN values) and its times."""
    out = {k: history.last(k) for k in FINAL}
    for k in ("drift", "feature_drift"):
        values = history.epoch(k)[1:]
        out[f"mean_{k}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    out.update(random_knn_top1=float(history.epoch("knn_top1")[0]), epochs=history.num_epochs,
               wall_seconds=history.last("wall_seconds"),
               train_seconds=history.last("train_seconds"),
               call_seconds=call_s, started_from=resumed)
    return out


def pack(records: Path, names, target: Path) -> None:
    """``target``: a tar of the finished runs' record folders, written atomically."""
    tmp = target.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name in names:
            if (records / name / "history.npz").is_file():
                tar.add(records / name, arcname=name)
    tmp.replace(target)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for results.json and the runs' records")
    p.add_argument("--data-root", default=None, help="folder with cifar10.npz (or its JPEG copy)")
    p.add_argument("--work", default=None, help="folder of the runs' checkpoints (default: "
                   "runs/evidence; with --tiny, OUT/checkpoints)")
    p.add_argument("--budget-s", type=float, default=530, help="seconds for everything")
    p.add_argument("--tiny", action="store_true", help="CPU check of the whole script: the same "
                   "four experiments on 600 synthetic images, small CNN, 2 epochs")
    a = p.parse_args(argv)
    start = time.perf_counter()
    if not a.budget_s > 0:
        raise SystemExit(f"error: --budget-s {a.budget_s:g} must be a positive number of seconds")
    out = Path(a.out)
    work = Path(a.work) if a.work else (out / "checkpoints" if a.tiny else Path("runs/evidence"))
    if a.tiny:
        overrides = dict(TINY)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA GPU here; gpu_evidence.py trains on one "
                             "(--tiny runs the same code on the CPU)")
        root = Path(a.data_root) if a.data_root else odc_mini.data.default_root()
        if not root.is_dir():
            raise SystemExit(f"error: --data-root {root} is not a folder")
        ensure_data(root)
        overrides = dict(data_root=str(root), device="cuda")

    # Every config and every checkpoint folder checked before any training.
    plan = []
    for name in NAMES:
        try:
            cfg = experiments.get(name).config(**overrides).validate()
            folder = work / name
            kind = runfolder.inspect_folder(folder).kind
            runfolder.check(folder, cfg, resume=kind in ("unfinished", "finished"))
        except ValueError as err:
            raise SystemExit(f"error: {name}: {err}") from None
        plan.append((name, cfg, folder))
    out.mkdir(parents=True, exist_ok=True)

    device = plan[0][1].device
    results = {"machine": torch.cuda.get_device_name(0) if device == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "odc_mini": odc_mini.__version__, "device": device,
               "command": " ".join([Path(sys.argv[0]).name]
                                   + (list(argv) if argv is not None else sys.argv[1:])),
               "budget_s": a.budget_s, "work": str(work), "order": list(NAMES),
               "first_run_estimate_s": first_run_estimate(plan[0][1].epochs), "margin": MARGIN,
               "runs": {}, "skipped": [], "skip_reason": None}
    write(out / "results.json", results)

    longest = None               # the longest whole run so far (seconds)
    for i, (name, cfg, folder) in enumerate(plan):
        kind = runfolder.inspect_folder(folder).kind
        need = MARGIN * (longest if longest is not None else first_run_estimate(cfg.epochs))
        left = a.budget_s - (time.perf_counter() - start)
        if kind != "finished" and left < need:     # a finished run only reloads: no time needed
            skipped = [n for n, _, _ in plan[i:]]
            basis = "the longest run so far" if longest is not None else "the first-run estimate"
            reason = (f"{left:.0f} s of the {a.budget_s:g} s budget left, under the {need:.0f} s "
                      f"a run needs ({MARGIN} x {basis})")
            results.update(skipped=skipped, skip_reason=reason,
                           elapsed_s=time.perf_counter() - start)
            write(out / "results.json", results)
            print(f"skipping {', '.join(skipped)}: {reason}", flush=True)
            break
        partial = out / "partial-history.npz"

        # Every 5th recorded epoch's history, so a run stopped at the call's time limit keeps
        # its curves (its checkpoint in --work keeps the rest).
        def keep(history, partial=partial):
            if history.num_epochs % 5 == 0:
                history.save(partial)

        t0 = time.perf_counter()
        try:
            run = train(cfg, progress=False, callback=keep, out=folder, resume="auto")
        except TrainingDiverged as err:
            results["runs"][name] = {"error": str(err), "call_seconds": time.perf_counter() - t0}
            results["elapsed_s"] = time.perf_counter() - start
            write(out / "results.json", results)
            print(f"{name}: {err}", flush=True)
            continue
        call_s = time.perf_counter() - t0
        record = work / "records" / name            # config.json and the compact history
        record.mkdir(parents=True, exist_ok=True)
        (record / "config.json").write_text(json.dumps(run.config.identity(), indent=1) + "\n")
        saved.compact_for(run.history, name).save(record / "history.npz")
        pack(work / "records", [n for n, _, _ in plan], out / "evidence.tar")
        partial.unlink(missing_ok=True)
        final = summarize(run.history, call_s, STARTED_FROM[kind])
        # a resumed run's whole wall time is in its history; a fresh one's is this call's
        longest = max(longest or 0.0, call_s, final["wall_seconds"]
                      if np.isfinite(final["wall_seconds"]) else 0.0)
        results["runs"][name] = final
        results["elapsed_s"] = time.perf_counter() - start
        write(out / "results.json", results)
        print(name, json.dumps(final), flush=True)
    return results


if __name__ == "__main__":
    main()
