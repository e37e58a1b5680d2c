"""The training loop, the same for both methods::

    row 0: measure the random network, then method.setup()      # ODC's initial clustering
    for epoch in 1 .. E:
        order = method.start_epoch(epoch)                        # DeepCluster clusters here
        for each batch of order: augment, method.train_step(x, idx)
        record the epoch (loss, churn, kNN, NMI, drift, sizes ...) into the History

The public entry is ``odc_mini.train`` (``odc_mini.run.session``): it adds what a run's life
needs around this loop (a run folder, checkpoints and resume, stops, several processes) by
overriding the hooks marked below. Per-iteration numbers stay on the device until the end of the
epoch, so a GPU never waits for the host in the hot loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .augment import AugmentConfig, augment
from .config import Config
from .data import ImageSet
from .history import History
from .method import Method, Step
from .recorder import Recorder


def learning_rate(cfg, epoch: int) -> float:
    """The rate of epoch ``epoch`` (1..E): ``lr``, times ``lr_decay`` for the last 10% of the
    epochs (ODC's reference steps x0.4 at epoch 400 of 440; 1.0 is DeepCluster's constant rate)."""
    return cfg.lr * (cfg.lr_decay if epoch > int(0.9 * cfg.epochs) else 1.0)


def train_epoch(method: Method, images: torch.Tensor, order: torch.Tensor, iterations: int,
                batch_size: int, augment_cfg: AugmentConfig,
                generators: tuple[torch.Generator, torch.Generator],
                on_step: Callable[[int, Step], bool | None] | None = None, *,
                start: int = 0, rows: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The hot loop: steps ``start .. iterations-1`` over consecutive batches of ``order``
    (indices on the images' device). Appends one (4,) row per step (the fields of
    :class:`~odc_mini.method.Step`, still on the device) to ``rows`` and returns it: nothing here
    waits for a GPU unless ``on_step`` does.

    ``on_step(b, step)`` is called after step ``b``; if it returns True the loop stops there.
    ``rows`` may already hold earlier steps of the epoch; it keeps the steps taken when an
    exception ends the loop.
    """
    method.model.train()
    rows = [] if rows is None else rows
    for b in range(start, iterations):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x = augment(images[idx], augment_cfg, *generators)
        step = method.train_step(x, idx)          # x is channels-last, as the network is
        rows.append(step.row())
        if on_step is not None and on_step(b, step):
            break
    return rows


@dataclass
class Start:
    """What a run holds before its first step (``odc_mini.run.start.build`` makes it)."""
    config: Config
    device: torch.device
    train_set: ImageSet              # images (N, 3, H, W) uint8 and labels, on ``device``
    test_set: ImageSet
    model: torch.nn.Module
    method: Method
    generators: dict[str, torch.Generator]   # by name: "sampler", "augment", "order"


class Training:
    """One run in progress: row 0, then the epochs, each recorded into ``history``."""

    def __init__(self, start: Start, history: History, progress: bool = True,
                 callback: Callable[[History], None] | None = None):
        self.cfg, self.device, self.method = start.config, start.device, start.method
        self.train_set, self.model, self.generators = start.train_set, start.model, start.generators
        self.history, self.progress, self.callback = history, progress, callback
        self.recorder = Recorder(self.cfg, self.method, self.train_set, start.test_set, history)
        self.augment_cfg = AugmentConfig.of(self.cfg)
        # the last partial batch of an epoch is dropped
        self.iterations = len(self.train_set) // self.cfg.batch_size
        self.epoch = 0               # epochs recorded in the history (0: only the initial row)
        self.partial: dict | None = None   # an epoch stopped part-way (see ``run_epoch``)
        self.train_seconds = 0.0
        self.wall_before = 0.0       # wall seconds spent before this process (a resumed run)
        self.started = time.perf_counter()
        self.method.progress = progress

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def initial_row(self) -> None:
        """Row 0: the random-init network, and the initial clustering (ODC)."""
        row = self.guarded(0, lambda: self.recorder.measure_features(0, final=False))
        t0 = time.perf_counter()
        self.guarded(0, self.method.setup)
        self.train_seconds = row["train_seconds"] = time.perf_counter() - t0
        row.update(self.recorder.measure_clusters(0))
        self.history.add_epoch(epoch=0, **row, wall_seconds=self.wall_seconds())
        self.end_of_epoch()

    def run(self) -> None:
        """Every epoch after ``self.epoch`` (0 for a new run), with a progress bar."""
        done = self.epoch * self.iterations + (self.partial["step"] if self.partial else 0)
        bar = tqdm(total=self.cfg.epochs * self.iterations, initial=done, desc=self.cfg.method,
                   disable=not self.progress, unit="it", dynamic_ncols=True)
        try:
            for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
                self.run_epoch(epoch, bar)
                if self.partial is not None or self.should_stop():
                    return
        finally:
            bar.close()

    def run_epoch(self, epoch: int, bar) -> None:
        """Train epoch ``epoch`` and record it; an epoch that ``should_stop`` cut short is kept in
        ``self.partial`` (its order, learning rate and steps), to be continued later."""
        cfg, t0 = self.cfg, time.perf_counter()
        if self.partial is not None:          # continue the epoch that stopped part-way
            part, self.partial = self.partial, None
            lr, order, start = part["lr"], part["order"].to(self.device), part["step"]
            rows = list(part["rows"].to(self.device).unbind(0))
        else:
            lr, start, rows = learning_rate(cfg, epoch), 0, []
            # One host-to-device copy per epoch: a blocking copy per batch would wait for the GPU.
            order = self.guarded(epoch, lambda: self.method.start_epoch(epoch)).to(self.device)
        for group in self.method.optimizer.param_groups:
            group["lr"] = lr
        check_every_step = self.device.type != "cuda"   # free on the CPU; a sync on a GPU

        def on_step(b: int, step: Step) -> bool:
            bar.update()
            if not bar.disable and (b % 10 == 0 or b == self.iterations - 1):  # a sync per 10
                bar.set_postfix(epoch=epoch, loss=f"{float(step.loss):.3f}",
                                churn=f"{float(step.change_ratio):.3f}")
            if check_every_step and not bool(step.finite):
                return True                   # stop here: the check below reports it
            return self.should_stop()

        try:
            train_epoch(self.method, self.train_set.images, order, self.iterations, cfg.batch_size,
                        self.augment_cfg, (self.generators["augment"], self.generators["order"]),
                        on_step=on_step, start=start, rows=rows)
        except FloatingPointError:            # non-finite values reached the memory first
            raise self.diverged(epoch, rows) from None
        steps = torch.stack(rows)
        if not bool(steps[:, Step._fields.index("finite")].all()):   # once per epoch on a GPU
            raise self.diverged(epoch, rows)
        self.train_seconds += time.perf_counter() - t0
        if len(rows) < self.iterations:       # stopped: keep the epoch so far
            self.partial = {"epoch": epoch, "step": len(rows), "iterations": self.iterations,
                            "order": order, "rows": steps, "lr": lr}
            self.stopped_in_epoch()
            return
        self.record_epoch(epoch, dict(zip(Step._fields, steps.cpu().numpy().T)), lr)

    def record_epoch(self, epoch: int, steps: dict[str, np.ndarray], lr: float) -> None:
        cfg, iterations = self.cfg, self.iterations
        churn = steps["change_ratio"]
        self.history.add_iterations(loss=steps["loss"], acc=steps["acc"], change_ratio=churn,
                                    epoch=epoch - 1 + np.arange(1, iterations + 1) / iterations,
                                    lr=np.full(iterations, lr))
        final = epoch == cfg.epochs
        row = dict(epoch=epoch, loss=float(np.mean(steps["loss"])),
                   acc=float(np.mean(steps["acc"])),
                   change_ratio=float(np.nanmean(churn)) if not np.isnan(churn).all() else float("nan"),
                   lr=lr, train_seconds=self.train_seconds)
        evaluated = epoch % cfg.eval_interval == 0 or final
        if evaluated:
            row.update(self.guarded(epoch, lambda: self.recorder.measure_features(epoch, final)))
        row.update(self.guarded(epoch, lambda: self.recorder.measure_clusters(epoch, evaluated)))
        self.history.add_epoch(**row, wall_seconds=self.wall_seconds())
        self.epoch = epoch
        self.end_of_epoch()

    # ------------------------------------------------------------------ hooks
    def end_of_epoch(self) -> None:
        if self.callback is not None:
            self.callback(self.history)

    def should_stop(self) -> bool:
        """Asked after every step: stop the epoch here?"""
        return False

    def stopped_in_epoch(self) -> None:
        """Called when ``should_stop`` ended an epoch part-way (``self.partial`` holds it)."""

    def guarded(self, epoch: int, work: Callable):
        """Run feature extraction or clustering (the place to turn a FloatingPointError into a
        clear stop)."""
        return work()

    def diverged(self, epoch: int, rows: list[torch.Tensor]) -> Exception:
        return FloatingPointError(f"the loss or the features became NaN or inf in epoch {epoch}")
