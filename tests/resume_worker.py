"""A training process for the resume tests, which kill it for real.

    python tests/resume_worker.py CONFIG_JSON OUT [--resume] [--signal KILL|INT --at STEP]
                                                  [--kill-in-save N]

With ``--signal``, the process sends itself that signal in the middle of its STEP-th training
step (counted from 1 in this process): after the SGD step, before the ODC memory is updated.
SIGKILL ends it on the spot; SIGINT asks the loop to checkpoint after the step and stop
(exit status 130). With ``--kill-in-save N``, the N-th checkpoint write stops half-way through
its bytes with a SIGKILL.
"""
import argparse
import io
import json
import os
import signal
import sys

import torch

from odc_mini import Config, train
from odc_mini.method import Method


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--signal", choices=("KILL", "INT"))
    parser.add_argument("--at", type=int, default=0)
    parser.add_argument("--kill-in-save", type=int, default=0)
    args = parser.parse_args()
    if args.kill_in_save:
        real_save, saves = torch.save, [0]

        def save(obj, f, *a, **k):
            saves[0] += 1
            if saves[0] != args.kill_in_save:
                return real_save(obj, f, *a, **k)
            buffer = io.BytesIO()
            real_save(obj, buffer, *a, **k)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save
    if args.signal:
        real_step, calls = Method.sgd_step, [0]

        def sgd_step(self, *a, **k):
            out = real_step(self, *a, **k)
            calls[0] += 1
            if calls[0] == args.at:
                os.kill(os.getpid(), getattr(signal, "SIG" + args.signal))
            return out
        Method.sgd_step = sgd_step
    try:
        train(Config(**json.loads(args.config)), progress=False, out=args.out, resume=args.resume)
    except KeyboardInterrupt as err:
        print(err, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
