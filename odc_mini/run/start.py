"""The start of a run: everything that exists before its first training step, built in one call
that the training loop, the benchmarks and the book's chapters share.

    start = build(Config(method="odc", profile="quick"))
    start.method.setup()          # the initial clustering (ODC); DeepCluster clusters each epoch

In this order, from the config's seed: the data (a stratified subset, on the training device),
the network, every random-number generator the run draws from, BatchNorm statistics
recalibrated on the data, and the method around the network. A chapter that builds its start
this way holds the very network and memory the training loop would.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..config import Config
from ..data import load_dataset
from ..coke import CoKe
from ..deepcluster import DeepCluster
from ..method import recalibrate_batchnorm
from ..models import network_of
from ..odc import ODC
from ..train import Start
from .precision import passes

METHOD_CLASSES = {"odc": ODC, "deepcluster": DeepCluster, "coke": CoKe}


def method_class(name: str) -> type:
    """The class of method ``name``; on several processes, its data-parallel variant."""
    from . import distributed
    cls = METHOD_CLASSES[name]
    return distributed.data_parallel(cls) if distributed.is_distributed() else cls


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
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was asked for but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s): cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
    return device


def build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The config's network on ``device`` (drawn from the global RNG)."""
    # channels_last: faster convolutions on GPUs and, measured here, on the CPU too (1.7x).
    return network_of(cfg).to(device, memory_format=torch.channels_last)


def build(config: Config, device: torch.device | str | None = None, *,
          recalibrate: bool = True, precision: str | None = None) -> Start:
    """The start state of ``config``'s run (see the module docstring). ``device`` defaults to
    the config's; ``recalibrate=False`` skips the BatchNorm recalibration (a run about to be
    restored from a checkpoint); ``precision`` replaces the config's (a resumed run's own)."""
    cfg = config.validate()
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    random.seed(cfg.seed)                  # every global generator the run draws from
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_set, test_set = load_dataset(cfg.dataset, cfg.data_root, cfg.subset, cfg.seed,
                                       cfg.download, cfg.test_subset)
    cfg.check_against_data(len(train_set))
    train_set, test_set = train_set.to(device), test_set.to(device)
    model = build_model(cfg, device)
    generators = {
        "sampler": torch.Generator().manual_seed(cfg.seed),              # order, k-means seeds
        "augment": torch.Generator(device=device).manual_seed(cfg.seed),
        "order": torch.Generator().manual_seed(cfg.seed),   # colour-op order: host side, no sync
    }
    precision = passes(device, precision or cfg.precision)
    if recalibrate and cfg.recalibrate_bn:
        # before the baseline's evaluation too: the random network at its best
        recalibrate_batchnorm(model, train_set.images, cfg.eval_batch_size, precision["autocast"])
    method = method_class(cfg.method)(model, train_set.images, cfg, generators["sampler"],
                                      **precision)
    return Start(cfg, device, train_set, test_set, model, method, generators)
