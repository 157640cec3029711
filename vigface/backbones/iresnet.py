"""IResNet backbones in the layout of insightface ``recognition/arcface_torch``.

Parameter names match arcface_torch (``conv1``, ``layer1.0.bn1``, ``fc``, ``features``) so its
checkpoints load into the standard depths. Two additions make small CPU models possible:
stage widths are configurable, and the input resolution is a config value (the flattened
feature size follows from it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vigface.constants import CROP_SIZE

# Blocks per stage of the standard depths (arcface_torch's iresnet18/34/50/100/200).
DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN residual block; the stride sits on the second conv."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """Improved ResNet for 112x112-style aligned faces, returning an un-normalised embedding.

    Args:
        layers: blocks per stage (four stages, each halving the resolution).
        widths: channels per stage; arcface_torch uses (64, 128, 256, 512).
        input_size: side of the square input the network is trained at.
        num_features: embedding dimension D.
        dropout: dropout before the final fully connected layer.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = DEPTHS[50],
        widths: tuple[int, ...] = (64, 128, 256, 512),
        input_size: int = CROP_SIZE,
        num_features: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("IResNet needs exactly four stages (layers and widths of length 4)")
        self.input_size = input_size
        self.inplanes = widths[0]
        self.conv1 = _conv3x3(3, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-5)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.layer4 = self._make_layer(widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size
        for _ in range(4):
            side = (side + 1) // 2  # 3x3 conv, stride 2, padding 1
        self.fc = nn.Linear(widths[3] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        layers = [IBasicBlock(self.inplanes, planes, stride=2)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_maps(self, x: torch.Tensor, stages: int = 3) -> list[torch.Tensor]:
        """The stem's and the first ``stages`` stages' outputs: the feature maps a perceptual
        loss compares (any input side; they are convolutional)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        maps = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:stages]:
            x = layer(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, input_size, input_size) RGB scaled to [-1, 1]."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class AlignedCropEmbedder(nn.Module):
    """Wraps a backbone so it takes standard 112x112 aligned crops whatever its own resolution.

    This is the form that leaves the project (ONNX export, judges, the generator's identity
    loss): the input is always the insightface crop in [-1, 1]; an exact 2x2/4x4 average pool
    or a bilinear resize brings it to the resolution the backbone was trained at.
    """

    def __init__(self, backbone: IResNet, crop_size: int = CROP_SIZE):
        super().__init__()
        self.backbone = backbone
        self.crop_size = crop_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.backbone.input_size
        if x.shape[-1] != size:
            if x.shape[-1] % size == 0:
                k = x.shape[-1] // size
                x = F.avg_pool2d(x, k)
            else:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.backbone(x)
