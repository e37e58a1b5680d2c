"""What ODC and DeepCluster share: the optimiser, one SGD step, and feature extraction.

A method is driven by the training loop (``train.py``) through four calls::

    method.setup(progress)              # once, before the first epoch
    order = method.epoch_indices(epoch) # (N',) sample indices to visit this epoch
    out = method.train_step(x, idx)     # per batch: dict of 0-d tensors (loss, acc, change_ratio, finite)
    method.pseudo_labels()              # (N,) the current pseudo-label of every sample

``train_step`` returns tensors, not floats, so that a GPU run never waits for the host inside
the hot loop; the loop reads them at logging intervals.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .augment import normalize


@dataclass
class Embedding:
    """Features of a whole image set, extracted without augmentation in eval mode."""
    backbone: torch.Tensor  # (N, C): what kNN and the linear probe evaluate
    neck: torch.Tensor      # (N, D): what clustering uses


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device``: bf16 on a GPU with bf16 tensor cores
    (compute capability 8.0 and newer), fp16 on an older one (Colab's free T4 is 7.5: it would
    emulate bf16 slowly), fp32 on the CPU (its bf16 matmuls are slow on most processors). Any
    other value is kept as asked."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def autocast(device: torch.device, precision: str = "auto"):
    """The forward pass's autocast for ``precision`` on ``device`` (nothing for fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                 progress: bool = False, desc: str = "extract",
                 precision: str = "auto") -> Embedding:
    """Run ``model.embed`` over uint8 images (N, 3, H, W) in eval mode; float32 outputs on the
    images' device. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    backbone, neck = [], []
    starts = range(0, images.shape[0], batch_size)
    for s in tqdm(starts, desc=desc, leave=False, disable=not progress):
        x = normalize(images[s:s + batch_size]).contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            h, z = model.embed(x)
        backbone.append(h.float())
        neck.append(z.float())
    model.train(was_training)
    return Embedding(torch.cat(backbone), torch.cat(neck))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                          precision: str = "auto") -> None:
    """Set every BN layer's running statistics to the exact averages over ``images``.

    A fresh network's running statistics are mean 0 and variance 1, so its eval-mode features
    (what clustering sees) differ from its train-mode features (what the memory is then updated
    with): on a random small CNN their cosine is only about 0.5. Recomputing the statistics with
    train-mode passes (no gradient, no dropout effect on BN) removes that gap before the first
    clustering. Not in the reference code, which trains long enough for the gap to close.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    model.train()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None           # cumulative moving average: the exact mean over batches
    for s in range(0, images.shape[0], batch_size):
        x = normalize(images[s:s + batch_size]).contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            model.embed(x)
    for m, (momentum, _) in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)


def build_optimizer(model: nn.Module, lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-5) -> torch.optim.SGD:
    """SGD with weight decay on every parameter; the head gets momentum 0 (spec §2), a habit
    inherited from DeepCluster, whose head is re-initialised after every clustering."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    return torch.optim.SGD([{"params": rest}, {"params": head, "momentum": 0.0}],
                           lr=lr, momentum=momentum, weight_decay=weight_decay)


class Method:
    """Base class: holds the model, the optimiser and the training images."""

    name = "method"

    def __init__(self, model: nn.Module, images: torch.Tensor, cfg, generator: torch.Generator):
        self.model = model
        self.images = images            # (N, 3, H, W) uint8 on the training device
        self.cfg = cfg
        self.device = images.device
        self.generator = generator      # CPU generator: sampler and k-means seeds
        self.optimizer = build_optimizer(model, cfg.lr, cfg.sgd_momentum, cfg.weight_decay)
        self.precision = resolve_precision(cfg.precision, self.device)
        # fp16 needs a loss scale so that small gradients do not underflow (bf16 and fp32 do not)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.iteration = 0              # global iteration counter, across epochs
        self.clusters_handled = 0       # small/empty clusters repaired since the last epoch end
        self.progress = False           # progress bars for whole-dataset feature extraction
        self._embedding: tuple[int, Embedding] | None = None  # (iteration, features) cache
        self._forward_model: nn.Module = model   # what train steps call: the model or its compiled twin

    def compile(self) -> None:
        """Train with ``torch.compile`` of the training forward (same parameters; the model's own
        ``state_dict`` keys are unchanged). Feature extraction stays eager."""
        self._forward_model = torch.compile(self._forward_model)

    def distribute(self) -> None:
        """Train through ``DistributedDataParallel`` (several ranks; see ``distributed.py``).
        Buffers are not broadcast: the global-batch BN keeps them equal on every rank."""
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        try:
            self._forward_model = DistributedDataParallel(self.model, device_ids=ids,
                                                          forward_sync_buffers=False)
        except TypeError:   # torch before forward_sync_buffers
            self._forward_model = DistributedDataParallel(self.model, device_ids=ids,
                                                          broadcast_buffers=False)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def embed(self) -> Embedding:
        """Features of every training image (eval mode, no augmentation).

        The result is kept until the next training step changes the weights: the evaluation at
        the end of an epoch and DeepCluster's clustering at the start of the next one (or ODC's
        initial clustering right after the random-init evaluation) see the same network, so they
        share one extraction.
        """
        if self._embedding is None or self._embedding[0] != self.iteration:
            # Several ranks: each extracts its shard, then all gather the whole.
            n = self.num_samples
            part = embed_images(self.model, self.images[distributed.shard(n)],
                                self.cfg.eval_batch_size, self.progress, desc=f"{self.name}: extract",
                                precision=self.precision)
            features = Embedding(distributed.gather_rows(part.backbone, n),
                                 distributed.gather_rows(part.neck, n))
            if not bool(torch.isfinite(features.neck).all()):   # one check per extraction
                raise FloatingPointError("NaN or inf in the extracted features")
            self._embedding = (self.iteration, features)
        return self._embedding[1]

    def sgd_step(self, logits: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Cross-entropy (weighted mean when ``weight`` is given), backward, SGD step."""
        if weight is not None and distributed.is_distributed():
            # Divide by the weight sum of the global batch: DDP's average of the ranks' losses is
            # then the single-process weighted mean.
            per_sample = nn.functional.cross_entropy(logits.float(), target, reduction="none")
            w = weight[target]
            total = distributed.sum_(w.sum().detach().clone())
            loss = (w * per_sample).sum() / total * distributed.world_size()
        else:
            loss = nn.functional.cross_entropy(logits.float(), target, weight=weight)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:   # fp16: scaled backward; a step whose gradients overflowed is skipped
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        acc = (logits.detach().argmax(dim=1) == target).float().mean()
        # "finite": read by the loop (every step on the CPU, once per epoch on a GPU), which
        # stops a diverged run; a tensor, so that nothing here waits for the device.
        return {"loss": loss.detach(), "acc": acc, "finite": torch.isfinite(loss.detach())}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.precision):
            return self._forward_model(x)

    # The interface the loop drives; subclasses fill it in.
    def setup(self, progress: bool = False) -> None:
        """Called once before the first epoch."""
        raise NotImplementedError

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def pseudo_labels(self) -> torch.Tensor:
        raise NotImplementedError

    def drift_centroids(self) -> torch.Tensor:
        """(K, D) centroids in cluster ids that persist across epochs, to measure drift with."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                "clusters_handled": self.clusters_handled,
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = state["iteration"]
        self._embedding = None
        self.clusters_handled = state["clusters_handled"]
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
