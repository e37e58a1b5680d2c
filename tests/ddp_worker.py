"""One training run for the multi-process tests, alone or as one rank under torchrun:

    python tests/ddp_worker.py CONFIG_JSON OUT DUMP
    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py CONFIG_JSON OUT DUMP

Trains with ``out=OUT`` (rank 0 should write the run there), then every rank writes what it
holds (weights, memory, labels, loss weights, history) and how many checkpoint and run writes
it made to ``DUMP/rank<r>.pt`` for the test to compare.
"""
import json
import sys
from pathlib import Path

import torch

from odc_mini import Config, train
from odc_mini.run import distributed, runfolder
from odc_mini.run.runfolder import Run


def count_calls(owner, name: str, counter: list) -> None:
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        counter.append(name)
        return real(*args, **kwargs)
    setattr(owner, name, counted)


def main() -> None:
    config, out, dump = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    writes: list = []
    count_calls(runfolder, "write_checkpoint", writes)
    count_calls(Run, "save", writes)
    run = train(Config(**config), progress=False, out=out)
    held = {"model": run.model.state_dict(),
            "loss": torch.from_numpy(run.history.iteration("loss")),
            "change_ratio": torch.from_numpy(run.history.iteration("change_ratio")),
            "labels": torch.from_numpy(run.history.labels(run.history.num_epochs).astype("int64")),
            "processes": run.history.meta["processes"], "writes": writes}
    if run.memory is not None:
        held.update(features=run.memory.features, memory_labels=run.memory.labels,
                    centroids=run.memory.centroids, counts=run.memory.counts,
                    weights=run.memory.class_weights())
    dump.mkdir(parents=True, exist_ok=True)
    torch.save(held, dump / f"rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main()
