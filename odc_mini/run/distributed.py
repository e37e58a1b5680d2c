"""Several processes, one run: data-parallel training with ``torch.distributed``.

    torchrun --nproc_per_node=4 -m odc_mini train --profile full --out runs/full-odc

Each process ("rank") drives one device (NCCL between GPUs, gloo between CPU processes). The
code path is the one of a single process; what keeps a run on N ranks the run of one process with
the whole batch:

* **Data.** Every rank draws the same epoch order and augments the whole global batch with the
  same generators, then keeps its share: rank r trains on rows ``r*B/N .. (r+1)*B/N - 1``.
* **Gradients** are averaged over ranks by ``DistributedDataParallel``. The weighted ODC loss is
  divided by the weight sum of the *global* batch (one all-reduce), so that the average of the
  ranks' losses is exactly the single-process loss.
* **Batch normalisation** in a training step normalises with the mean and variance of the global
  batch (:class:`ShardedBatchNorm`), and **dropout** draws the global batch's mask and keeps the
  rank's rows (:class:`ShardedDropout`): with the same seed, every rank draws what one process
  would have drawn. Outside training steps (feature extraction, BN recalibration) both behave as
  the plain layers.
* **The ODC memory** is replicated: every rank applies the same update from the all-gathered
  features and indices of the global batch. Centroids and the labels of a small-cluster split are
  broadcast from rank 0, so the rounding of parallel reductions on a GPU cannot make ranks drift.
* **DeepCluster** extracts features in shards, gathers them, and every rank uses rank 0's k-means.
* **Rank 0 alone** writes checkpoints and the finished run and shows progress bars.

The methods themselves are written for one process; :func:`data_parallel` derives the variant
that does the above from a method class, by overriding its hooks (``global_batch``,
``kmeans_labels``, ``extract``, ``loss``, ``train_step``) and its memory's (``update_centroids``,
``deal_with_small_clusters``). With one process the collectives a run calls (``broadcast_``,
``sum_``, ``any_rank``, ``barrier``) are no-ops, and neither the layers nor the variants are used.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.distributed as dist
from torch import nn

from ..memory import ODCMemory
from ..method import Embedding, Step, embed_images


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> None:
    """Join the process group torchrun set up (NCCL for CUDA, gloo for the CPU). Idempotent;
    nothing happens in a process that was not launched as one of several."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


# ------------------------------------------------------------------------------ collectives

def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """The ranks' equal-shaped tensors concatenated along dim 0, in rank order, on every rank."""
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_rows(x: torch.Tensor, total: int) -> torch.Tensor:
    """Like :func:`gather_cat` for shards of a ``total``-row tensor split by :func:`shard`
    (the last ones may be short): padded for the collective, trimmed after."""
    per = math.ceil(total / world_size())
    padded = torch.zeros((per, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    return gather_cat(padded)[:total]


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows (ceil(n / world) each, the last ones shorter)."""
    per = math.ceil(n / world_size())
    return slice(min(rank() * per, n), min((rank() + 1) * per, n))


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``x`` on every rank with rank ``src``'s values (in place); returns ``x``."""
    if is_distributed():
        dist.broadcast(x, src)
    return x


def sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; returns ``x``."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on some rank."""
    if not is_distributed():
        return flag
    return bool(sum_(torch.tensor([float(flag)], device=device)) > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _SumOverRanks(torch.autograd.Function):
    """y = the sum of x over ranks, on every rank. Each rank's y feeds its own loss, so the
    gradient of x is the sum of the gradients of y over ranks: the backward is a sum too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return sum_(x.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return sum_(grad.clone())


def differentiable_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks that gradients flow through (see :class:`_SumOverRanks`)."""
    return _SumOverRanks.apply(x) if is_distributed() else x


# ------------------------------------------------------------------------------ layers

_in_sharded_step = False


@contextlib.contextmanager
def sharded_step():
    """Marks a training step on a share of the global batch: inside it, the layers below act on
    the global batch. Elsewhere (extraction, recalibration) every rank has whole data."""
    global _in_sharded_step
    previous, _in_sharded_step = _in_sharded_step, True
    try:
        yield
    finally:
        _in_sharded_step = previous


def _sharded() -> bool:
    return _in_sharded_step and is_distributed()


class ShardedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation with the statistics of the global batch during a sharded training step.

    Two differentiable all-reduces (the mean, then the variance about it: the two-pass formula,
    stable in float32); the backward pass sums the gradients of the statistics over ranks, so
    DDP's averaged gradient is the gradient of the single-process loss. Running statistics are
    updated as ``nn.BatchNorm`` updates them, from the global mean and unbiased variance.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _sharded()):
            return super().forward(x)
        x = x.float()
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()
        mean = differentiable_sum(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = differentiable_sum((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class ShardedDropout(nn.Dropout):
    """Dropout whose mask, in a sharded step, is the rows of the global batch's mask drawn from the
    (identically seeded) global generator: the draws of one process with the whole batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _sharded()) or self.p == 0:
            return super().forward(x)
        rows = x.shape[0]
        keep = torch.empty((rows * world_size(), *x.shape[1:]), dtype=x.dtype, device=x.device)
        keep.bernoulli_(1 - self.p).div_(1 - self.p)
        return x * keep[rank() * rows:(rank() + 1) * rows]


def convert(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm and Dropout of ``model`` for the sharded versions, in place (same
    parameters and buffers, so the state dict keys do not change). Returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            device = next(iter([*child.parameters(), *child.buffers()])).device
            new = ShardedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=device)
            new.load_state_dict(child.state_dict())
            if child.affine:   # keep the very Parameter objects
                new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(model, name, new)
        elif isinstance(child, nn.Dropout):
            setattr(model, name, ShardedDropout(child.p))
        else:
            convert(child)
    return model


# ------------------------------------------------------------------------------ methods

class ReplicatedMemory(ODCMemory):
    """The ODC memory of one rank: every rank applies the same updates; centroids and the labels
    of a split are rank 0's, so that the rounding of parallel reductions cannot make ranks drift."""

    def update_centroids(self, clusters: torch.Tensor | None = None) -> None:
        super().update_centroids(clusters)
        broadcast_(self.centroids)

    def deal_with_small_clusters(self) -> int:
        handled = super().deal_with_small_clusters()
        if handled:
            broadcast_(self.labels)
            self.recount()
        return handled


def data_parallel(method_class: type) -> type:
    """The variant of ``method_class`` (ODC, DeepCluster or CoKe) that trains as one of several
    ranks. CoKe needs nothing more: its labels, duals and centroids are updated on every rank from
    the all-gathered batch (``global_batch``) by the same deterministic operations."""

    class DataParallel(method_class):
        memory_class = ReplicatedMemory

        def __init__(self, model, *args, **kwargs):
            convert(model)           # global-batch BN and dropout (the same parameters)
            super().__init__(model, *args, **kwargs)
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            try:   # buffers are not broadcast: the global-batch BN keeps them equal on every rank
                ddp = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
            except TypeError:   # torch before forward_sync_buffers
                ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
            object.__setattr__(self, "forward_model", ddp)

        def train_step(self, x: torch.Tensor, idx: torch.Tensor) -> Step:
            """Every rank augmented the whole global batch; each trains on its share, and the
            step's numbers are the global batch's (the same on every rank)."""
            b, world = x.shape[0], world_size()
            share = slice(rank() * b // world, (rank() + 1) * b // world)
            with sharded_step():
                step = super().train_step(x[share], idx[share])
            row = sum_(step.row()) / world
            return Step(row[0], row[1], row[2], row[3] == 1)

        def global_batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(gather_cat(t) for t in tensors)

        def kmeans_labels(self, x: torch.Tensor, seed: int) -> torch.Tensor:
            return broadcast_(super().kmeans_labels(x, seed))     # rank 0's clustering

        def extract(self) -> Embedding:
            n = self.num_samples      # each rank extracts its shard, then all gather the whole
            part = embed_images(self.model, self.images[shard(n)], self.cfg.eval_batch_size,
                                self.progress, desc=f"{self.name}: extract", autocast=self.autocast)
            return Embedding(gather_rows(part.backbone, n), gather_rows(part.neck, n))

        def loss(self, logits, target, weight):
            if weight is None:
                return super().loss(logits, target, weight)
            # Divide by the weight sum of the global batch: DDP's average of the ranks' losses
            # is then the single-process weighted mean.
            per_sample = nn.functional.cross_entropy(logits.float(), target, reduction="none")
            w = weight[target]
            total = sum_(w.sum().detach().clone())
            return (w * per_sample).sum() / total * world_size()

    DataParallel.__name__ = DataParallel.__qualname__ = f"DataParallel{method_class.__name__}"
    return DataParallel
