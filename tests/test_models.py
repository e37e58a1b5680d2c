"""The small CNN pools before its ReLU (fewer values to rectify); that must be the textbook
block, conv -> BN -> ReLU -> max-pool, to the last bit, forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from odc_mini.models import SmallCNN


def textbook(net: SmallCNN, x: torch.Tensor) -> torch.Tensor:
    """conv -> BN (train mode) -> ReLU -> 2x2 max-pool for the first three blocks, conv -> BN ->
    ReLU for the last, from the network's own parameters, in plain functional calls."""
    for i in (0, 2, 4, 6):
        conv, bn = net.layers[i][0], net.layers[i][1]
        x = F.batch_norm(F.conv2d(x, conv.weight, padding=1), bn.running_mean.clone(),
                         bn.running_var.clone(), bn.weight, bn.bias, training=True,
                         momentum=bn.momentum, eps=bn.eps)
        x = F.relu(x)
        if i < 6:
            x = F.max_pool2d(x, 2)
    return x


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_small_cnn_is_conv_bn_relu_pool_to_the_last_bit(precision):
    torch.manual_seed(0)
    net = SmallCNN(2).to(memory_format=torch.channels_last)
    x = torch.randn(64, 2, 32, 32).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 256, 4, 4)            # a fixed function of the output to backprop
    results = []
    for forward in (lambda: net.layers[:7](x), lambda: textbook(net, x)):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = forward()
        (out.float() * weight).sum().backward()
        results.append([out.detach().float()] + [p.grad.clone() for p in net.parameters()])
    assert (results[0][0] == 0).float().mean() > 0.2          # the ReLU really cut values
    for mine, reference in zip(*results):
        assert torch.equal(mine, reference)
