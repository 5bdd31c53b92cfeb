"""CIFAR ResNets (He et al. 2016): ResNet-8/14/20/32/44/56 (depth 6n+2), three stages of 16w/32w/64w channels.

A block is conv3x3-norm-ReLU-conv3x3-norm plus a shortcut (a 1x1 conv and norm where the shape
changes, as in open_lth), then ReLU. Global average pooling before the output layer ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.models import image_shape, norm_layer, register, scaled


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, blocks_per_stage: int, base: int, num_classes: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
        self.bn = norm_layer(norm, base)
        blocks, c = [], base
        for stage, c_out in enumerate((base, 2 * base, 4 * base)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Block(c, c_out, stride, norm))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x).mean((2, 3))  # global average pool: (B, 64w)
        return self.fc(x)


def _resnet(depth: int, input_shape, num_classes, width, norm) -> nn.Module:
    shape = image_shape(f"resnet{depth}", input_shape)
    return ResNet(shape[0], (depth - 2) // 6, scaled(16, width), num_classes, norm)


@register
def resnet8(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """ResNet-8 for CIFAR (one block per stage, 0.08M weights): the shallowest family member (elastic tickets)."""
    return _resnet(8, input_shape, num_classes, width, norm)


@register
def resnet14(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """ResNet-14 for CIFAR (two blocks per stage, 0.17M weights)."""
    return _resnet(14, input_shape, num_classes, width, norm)


@register
def resnet20(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """ResNet-20 for CIFAR (0.27M weights): the LTH paper's "ResNet-18", open_lth's cifar_resnet_20."""
    return _resnet(20, input_shape, num_classes, width, norm)


@register
def resnet32(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """ResNet-32 for CIFAR (0.46M weights)."""
    return _resnet(32, input_shape, num_classes, width, norm)


@register
def resnet44(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """ResNet-44 for CIFAR (0.66M weights)."""
    return _resnet(44, input_shape, num_classes, width, norm)


@register
def resnet56(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """ResNet-56 for CIFAR (0.85M weights)."""
    return _resnet(56, input_shape, num_classes, width, norm)
