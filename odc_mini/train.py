"""The training loop: a config in, a recorded run out.

    run = odc_mini.train(odc_mini.Config(method="odc", profile="quick"), out="runs/odc-quick")
    run.history.epoch("knn_top1")      # what the book draws
    run = odc_mini.load_run("runs/odc-quick")

The loop is the same for both methods; only ``method.epoch_indices`` (DeepCluster clusters there)
and ``method.train_step`` (ODC updates its memories there) differ. Per-iteration numbers stay on
the device until the end of the epoch, so a GPU never waits for the host in the hot loop.

With ``out``, the run is checkpointed after the initial clustering, at every epoch end and on
Ctrl-C (after the current step), and ``resume=True`` continues it bit for bit on the same kernel
path (``kernels.py`` says what is deterministic where). What is not the loop lives elsewhere:
the start state in ``build.py``, the run folder (checks, checkpoints, resume, the finished run)
in ``runfolder.py``, and how a run stops early (signals, divergence) in ``stops.py``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, kernels, runfolder, stops
from .augment import AugmentConfig, augment
from .build import Start, build, resolve_device
from .config import Config
from .history import History
from .method import Method
from .odc import ODC
from .recorder import Recorder
from .runfolder import Run
from .stops import TrainingDiverged
from .version import __version__

__all__ = ["Run", "TrainingDiverged", "train", "train_epoch"]


def train(config: Config, progress: bool = True,
          callback: Callable[[History], None] | None = None,
          out: str | Path | None = None, resume: bool | str = False) -> Run:
    """Train ``config.method`` and record its dynamics. Returns a :class:`Run`.

    Row 0 of the per-epoch history is measured before any training step: it is the random-init
    network's kNN/linear accuracy (the baseline) and, for ODC, the initial clustering.
    ``callback(history)``, if given, is called after every recorded epoch, row 0 included (the
    book's live dashboard redraws there); it must not modify the history.

    ``out``: a folder for checkpoints and, at the end, the saved run (``Run.save``). It must be
    empty or new, unless ``resume=True``: then the run in it is continued exactly where it
    stopped (or loaded, if it had finished). ``config`` must have the run's identity
    (``Config.identity``: everything but where the data lives, the device and compile).
    ``resume="auto"`` resumes when ``out`` holds a run and starts one otherwise: a notebook cell
    that can simply be run again.

    Every setting, the device, the output folder and the data are checked before any training,
    and a bad one raises one ``ValueError`` line naming it.
    """
    cfg = config.validate()
    device = resolve_device(cfg.device)
    if cfg.compile and device.type != "cuda":
        raise ValueError(f"compile=True needs a CUDA device, but the run is on {device.type}; "
                         "torch.compile is off on the CPU (set compile=False)")
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume={resume!r}; accepted: True, False, 'auto'")
    distributed.init(device.type)          # under torchrun: join the other processes
    if distributed.is_distributed():
        world = distributed.world_size()
        if cfg.batch_size % world:
            raise ValueError(f"batch_size={cfg.batch_size} is not a multiple of the {world} "
                             "processes; each takes an equal share of every batch")
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank())
        progress = progress and distributed.is_main()
    out = Path(out) if out is not None else None
    saved = runfolder.open_run(out, cfg, resume, device)
    distributed.barrier()                  # every rank has looked at ``out`` before rank 0 writes
    if isinstance(saved, Run):
        return saved                       # resume=True on a finished run: nothing left to do
    start = build(cfg, device, recalibrate=saved is None)
    return _Training(start, out, progress, callback).run(saved)


class _Training:
    """One training run in progress: the loop, and what a checkpoint saves and restores."""

    def __init__(self, start: Start, out: Path | None, progress: bool,
                 callback: Callable[[History], None] | None):
        cfg, self.cfg, self.device, self.out = start.config, start.config, start.device, out
        self.progress, self.callback = progress, callback
        self.train_set, self.model = start.train_set, start.model
        self.method, self.generators = start.method, start.generators
        if distributed.is_distributed():
            self.method.distribute()
        if cfg.compile:
            self.method.compile()
        self.history = History({"config": cfg.to_dict(), "version": __version__,
                                "device": str(self.device), **kernels.machine(self.device),
                                "precision": self.method.precision,
                                "processes": distributed.world_size(),
                                "classes": list(self.train_set.classes)})
        self.writes = out is not None and distributed.is_main()   # rank 0 alone writes
        self.recorder = Recorder(cfg, self.method, self.train_set, start.test_set, self.history)
        self.augment_cfg = AugmentConfig.of(cfg)
        self.iterations = len(self.train_set) // cfg.batch_size  # the last partial batch is dropped
        self.epoch = 0               # epochs recorded in the history (0: only the initial row)
        self.partial: dict | None = None   # an epoch stopped part-way (see ``_train_epoch``)
        self.train_seconds = 0.0
        self.wall_before = 0.0       # wall seconds spent before this process (a resumed run)
        self.started = time.perf_counter()

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------ the loop
    def run(self, saved: dict | None) -> Run:
        cfg = self.cfg
        if self.writes:
            runfolder.remove_partial_writes(self.out)
        with stops.deferred_interrupt(enabled=self.out is not None) as interrupt:
            if saved is None:
                self._initial_row()
            else:
                self._restore(saved)
            self._stop_if(interrupt)
            done = self.epoch * self.iterations + (self.partial["step"] if self.partial else 0)
            bar = tqdm(total=cfg.epochs * self.iterations, initial=done, desc=cfg.method,
                       disable=not self.progress, unit="it", dynamic_ncols=True)
            try:
                for epoch in range(self.epoch + 1, cfg.epochs + 1):
                    self._train_epoch(epoch, interrupt, bar)
                    self._stop_if(interrupt)
            finally:
                bar.close()
        memory = self.method.memory if isinstance(self.method, ODC) else None
        run = Run(cfg, self.history, self.model, memory, provenance=runfolder.provenance(self.history))
        if self.writes:
            runfolder.finish(self.out, run)
        distributed.barrier()         # the run is saved when any rank returns
        return run

    def _initial_row(self) -> None:
        """Row 0: the random-init network, and the initial clustering (ODC)."""
        row = self._guarded(0, lambda: self.recorder.measure_features(0, final=False))
        t0 = time.perf_counter()
        self._guarded(0, lambda: self.method.setup(progress=self.progress))
        self.train_seconds = row["train_seconds"] = time.perf_counter() - t0
        row.update(self.recorder.measure_clusters(0))
        row["wall_seconds"] = self.wall_seconds()
        self.history.add_epoch(epoch=0, **row)
        self._end_of_epoch()

    def _train_epoch(self, epoch: int, interrupt: stops.Interrupt, bar) -> None:
        cfg, iterations = self.cfg, self.iterations
        t0 = time.perf_counter()
        if self.partial is not None:          # resume the epoch a checkpoint stopped in
            part, self.partial = self.partial, None
            lr, order, start = part["lr"], part["order"].to(self.device), part["step"]
            rows = list(part["rows"].to(self.device).unbind(0))
        else:
            lr = cfg.lr * (cfg.lr_decay if epoch > int(0.9 * cfg.epochs) else 1.0)
            # One host-to-device copy per epoch: a blocking copy per batch would wait for the GPU.
            order = self._guarded(epoch, lambda: self.method.epoch_indices(epoch)).to(self.device)
            start, rows = 0, []
        for group in self.method.optimizer.param_groups:
            group["lr"] = lr
        check_every_step = self.device.type != "cuda"   # free on the CPU; a sync on a GPU

        def on_step(b: int, step: torch.Tensor) -> bool:
            bar.update()
            if not bar.disable and (b % 10 == 0 or b == iterations - 1):  # a sync per 10 steps
                loss, _, churn, _ = step.tolist()
                bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", churn=f"{churn:.3f}")
            if check_every_step and not bool(step[3]):
                raise self._diverged(epoch, rows)
            return interrupt.requested

        try:
            train_epoch(self.method, self.train_set.images, order, iterations, cfg.batch_size,
                        self.augment_cfg, (self.generators["augment"], self.generators["order"]),
                        on_step=on_step, start=start, rows=rows)
        except TrainingDiverged:
            raise
        except FloatingPointError:            # non-finite values reached the memory first
            raise self._diverged(epoch, rows) from None
        steps = torch.stack(rows)
        if not bool(steps[:, 3].all()):       # once per epoch on a GPU
            raise self._diverged(epoch, rows)
        self.train_seconds += time.perf_counter() - t0
        if len(rows) < iterations:            # interrupted: save the epoch so far
            self.partial = {"epoch": epoch, "step": len(rows), "iterations": iterations,
                            "order": order, "rows": steps, "lr": lr}
            self._save_checkpoint()
            return
        self._record_epoch(epoch, steps.cpu().numpy(), lr)

    def _record_epoch(self, epoch: int, steps: np.ndarray, lr: float) -> None:
        cfg, iterations = self.cfg, self.iterations
        self.history.add_iterations(loss=steps[:, 0], acc=steps[:, 1], change_ratio=steps[:, 2],
                                    epoch=epoch - 1 + np.arange(1, iterations + 1) / iterations,
                                    lr=np.full(iterations, lr))
        final = epoch == cfg.epochs
        churn = steps[:, 2]
        row = dict(epoch=epoch, loss=float(np.mean(steps[:, 0])), acc=float(np.mean(steps[:, 1])),
                   change_ratio=float(np.nanmean(churn)) if not np.isnan(churn).all() else float("nan"),
                   lr=lr, train_seconds=self.train_seconds)
        evaluated = epoch % cfg.eval_interval == 0 or final
        if evaluated:
            row.update(self._guarded(epoch, lambda: self.recorder.measure_features(epoch, final)))
        row.update(self._guarded(epoch, lambda: self.recorder.measure_clusters(epoch, evaluated)))
        row["wall_seconds"] = self.wall_seconds()
        self.history.add_epoch(**row)
        self.epoch = epoch
        self._end_of_epoch()

    def _end_of_epoch(self) -> None:
        self._save_checkpoint()      # before the callback: an error there loses nothing
        if self.callback is not None:
            self.callback(self.history)

    def _stop_if(self, interrupt: stops.Interrupt) -> None:
        if distributed.any_rank(interrupt.requested, self.device):   # all ranks stop together
            state = {"config": self.cfg.to_dict(), "epoch": self.epoch, "partial": self.partial}
            raise stops.interrupted(runfolder.describe_position(state), self.out)

    # ------------------------------------------------------------------ failures
    def _kept(self) -> str:
        return stops.what_is_kept(None if self.out is None else self.out / runfolder.CHECKPOINT,
                                  self.epoch)

    def _guarded(self, epoch: int, work: Callable):
        """Run feature extraction or clustering; non-finite features end the run clearly."""
        try:
            return work()
        except FloatingPointError as err:
            raise stops.nonfinite_features(epoch, err, self._kept(), self.cfg) from None

    def _diverged(self, epoch: int, rows: list[torch.Tensor]) -> TrainingDiverged:
        return stops.diverged(epoch, rows, self.iterations, self._kept(), self.cfg)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        if not self.writes:
            return
        history = np.frombuffer(self.history.to_bytes(compress=False), dtype=np.uint8)
        to_cpu = runfolder.to_cpu
        runfolder.write_checkpoint(self.out, {
            "config": self.cfg.to_dict(), "device_type": self.device.type,
            "epoch": self.epoch, "partial": to_cpu(self.partial),
            "model": to_cpu(self.model.state_dict()),
            "method": to_cpu(self.method.state_dict()),
            "recorder": to_cpu(self.recorder.state_dict()),
            "rng": runfolder.capture_rng(self.generators),
            "history": torch.from_numpy(history.copy()),
            "clock": {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds()},
        })

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        source = f"{self.out / runfolder.CHECKPOINT} (its history)"
        self.history = History.from_bytes(state["history"].numpy().tobytes(), source)
        self.recorder.history = self.history
        self.recorder.load_state_dict(state["recorder"])
        self.epoch, self.partial = state["epoch"], state["partial"]
        self.train_seconds = state["clock"]["train_seconds"]
        self.wall_before, self.started = state["clock"]["wall_seconds"], time.perf_counter()
        self.history.meta.setdefault("resumed", []).append(
            {"epoch": self.epoch, "step": self.partial["step"] if self.partial else 0})
        runfolder.restore_rng(state["rng"], self.generators)


def train_epoch(method: Method, images: torch.Tensor, order: torch.Tensor, iterations: int,
                batch_size: int, augment_cfg: AugmentConfig,
                generators: tuple[torch.Generator, torch.Generator],
                on_step: Callable[[int, torch.Tensor], bool | None] | None = None, *,
                start: int = 0, rows: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The hot loop: steps ``start .. iterations-1`` over consecutive batches of ``order``
    (indices on the images' device). Returns the (steps, 4) tensor of loss, pseudo-label
    accuracy, change ratio and "all finite" (1.0 or 0.0), still on the device: nothing here
    waits for a GPU unless ``on_step`` does.

    ``on_step(b, row)`` is called after step ``b``; if it returns True the loop stops there.
    ``rows``, if given, is the list each step's row is appended to (rows of earlier steps of
    the epoch may already be in it): it keeps the steps taken when an exception ends the loop.
    """
    method.model.train()
    rows = [] if rows is None else rows
    world, rank = distributed.world_size(), distributed.rank()
    share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    for b in range(start, iterations):
        idx = order[b * batch_size:(b + 1) * batch_size]
        # The whole global batch is augmented on every rank (same generators, same draws as one
        # process); each rank keeps its share. One process: the share is the batch.
        x = augment(images[idx], augment_cfg, *generators)[share]
        with distributed.sharded_step():
            out = method.train_step(x.contiguous(memory_format=torch.channels_last), idx[share])
        row = torch.stack([out["loss"], out["acc"], out["change_ratio"],
                           out["finite"].to(out["loss"].dtype)])
        if world > 1:   # the global batch's numbers, the same on every rank
            row = distributed.sum_(row) / world
            row[3] = (row[3] == 1).to(row.dtype)
        rows.append(row)
        stop = on_step is not None and bool(on_step(b, row))
        if world > 1:
            stop = distributed.any_rank(stop, row.device)
        if stop:
            break
    return torch.stack(rows)
