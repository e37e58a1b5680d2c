"""How a run stops before its end: on a signal, after the current step and with a checkpoint,
or when its numbers stop being finite, with one message saying where and what is kept.

* The first SIGINT (Ctrl-C, a notebook's "interrupt") or SIGTERM (``kill``, torchrun stopping
  its workers) while a run trains with checkpoints only sets a flag (:func:`deferred_interrupt`);
  the loop finishes the step, saves a checkpoint and raises ``KeyboardInterrupt`` with the
  command that resumes it. A second signal acts at once.
* A loss or feature that stops being finite raises :class:`TrainingDiverged`, naming the
  iteration, what became non-finite, the checkpoint left from before, and what to try.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import torch

from ..config import Config
from ..method import Step


class TrainingDiverged(FloatingPointError):
    """The loss or the network's features stopped being finite; the message says where."""


class Interrupt:
    """Set by the first signal; the loop stops after the current step and checkpoints."""
    requested = False


@contextlib.contextmanager
def deferred_interrupt(enabled: bool):
    """Within the block, the first SIGINT or SIGTERM only sets the yielded flag's ``requested``;
    the previous handlers come back after it (and after the first signal). Only the main thread
    can own signal handlers; elsewhere, or when ``enabled`` is False, signals act as usual."""
    flag = Interrupt()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}
    if (not enabled or threading.current_thread() is not threading.main_thread()
            or any(h is None for h in previous.values())):   # None: set from C, not restorable
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


def interrupted(position: str, out: Path) -> KeyboardInterrupt:
    """The exception a run interrupted at ``position`` ("stopped after epoch 3 of 10") raises."""
    return KeyboardInterrupt(
        f"interrupted, {position}; the checkpoint is in {out}; continue with "
        f"train(config, out={str(out)!r}, resume=True) or "
        f"python -m odc_mini train --out {out} --resume")


def nonfinite_features(epoch: int, err: Exception, kept: str, cfg: Config) -> TrainingDiverged:
    """Feature extraction or clustering met NaN or inf."""
    where = "the random-init network" if epoch == 0 else f"the network after epoch {epoch}"
    return TrainingDiverged(f"training stopped: {where} gives non-finite features ({err}); "
                            f"{kept}; {advice(cfg)}")


def diverged(epoch: int, rows: list[torch.Tensor], iterations: int, kept: str,
             cfg: Config) -> TrainingDiverged:
    """A training step's loss or features became non-finite. ``rows``: the epoch's steps so far,
    each the fields of a :class:`~odc_mini.method.Step`."""
    steps = torch.stack(rows).cpu() if rows else torch.zeros(0, len(Step._fields))
    bad = torch.nonzero(steps[:, Step._fields.index("finite")] == 0).flatten()
    if len(bad) == 0:
        what, b = "the ODC memory received non-finite features", len(rows) - 1
    else:
        b = int(bad[0])
        loss = steps[b, Step._fields.index("loss")]
        what = (f"the loss became {float(loss)}" if not loss.isfinite()
                else "the network's features became non-finite")
    iteration = (epoch - 1) * iterations + b + 1
    return TrainingDiverged(f"training stopped at iteration {iteration} (epoch {epoch}, step "
                            f"{b + 1} of {iterations}): {what}; {kept}; {advice(cfg)}")


def what_is_kept(checkpoint: Path | None, epoch: int) -> str:
    """What a failed run leaves: its last checkpoint (``checkpoint``: None without a folder)."""
    if checkpoint is None:
        return "nothing was saved (pass out=<folder> to keep checkpoints)"
    if not checkpoint.is_file():
        return "nothing was saved"
    return f"{checkpoint} still holds the run as it was after epoch {epoch}, before the failure"


def advice(cfg: Config) -> str:
    return (f"try a new run with a lower learning rate than lr={cfg.lr:g} "
            f"(e.g. lr={cfg.lr / 10:g}) or a larger batch size than {cfg.batch_size}")
