"""What the methods (ODC, DeepCluster, CoKe) share: the optimiser, one SGD step, and feature
extraction.

A method is driven by the training loop (``train.py``) through four calls::

    method.setup()                      # once, before the first epoch
    order = method.start_epoch(epoch)   # (N',) the images this epoch visits, in order
    step = method.train_step(x, idx)    # per batch: a Step of 0-d tensors
    method.pseudo_labels()              # (N,) the current pseudo-label of every image

A method is an ``nn.Module``: the network is its submodule, every tensor of its state (ODC's
memories, DeepCluster's labels) is a registered buffer, and the optimiser travels as the module's
extra state, so ``method.state_dict()`` is everything a checkpoint needs of it.

``train_step`` returns tensors, not floats, so that a GPU run never waits for the host inside
the hot loop; the loop reads them at logging intervals.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import normalize
from .kmeans import cluster


class Step(NamedTuple):
    """What one training step reports (0-d tensors, still on the device)."""
    loss: torch.Tensor          # the (weighted) cross-entropy on the pseudo-labels
    acc: torch.Tensor           # share of the batch whose pseudo-label the head predicts
    change_ratio: torch.Tensor  # share of the batch whose label changed (NaN: no previous label)
    finite: torch.Tensor        # False when the loss or the features are NaN or inf

    def row(self) -> torch.Tensor:
        """(4,) the fields as one tensor of the loss's dtype (a row of the epoch's record)."""
        finite = self.finite.to(self.loss.dtype)
        return torch.stack([self.loss, self.acc, self.change_ratio, finite])


@dataclass
class Embedding:
    """Features of a whole image set, extracted without augmentation in eval mode."""
    backbone: torch.Tensor  # (N, C): what kNN and the linear probe evaluate
    neck: torch.Tensor      # (N, D): what clustering uses


Autocast = Callable[[], contextlib.AbstractContextManager]   # fp32: contextlib.nullcontext


def _batches(model: nn.Module, images: torch.Tensor, batch_size: int, autocast: Autocast,
             progress: bool = False, desc: str = ""):
    """``model.embed`` of every batch of uint8 images (N, 3, H, W), normalised, channels_last."""
    for s in tqdm(range(0, images.shape[0], batch_size), desc=desc, leave=False,
                  disable=not progress):
        x = normalize(images[s:s + batch_size])        # channels-last, as the network is
        with autocast():
            yield model.embed(x)


def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                 progress: bool = False, desc: str = "extract",
                 autocast: Autocast = contextlib.nullcontext) -> Embedding:
    """Run ``model.embed`` over uint8 images (N, 3, H, W) in eval mode; float32 outputs on the
    images' device. The model's train/eval mode is restored afterwards.

    The passes run in inference mode (no autograd bookkeeping at all); the outputs are joined
    outside it, so they are ordinary tensors that a linear probe can train on."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        parts = [(h.float(), z.float()) for h, z in _batches(model, images, batch_size, autocast,
                                                              progress, desc)]
    model.train(was_training)
    return Embedding(torch.cat([h for h, _ in parts]), torch.cat([z for _, z in parts]))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                          autocast: Autocast = contextlib.nullcontext) -> None:
    """Set every BN layer's running statistics to the exact averages over ``images``.

    A fresh network's running statistics are mean 0 and variance 1, so its eval-mode features
    (what clustering sees) differ from its train-mode features (what the memory is then updated
    with): on a random small CNN their cosine is only about 0.5. Recomputing the statistics with
    train-mode passes (no gradient, no dropout effect on BN) removes that gap before the first
    clustering. Not in the reference code, which trains long enough for the gap to close.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None           # cumulative moving average: the exact mean over batches
    for _ in _batches(model, images, batch_size, autocast):
        pass
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def build_optimizer(model: nn.Module, lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-5) -> torch.optim.SGD:
    """SGD with weight decay on every parameter; a linear head gets momentum 0 (OpenSelfSup's
    ODC config, ``paramwise_options``), a habit inherited from DeepCluster, whose head is
    re-initialised after every clustering. (CoKe's network has no such head.)"""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    groups = [{"params": rest}] + ([{"params": head, "momentum": 0.0}] if head else [])
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


class Method(nn.Module):
    """Base class: the network, its optimiser and the training images.

    ``autocast`` (a context factory) and ``scaler`` (an fp16 ``GradScaler`` or None) say in
    which precision the passes run; ``odc_mini.run.precision`` chooses them.
    """

    name = "method"

    def __init__(self, model: nn.Module, images: torch.Tensor, cfg, generator: torch.Generator,
                 autocast: Autocast = contextlib.nullcontext, scaler=None):
        super().__init__()
        self.model = model
        self.images = images            # (N, 3, H, W) uint8 on the training device
        self.cfg = cfg
        self.device = images.device
        self.generator = generator      # CPU generator: sampler and k-means seeds
        self.optimizer = build_optimizer(model, cfg.lr, cfg.sgd_momentum, cfg.weight_decay)
        self.autocast, self.scaler = autocast, scaler
        self.iteration = 0              # SGD steps taken, across epochs
        self.clusters_handled = 0       # small/empty clusters repaired since the last epoch end
        self.progress = False           # progress bars for whole-dataset feature extraction
        self._embedding: tuple[int, Embedding] | None = None  # (iteration, features) cache
        # What train steps call: the model itself, or a compiled or data-parallel twin of it
        # (kept out of the module's children, so that the state dict names each weight once).
        object.__setattr__(self, "forward_model", model)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    # ------------------------------------------------------------------ the loop's contract
    def setup(self) -> None:
        """Called once before the first epoch."""
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> torch.Tensor:
        """What the method does before epoch ``epoch`` (1, 2, ...); returns the epoch's order of
        image indices (CPU, int64)."""
        raise NotImplementedError

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> Step:
        raise NotImplementedError

    def pseudo_labels(self) -> torch.Tensor:
        raise NotImplementedError

    def drift_centroids(self) -> torch.Tensor:
        """(K, D) centroids in cluster ids that persist across epochs, to measure drift with."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces
    def embed(self) -> Embedding:
        """Features of every training image (eval mode, no augmentation).

        The result is kept until the next training step changes the weights: the evaluation at
        the end of an epoch and DeepCluster's clustering at the start of the next one (or ODC's
        initial clustering right after the random-init evaluation) see the same network, so they
        share one extraction.
        """
        if self._embedding is None or self._embedding[0] != self.iteration:
            features = self.extract()
            if not bool(torch.isfinite(features.neck).all()):   # one check per extraction
                raise FloatingPointError("NaN or inf in the extracted features")
            self._embedding = (self.iteration, features)
        return self._embedding[1]

    def extract(self) -> Embedding:
        return embed_images(self.model, self.images, self.cfg.eval_batch_size, self.progress,
                            desc=f"{self.name}: extract", autocast=self.autocast)

    def kmeans_labels(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """(N,) labels of k-means with the run's K and iterations on the rows of ``x``."""
        return cluster(x, self.cfg.num_clusters, n_iter=self.cfg.kmeans_iters, seed=seed)[1]

    def global_batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The whole batch of a step (one process: the batch itself)."""
        return tensors

    def loss(self, logits: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy, a weighted mean when ``weight`` (K,) is given."""
        return nn.functional.cross_entropy(logits.float(), target, weight=weight)

    def sgd_step(self, logits: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None = None,
                 loss: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Loss (``self.loss`` of the logits, unless the method passes its own), backward, SGD
        step. Returns (loss, accuracy of the logits, loss is finite) as 0-d tensors."""
        if loss is None:
            loss = self.loss(logits, target, weight)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:   # fp16: scaled backward; a step whose gradients overflowed is skipped
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.iteration += 1
        acc = (logits.detach().argmax(dim=1) == target).float().mean()
        return loss.detach(), acc, torch.isfinite(loss.detach())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            return self.forward_model(x)

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        """What is state but no tensor of this module: the optimiser and the counters."""
        return {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                "clusters_handled": self.clusters_handled,
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.clusters_handled = state["iteration"], state["clusters_handled"]
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self._embedding = None
