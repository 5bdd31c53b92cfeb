"""Fully connected networks: the LTH paper's LeNet-300-100 and the MNIST-1D MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from ticketlab.models import register


class MLP(nn.Module):
    """Flatten, then Linear-ReLU blocks, then a linear output layer (``fc.{i}``, the last is the output)."""

    def __init__(self, in_features: int, widths: tuple[int, ...], num_classes: int):
        super().__init__()
        sizes = [in_features, *widths, num_classes]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, in_features)
        for layer in self.fc[:-1]:
            x = torch.relu(layer(x))
        return self.fc[-1](x)  # (B, num_classes)


@register
def mlp(input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (100, 100)) -> nn.Module:
    """MLP with arbitrary hidden widths (default 100-100, the MNIST-1D repository's MLP)."""
    return MLP(math.prod(input_shape), tuple(widths), num_classes)


@register
def lenet_300_100(input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (300, 100)) -> nn.Module:
    """LeNet-300-100 (LTH paper): 784-300-100-10 on 28x28 images, 266K weights."""
    return MLP(math.prod(input_shape), tuple(widths), num_classes)


@register
def mnist1d_mlp(input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (500, 500)) -> nn.Module:
    """The MNIST-1D paper's lottery-ticket MLP, 40-500-500-10."""
    return MLP(math.prod(input_shape), tuple(widths), num_classes)
