"""VGG-11/13/16/19 in the CIFAR variant (open_lth, Liu et al.): 3x3 convs with BatchNorm, one linear output.

Global average pooling before the output layer makes them take 28- or 32-pixel images alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.models import image_shape, register, scaled
from ticketlab.models.conv import conv_blocks

_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, in_channels: int, plan: list[int | str], num_classes: int, norm: str):
        super().__init__()
        self.features, channels = conv_blocks(in_channels, [p if p == "M" else (p, 3, 1) for p in plan], norm)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))  # global average pool: (B, C)
        return self.fc(x)


def _vgg(depth: int, input_shape, num_classes, width, norm) -> nn.Module:
    shape = image_shape(f"vgg{depth}", input_shape)
    plan = [p if p == "M" else scaled(p, width) for p in _PLANS[depth]]
    return VGG(shape[0], plan, num_classes, norm)


@register
def vgg11(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """VGG-11, CIFAR variant with BatchNorm and global average pooling (9.2M weights)."""
    return _vgg(11, input_shape, num_classes, width, norm)


@register
def vgg13(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """VGG-13, CIFAR variant with BatchNorm and global average pooling (9.4M weights)."""
    return _vgg(13, input_shape, num_classes, width, norm)


@register
def vgg16(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """VGG-16, CIFAR variant with BatchNorm (open_lth's VGG-16, 14.7M weights)."""
    return _vgg(16, input_shape, num_classes, width, norm)


@register
def vgg19(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "batch") -> nn.Module:
    """VGG-19, CIFAR variant with BatchNorm (the LTH paper's VGG-19, 20M weights)."""
    return _vgg(19, input_shape, num_classes, width, norm)
