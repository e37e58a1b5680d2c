"""``odc_mini.train``: the training loop (``odc_mini/train.py``) with what a run's life needs
around it.

    run = odc_mini.train(odc_mini.Config(method="odc", profile="quick"), out="runs/odc-quick")
    run.history.epoch("knn_top1")      # what the book draws
    run = odc_mini.load_run("runs/odc-quick")

With ``out``, the run is checkpointed after the initial clustering, at every epoch end and on
Ctrl-C (after the current step), and ``resume=True`` continues it bit for bit on the same kernel
path (``kernels.py`` says what is deterministic where). The run folder (checks, checkpoints,
the finished run) is ``runfolder.py``; how a run stops early (signals, divergence) is
``stops.py``; several processes are ``distributed.py``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed, kernels, runfolder, stops
from .precision import resolve_precision
from .runfolder import Run
from .start import build, resolve_device
from .stops import TrainingDiverged
from ..config import Config
from ..history import History
from ..train import Start, Training
from ..version import __version__

__all__ = ["Run", "TrainingDiverged", "train"]


def train(config: Config, progress: bool = True, callback: Callable[[History], None] | None = None,
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
    kept = saved.get("precision") if saved is not None else None   # a resumed run keeps its own
    if kept is not None and cfg.precision not in ("auto", kept):
        raise ValueError(f"the run in {out} trains in {kept}; precision={cfg.precision!r} would "
                         "change it mid-run (use auto)")
    start = build(cfg, device, recalibrate=saved is None, precision=kept)
    return Session(start, out, progress, callback).run_all(saved)


class Session(Training):
    """The loop with a run folder: checkpoints, resume, stops, several processes."""

    def __init__(self, start: Start, out: Path | None, progress: bool,
                 callback: Callable[[History], None] | None):
        cfg, device = start.config, start.device
        if cfg.compile:
            compiled = torch.compile(start.method.forward_model)
            object.__setattr__(start.method, "forward_model", compiled)
        history = History({"config": cfg.to_dict(), "version": __version__, "device": str(device),
                           **kernels.machine(device),
                           "precision": resolve_precision(cfg.precision, device),
                           "processes": distributed.world_size(),
                           "classes": list(start.train_set.classes)})
        super().__init__(start, history, progress, callback)
        self.out = out
        self.writes = out is not None and distributed.is_main()   # rank 0 alone writes
        self.interrupt: stops.Interrupt | None = None

    def run_all(self, saved: dict | None) -> Run:
        if self.writes:
            runfolder.remove_partial_writes(self.out)
        with stops.deferred_interrupt(enabled=self.out is not None) as self.interrupt:
            if saved is None:
                self.initial_row()
            else:
                self._restore(saved)
            self._stop_if_asked()
            self.run()
            self._stop_if_asked()
        memory = getattr(self.method, "memory", None)     # ODC's memories; DeepCluster has none
        run = Run(self.cfg, self.history, self.model, memory,
                  provenance=runfolder.provenance(self.history))
        if self.writes:
            runfolder.finish(self.out, run)
        distributed.barrier()         # the run is saved when any rank returns
        return run

    # ------------------------------------------------------------------ the loop's hooks
    def end_of_epoch(self) -> None:
        self._save_checkpoint()      # before the callback: an error there loses nothing
        super().end_of_epoch()

    def should_stop(self) -> bool:
        # several ranks stop together
        return distributed.any_rank(self.interrupt.requested, self.device)

    def stopped_in_epoch(self) -> None:
        self._save_checkpoint()

    def guarded(self, epoch: int, work: Callable):
        try:
            return work()
        except FloatingPointError as err:
            raise stops.nonfinite_features(epoch, err, self._kept(), self.cfg) from None

    def diverged(self, epoch: int, rows: list[torch.Tensor]) -> TrainingDiverged:
        return stops.diverged(epoch, rows, self.iterations, self._kept(), self.cfg)

    # ------------------------------------------------------------------ stops
    def _stop_if_asked(self) -> None:
        if self.should_stop():
            state = {"config": self.cfg.to_dict(), "epoch": self.epoch, "partial": self.partial}
            raise stops.interrupted(runfolder.describe_position(state), self.out)

    def _kept(self) -> str:
        return stops.what_is_kept(None if self.out is None else self.out / runfolder.CHECKPOINT,
                                  self.epoch)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        if not self.writes:
            return
        history = np.frombuffer(self.history.to_bytes(compress=False), dtype=np.uint8)
        runfolder.write_checkpoint(self.out, {
            "config": self.cfg.to_dict(), "device_type": self.device.type,
            "precision": self.history.meta["precision"],
            "epoch": self.epoch, "partial": runfolder.to_cpu(self.partial),
            "method": runfolder.to_cpu(self.method.state_dict()),   # network, memories, optimiser
            "recorder": runfolder.to_cpu(self.recorder.state_dict()),
            "rng": runfolder.capture_rng(self.generators),
            "history": torch.from_numpy(history.copy()),
            "clock": {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds()},
        })

    def _restore(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        source = f"{self.out / runfolder.CHECKPOINT} (its history)"
        self.history = History.from_bytes(state["history"].numpy().tobytes(), source)
        self.recorder.history = self.history
        self.recorder.load_state_dict(state["recorder"])
        self.epoch, self.partial = state["epoch"], state["partial"]
        self.train_seconds = state["clock"]["train_seconds"]
        self.wall_before = state["clock"]["wall_seconds"]
        self.started = time.perf_counter()
        self.history.meta.setdefault("resumed", []).append(
            {"epoch": self.epoch, "step": self.partial["step"] if self.partial else 0})
        runfolder.restore_rng(state["rng"], self.generators)
