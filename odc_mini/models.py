"""The networks: ODC's and DeepCluster's backbone -> neck -> linear head, and CoKe's.

* ``small_cnn``: a 4-block CNN (about 1.2 M parameters) that trains in seconds per epoch on a
  laptop CPU; the quick profile uses it.
* ``resnet18``: the CIFAR variant of ResNet-18 (3x3 stem with stride 1, no max-pool), 512-d
  output; the full profile uses it on a GPU.

The neck and head follow the ODC reference (OpenSelfSup ``NonLinearNeckV0`` and ``ClsHead`` in
``configs/selfsup/odc/r50_v1.py``): Linear(C, 512) -> BN (no affine) -> ReLU
-> Dropout(0.5) -> Linear(512, 256) -> ReLU, then Linear(256, K) with N(0, 0.01^2) weights.
Both methods use the very same network, so the comparison differs only in how pseudo-labels
are made.

CoKe (``coke.py``) keeps the same backbone, the only part that kNN and the linear probe evaluate,
and puts its own reference's layers on it (``CoKeNet``): a projection MLP and a prediction head,
with no linear head, because its classifier is its centroids.
"""
from __future__ import annotations

import torch
from torch import nn


class Sobel(nn.Module):
    """DeepCluster's fixed input filter: grey level, then horizontal and vertical Sobel edges.
    (B, 3, H, W) -> (B, 2, H, W). No parameters are learned.

    Colour is the first thing a random network clusters by, and colour jitter makes such
    clusters impossible to predict; edges survive the jitter (Caron et al., Sec. 4;
    OpenSelfSup ``openselfsup/models/utils/sobel.py``).
    """

    def __init__(self):
        super().__init__()
        edges = torch.tensor([[[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]],
                              [[1., 2., 1.], [0., 0., 0.], [-1., -2., -1.]]]).unsqueeze(1)
        self.register_buffer("grey", torch.full((1, 3, 1, 1), 1.0 / 3.0))
        self.register_buffer("edges", edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(nn.functional.conv2d(x, self.grey), self.edges, padding=1)


def _conv_block(c_in: int, c_out: int, *after: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         *after)


def _pool_relu() -> nn.Sequential:
    """2 x 2 max-pooling, then ReLU. ReLU is monotonic, so it commutes with max: these are the
    numbers of ReLU-then-pool to the last bit, forward and backward, but ReLU and its backward
    touch a quarter of the values (the largest activations of a CPU step are the first block's)."""
    return nn.Sequential(nn.MaxPool2d(2), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """(B, 3, 32, 32) -> (B, 256). Four conv blocks (conv, BN, ReLU), each halving the
    resolution but the last, then global average pooling."""

    out_dim = 256

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.layers = nn.Sequential(
            _conv_block(in_channels, 32), _pool_relu(),      # 16 x 16
            _conv_block(32, 64), _pool_relu(),     # 8 x 8
            _conv_block(64, 128), _pool_relu(),    # 4 x 4
            _conv_block(128, 256, nn.ReLU(inplace=True)),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem; (B, 3, 32, 32) -> (B, 512)."""
    import torchvision   # here, not at the top: it takes a second to import, and the quick
    # profile's small CNN does not need it
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.out_dim = 512
    return net


class WithSobel(nn.Sequential):
    """A backbone behind the fixed Sobel filter; keeps the backbone's ``out_dim``."""

    def __init__(self, backbone: nn.Module):
        super().__init__(Sobel(), backbone)
        self.out_dim = backbone.out_dim


# Each arch and its backbone, built with the number of input channels (2 behind the Sobel filter).
BACKBONES = {"small_cnn": SmallCNN, "resnet18": resnet18_cifar}


def build_backbone(arch: str, sobel: bool = False) -> nn.Module:
    if arch not in BACKBONES:
        raise ValueError(f"unknown arch {arch!r}; accepted: {', '.join(BACKBONES)}")
    net = BACKBONES[arch](2 if sobel else 3)
    # Reference init: Kaiming-normal (fan_in, ReLU) convolutions, BN weight 1 and bias 0.
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return WithSobel(net) if sobel else net


class Neck(nn.Module):
    """ODC's non-linear neck (OpenSelfSup ``NonLinearNeckV0``): (B, C) -> (B, out_dim), >= 0.

    The BN has no affine parameters. The reference's BN momentum 0.001 suits 2,500 iterations per
    epoch on ImageNet; CIFAR runs have ~40-200, so the default here is 0.01.
    """

    def __init__(self, in_dim: int, hid_dim: int = 512, out_dim: int = 256, bn_momentum: float = 0.01):
        super().__init__()
        self.fc0 = nn.Linear(in_dim, hid_dim)
        self.bn0 = nn.BatchNorm1d(hid_dim, affine=False, momentum=bn_momentum)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(hid_dim, out_dim)
        for fc in (self.fc0, self.fc1):
            nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(self.drop(torch.relu(self.bn0(self.fc0(x))))))


class Head(nn.Linear):
    """Linear classifier over K pseudo-classes, initialised N(0, 0.01^2), bias 0."""

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.01)
        nn.init.zeros_(self.bias)


class ClusterNet(nn.Module):
    """backbone + neck + head. ``forward`` returns (neck features (B, D), logits (B, K))."""

    def __init__(self, arch: str, num_clusters: int, hid_dim: int = 512, feat_dim: int = 256,
                 neck_bn_momentum: float = 0.01, sobel: bool = False):
        super().__init__()
        self.backbone = build_backbone(arch, sobel)
        self.neck = Neck(self.backbone.out_dim, hid_dim, feat_dim, neck_bn_momentum)
        self.head = Head(feat_dim, num_clusters)

    @classmethod
    def of(cls, cfg) -> "ClusterNet":
        """The network a run's Config describes (freshly initialised from the global RNG)."""
        return cls(cfg.arch, cfg.num_clusters, cfg.hid_dim, cfg.feat_dim, cfg.neck_bn_momentum,
                   cfg.sobel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.neck(self.backbone(x))
        return z, self.head(z)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone features (B, C), neck features (B, D)): what evaluation and clustering use."""
        h = self.backbone(x)
        return h, self.neck(h)


class CoKeNet(nn.Module):
    """backbone + CoKe's projection MLP + prediction head (idstcv/CoKe
    ``coke/builder_single_view.py``, ``CoKe.__init__``), with C the backbone's width:

    * projection: Linear(C, C) -> BN -> ReLU -> Linear(C, C) -> BN -> ReLU -> Linear(C, dim) -> BN,
      the features that are clustered (``dim`` 128 as in the reference);
    * prediction head: Linear(dim, C) -> BN -> ReLU -> Linear(C, dim).

    ``forward`` returns (projection (B, dim), prediction (B, dim)); ``embed`` returns (backbone
    features, projection), like ``ClusterNet.embed``. Linear and BN layers keep torch's default
    initialisation, as in the reference.
    """

    def __init__(self, arch: str, dim: int = 128, sobel: bool = False):
        super().__init__()
        self.backbone = build_backbone(arch, sobel)
        c = self.backbone.out_dim
        self.projection = nn.Sequential(
            nn.Linear(c, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
            nn.Linear(c, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
            nn.Linear(c, dim), nn.BatchNorm1d(dim))
        self.predictor = nn.Sequential(nn.Linear(dim, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
                                       nn.Linear(c, dim))

    @classmethod
    def of(cls, cfg) -> "CoKeNet":
        return cls(cfg.arch, cfg.coke_dim, cfg.sobel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection(self.backbone(x))
        return z, self.predictor(z)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.projection(h)


def network_of(cfg) -> nn.Module:
    """The network a run's Config describes: CoKe's for ``method="coke"``, else ``ClusterNet``
    (freshly initialised from the global RNG)."""
    return (CoKeNet if cfg.method == "coke" else ClusterNet).of(cfg)
