"""The training loop: a config in, a recorded run out.

    run = odc_mini.train(odc_mini.Config(method="odc", profile="quick"), out="runs/odc-quick")
    run.history.epoch("knn_top1")      # what the book draws
    run = odc_mini.load_run("runs/odc-quick")

The loop is the same for both methods; only ``method.epoch_indices`` (DeepCluster clusters there)
and ``method.train_step`` (ODC updates its memories there) differ. Per-iteration numbers stay on
the device until the end of the epoch, so a GPU never waits for the host in the hot loop.

With ``out``, the run is checkpointed after the initial clustering, at every epoch end and on
Ctrl-C (after the current step), and ``resume=True`` continues it bit for bit on the same kernel
path (``checkpoint.py``; ``kernels.py`` says what is deterministic where).
A loss or feature that stops being finite ends the run with a ``TrainingDiverged`` error naming
the iteration; the last checkpoint, from before it, is left as it was.
"""
from __future__ import annotations

import contextlib
import platform
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, checkpoint, distributed, kernels
from .augment import augment
from .config import Config
from .data import load_dataset
from .deepcluster import DeepCluster
from .history import History
from .method import Method, recalibrate_batchnorm
from .models import ClusterNet
from .odc import ODC
from .recorder import Recorder
from .run import FolderContent, Run, describe_position, inspect_folder, load_run

__all__ = ["METHOD_CLASSES", "Run", "TrainingDiverged", "build_model", "check_output", "load_run",
           "resolve_device", "seed_everything", "train", "train_epoch"]

METHOD_CLASSES = {"odc": ODC, "deepcluster": DeepCluster}


class TrainingDiverged(FloatingPointError):
    """The loss or the network's features stopped being finite; the message says where."""


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when there is one; asking for a CUDA device that is not there is a clear
    error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but this machine has no CUDA GPU; "
                             "use 'cpu' or 'auto'")
        index = device.index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was asked for but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s): cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, device: torch.device) -> ClusterNet:
    model = ClusterNet(cfg.arch, cfg.num_clusters, cfg.hid_dim, cfg.feat_dim, cfg.neck_bn_momentum,
                       cfg.sobel)
    if distributed.is_distributed():   # global-batch BN and dropout in training steps
        distributed.convert(model)
    # channels_last: faster convolutions on GPUs and, measured here, on the CPU too (1.7x).
    return model.to(device, memory_format=torch.channels_last)


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
    stopped (or loaded, if it had finished). ``config`` must equal the run's config, except for
    where the data lives (``data_root``, ``download``). ``resume="auto"`` resumes when ``out``
    holds a run and starts one otherwise: a notebook cell that can simply be run again.

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
    saved = _open_output(out, cfg, resume, device)
    distributed.barrier()                  # every rank has looked at ``out`` before rank 0 writes
    if isinstance(saved, Run):
        return saved                       # resume=True on a finished run: nothing left to do
    training = _Training(cfg, device, out, progress, callback)
    return training.run(saved)


def check_output(out: str | Path, cfg: Config, resume: bool) -> FolderContent:
    """Check that the folder ``out`` can take the run of ``cfg`` (empty or new), or, with
    ``resume``, that it holds a run of ``cfg`` to continue. One ``ValueError`` line otherwise.
    Reads no more than the config of what is there."""
    out = Path(out)
    content = inspect_folder(out)
    if content.kind == "foreign":
        raise ValueError(f"output folder {out} cannot take the run: {content.detail}; choose an "
                         "empty or new folder")
    if content.kind == "empty":
        if resume:
            raise ValueError(f"cannot resume {out}: it holds no run (no {checkpoint.FILE_NAME})")
        return content
    differences = checkpoint.config_differences(content.config, cfg.to_dict())
    if resume:
        if content.version is not None and content.version != __version__:
            raise ValueError(f"cannot resume {out}: its checkpoint was written by odc_mini "
                             f"{content.version} and this is {__version__}; resume with that "
                             "version or start a new run")
        if differences:
            raise ValueError(f"cannot resume {out} with a different config: " + "; ".join(differences))
        return content
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise ValueError(f"output folder {out} holds a different run ({shown}); choose another "
                         "folder")
    if content.kind == "unfinished":
        raise ValueError(f"output folder {out} holds an unfinished run of this config "
                         f"({content.detail}); continue it with resume=True (CLI: --resume) or "
                         "choose another folder")
    raise ValueError(f"output folder {out} already holds the finished run of this config; load it "
                     f"with odc_mini.load_run({str(out)!r}) or choose another folder")


def _open_output(out: Path | None, cfg: Config, resume: bool | str,
                 device: torch.device) -> dict | Run | None:
    """None (start afresh), the checkpoint to resume from, or the finished run to return."""
    if out is None:
        if resume:
            raise ValueError(f"resume={resume!r} needs out=<the folder of the run to continue>")
        return None
    if resume == "auto":
        resume = inspect_folder(out).kind in ("unfinished", "finished")
    content = check_output(out, cfg, resume)
    if content.kind == "empty":
        return None
    if content.kind == "finished":
        return load_run(out, str(device))
    state = checkpoint.read(out / checkpoint.FILE_NAME)
    checkpoint.check_resumable(state, cfg.to_dict(), out / checkpoint.FILE_NAME)
    return state


class _Interrupt:
    """Set by the first Ctrl-C; the loop stops after the current step and checkpoints."""
    requested = False


@contextlib.contextmanager
def _deferred_interrupt(enabled: bool):
    """While training with checkpoints, the first SIGINT (Ctrl-C, a notebook's "interrupt") or
    SIGTERM (``kill``, torchrun stopping its workers) only sets a flag, so the run stops between
    two steps with a consistent state to save; a second one acts at once. Only the main thread
    can own signal handlers."""
    flag = _Interrupt()
    signals = (signal.SIGINT, signal.SIGTERM)
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in signals}
    if any(h is None for h in previous.values()):   # set from C: we could not restore it
        yield flag
        return

    def handler(signum, frame):
        flag.requested = True
        for s in signals:
            signal.signal(s, previous[s])
        print(f"\nodc_mini: {signal.Signals(signum).name}; finishing this step and saving a "
              "checkpoint (signal again to stop at once)", file=sys.stderr, flush=True)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s in signals:
            signal.signal(s, previous[s])


class _Training:
    """One training run in progress: what a checkpoint saves and restores, and the loop."""

    def __init__(self, cfg: Config, device: torch.device, out: Path | None, progress: bool,
                 callback: Callable[[History], None] | None):
        self.cfg, self.device, self.out = cfg, device, out
        self.progress, self.callback = progress, callback
        seed_everything(cfg.seed)
        train_set, test_set = load_dataset(cfg.dataset, cfg.data_root, cfg.subset, cfg.seed, cfg.download)
        cfg.check_against_data(len(train_set))
        self.train_set, self.test_set = train_set.to(device), test_set.to(device)

        self.model = build_model(cfg, device)
        # Every generator the run draws from, by name (checkpoints save each one's state).
        self.generators = {
            "sampler": torch.Generator().manual_seed(cfg.seed),                 # order, k-means seeds
            "augment": torch.Generator(device=device).manual_seed(cfg.seed),
            "order": torch.Generator().manual_seed(cfg.seed),   # colour-op order: host side, no sync
        }
        self.method: Method = METHOD_CLASSES[cfg.method](self.model, self.train_set.images, cfg,
                                                         self.generators["sampler"])
        if distributed.is_distributed():
            self.method.distribute()
        if cfg.compile:
            self.method.compile()
        self.history = History({"config": cfg.to_dict(), "version": __version__,
                                "device": str(device), "machine": _machine_description(device),
                                **_software(device),
                                "processes": distributed.world_size(),
                                "classes": list(train_set.classes)})
        self.writes = out is not None and distributed.is_main()   # rank 0 alone writes
        self.recorder = Recorder(cfg, self.method, self.train_set, self.test_set, self.history)
        self.augment_cfg = cfg.augment_config()
        self.iterations = len(train_set) // cfg.batch_size   # the last partial batch is dropped
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
        if self.writes:               # files of a write that a kill cut short
            for stale in self.out.glob(f".{checkpoint.FILE_NAME}.*.tmp"):
                stale.unlink()
        with _deferred_interrupt(enabled=self.out is not None) as interrupt:
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
        run = Run(cfg, self.history, self.model, memory)
        if self.writes:
            run.save(self.out)
            (self.out / checkpoint.FILE_NAME).unlink(missing_ok=True)
        distributed.barrier()         # the run is saved when any rank returns
        return run

    def _initial_row(self) -> None:
        """Row 0: the random-init network, and the initial clustering (ODC)."""
        if self.cfg.recalibrate_bn:   # before the baseline too: the random network at its best
            recalibrate_batchnorm(self.model, self.train_set.images, self.cfg.eval_batch_size)
        row = self._guarded(0, lambda: self.recorder.measure_features(0, final=False))
        t0 = time.perf_counter()
        self._guarded(0, lambda: self.method.setup(progress=self.progress))
        self.train_seconds = row["train_seconds"] = time.perf_counter() - t0
        row.update(self.recorder.measure_clusters(0))
        row["wall_seconds"] = self.wall_seconds()
        self.history.add_epoch(epoch=0, **row)
        self._end_of_epoch()

    def _train_epoch(self, epoch: int, interrupt: _Interrupt, bar) -> None:
        cfg, iterations = self.cfg, self.iterations
        t0 = time.perf_counter()
        if self.partial is not None:          # resume the epoch a checkpoint stopped in
            part, self.partial = self.partial, None
            lr, order, start = part["lr"], part["order"].to(self.device), part["step"]
            rows = list(part["rows"].to(self.device).unbind(0))
        else:
            lr = cfg.lr * (0.4 if epoch > int(0.9 * cfg.epochs) else 1.0)  # reference: x0.4 late
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
        if epoch % cfg.eval_interval == 0 or final:
            row.update(self._guarded(epoch, lambda: self.recorder.measure_features(epoch, final)))
        row.update(self.recorder.measure_clusters(epoch))
        row["wall_seconds"] = self.wall_seconds()
        self.history.add_epoch(**row)
        self.epoch = epoch
        self._end_of_epoch()

    def _end_of_epoch(self) -> None:
        self._save_checkpoint()      # before the callback: an error there loses nothing
        if self.callback is not None:
            self.callback(self.history)

    def _stop_if(self, interrupt: _Interrupt) -> None:
        if distributed.any_rank(interrupt.requested, self.device):   # all ranks stop together
            state = {"config": self.cfg.to_dict(), "epoch": self.epoch, "partial": self.partial}
            raise KeyboardInterrupt(
                f"interrupted, {describe_position(state)}; the checkpoint is in {self.out}; continue "
                f"with train(config, out={str(self.out)!r}, resume=True) or "
                f"python -m odc_mini train --out {self.out} --resume")

    # ------------------------------------------------------------------ failures
    def _guarded(self, epoch: int, work: Callable):
        """Run feature extraction or clustering; non-finite features end the run clearly."""
        try:
            return work()
        except FloatingPointError as err:
            where = "the random-init network" if epoch == 0 else f"the network after epoch {epoch}"
            raise TrainingDiverged(f"training stopped: {where} gives non-finite features ({err}); "
                                   f"{self._what_is_kept()}; {self._advice()}") from None

    def _diverged(self, epoch: int, rows: list[torch.Tensor]) -> TrainingDiverged:
        steps = torch.stack(rows).cpu() if rows else torch.zeros(0, 4)
        bad = torch.nonzero(steps[:, 3] == 0).flatten()
        if len(bad) == 0:
            what, b = "the ODC memory received non-finite features", len(rows) - 1
        else:
            b = int(bad[0])
            loss = float(steps[b, 0])
            what = (f"the loss became {loss}" if not np.isfinite(loss)
                    else "the network's features became non-finite")
        iteration = (epoch - 1) * self.iterations + b + 1
        return TrainingDiverged(f"training stopped at iteration {iteration} (epoch {epoch}, step "
                                f"{b + 1} of {self.iterations}): {what}; {self._what_is_kept()}; "
                                f"{self._advice()}")

    def _what_is_kept(self) -> str:
        if self.out is None:
            return "nothing was saved (pass out=<folder> to keep checkpoints)"
        path = self.out / checkpoint.FILE_NAME
        if not path.is_file():
            return "nothing was saved"
        return f"{path} still holds the run as it was after epoch {self.epoch}, before the failure"

    def _advice(self) -> str:
        return (f"try a new run with a lower learning rate than lr={self.cfg.lr:g} "
                f"(e.g. lr={self.cfg.lr / 10:g}) or a larger batch size than {self.cfg.batch_size}")

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        if not self.writes:
            return
        history = np.frombuffer(self.history.to_bytes(compress=False), dtype=np.uint8)
        state = {
            "format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
            "version": __version__, "config": self.cfg.to_dict(),
            "epoch": self.epoch, "partial": checkpoint.to_cpu(self.partial),
            "model": checkpoint.to_cpu(self.model.state_dict()),
            "method": checkpoint.to_cpu(self.method.state_dict()),
            "recorder": checkpoint.to_cpu(self.recorder.state_dict()),
            "rng": checkpoint.capture_rng(self.generators),
            "history": torch.from_numpy(history.copy()),
            "clock": {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds()},
        }
        checkpoint.atomic_save(state, self.out / checkpoint.FILE_NAME)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        source = f"{self.out / checkpoint.FILE_NAME} (its history)"
        self.history = History.from_bytes(state["history"].numpy().tobytes(), source)
        self.recorder.history = self.history
        self.recorder.load_state_dict(state["recorder"])
        self.epoch, self.partial = state["epoch"], state["partial"]
        self.train_seconds = state["clock"]["train_seconds"]
        self.wall_before, self.started = state["clock"]["wall_seconds"], time.perf_counter()
        self.history.meta.setdefault("resumed", []).append(
            {"epoch": self.epoch, "step": self.partial["step"] if self.partial else 0})
        checkpoint.restore_rng(state["rng"], self.generators)


def train_epoch(method: Method, images: torch.Tensor, order: torch.Tensor, iterations: int,
                batch_size: int, augment_cfg, generators: tuple[torch.Generator, torch.Generator],
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


def _machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def _software(device: torch.device) -> dict:
    """What decides the run's last bits besides the code: torch, and on the CPU the processor
    and the kernel path (odc_mini.kernels); recorded with the run, read by its provenance."""
    out = {"torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cpu":
        out.update(cpu=kernels.cpu_model(), kernels=kernels.describe())
        if kernels.is_pinned():      # what the exact golden check compares machines by
            out["kernel_fingerprint"] = kernels.fingerprint()
    return out
