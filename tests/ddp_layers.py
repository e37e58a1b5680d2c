"""Run under torchrun with 2 processes: the sharded BatchNorm and Dropout on each rank's half of a
batch against the plain layers on the whole batch (computed on rank 0). Writes the largest
differences as JSON to the path given.

    torchrun --standalone --nproc_per_node=2 tests/ddp_layers.py RESULT_JSON
"""
import json
import sys

import torch
from torch import nn

from odc_mini.run import distributed


def main() -> None:
    distributed.init("cpu")
    world, rank = distributed.world_size(), distributed.rank()
    g = torch.Generator().manual_seed(0)
    x_all = torch.randn(8, 6, 5, 5, generator=g) * 3 + 1      # (B, C, H, W), mean far from 0
    c_all = torch.randn(x_all.shape, generator=g)              # a fixed linear loss
    rows = slice(rank * 4, (rank + 1) * 4)
    result = {}

    plain = nn.BatchNorm2d(6, momentum=0.3)
    nn.init.normal_(plain.weight, generator=g)
    nn.init.normal_(plain.bias, generator=g)
    sharded = distributed.convert(nn.Sequential(nn.BatchNorm2d(6, momentum=0.3)))[0]
    sharded.load_state_dict(plain.state_dict())

    x_all.requires_grad_(True)
    y_plain = plain(x_all)                       # training mode: the whole batch's statistics
    (c_all * y_plain).sum().backward()
    x = x_all.detach()[rows].clone().requires_grad_(True)
    with distributed.sharded_step():
        y = sharded(x)
    (c_all[rows] * y).sum().backward()
    with torch.no_grad():
        y_all = distributed.gather_cat(y.detach())
        grad_x = distributed.gather_cat(x.grad)
        grad_w = distributed.sum_(sharded.weight.grad.clone())   # what DDP sums (then averages)
        grad_b = distributed.sum_(sharded.bias.grad.clone())
    result["bn_output"] = (y_all - y_plain.detach()).abs().max().item()
    result["bn_grad_input"] = (grad_x - x_all.grad).abs().max().item()
    result["bn_grad_weight"] = (grad_w - plain.weight.grad).abs().max().item()
    result["bn_grad_bias"] = (grad_b - plain.bias.grad).abs().max().item()
    result["bn_running_mean"] = (sharded.running_mean - plain.running_mean).abs().max().item()
    result["bn_running_var"] = (sharded.running_var - plain.running_var).abs().max().item()

    # Dropout: the same seed on every rank; the plain layer on the whole batch.
    h_all = torch.rand(8, 7, generator=g) + 1
    drop = distributed.convert(nn.Sequential(nn.Dropout(0.5)))[0]
    torch.manual_seed(5)
    with distributed.sharded_step():
        d = drop(h_all[rows])
    torch.manual_seed(5)
    expected = nn.Dropout(0.5)(h_all)
    result["dropout"] = (distributed.gather_cat(d) - expected).abs().max().item()
    result["dropout_kept"] = float((expected != 0).float().mean())
    result["types"] = [type(sharded).__name__, type(drop).__name__]
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    distributed.barrier()


if __name__ == "__main__":
    main()
