"""Image convnets from the LTH paper: LeNet-5 and Conv-2 / Conv-4 / Conv-6.

Both adapt to the input: 1 or 3 channels, 28 or 32 pixels (the flattened size after the conv
blocks is measured with a dummy forward pass). ``width`` scales every layer, so tests can use tiny ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.models import image_shape, norm_layer, register, scaled

Plan = list[tuple[int, int, int] | str]  # (out channels, kernel, padding) per conv, "M" for a 2x2 max-pool


def conv_blocks(channels: int, plan: Plan, norm: str) -> tuple[nn.Sequential, int]:
    """Conv-norm-ReLU blocks and max-pools as ``plan`` says; also returns the output channel count."""
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out, kernel, padding = item
        layers += [nn.Conv2d(channels, out, kernel, padding=padding), norm_layer(norm, out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers), channels


class ConvNet(nn.Module):
    """Conv blocks (``features``), then a fully connected head (``fc``, the last is the output)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        plan: Plan,
        fc_widths: list[int],
        num_classes: int,
        *,
        norm: str = "none",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.features, _ = conv_blocks(input_shape[0], plan, norm)
        with torch.no_grad():  # measure the flattened size; in eval mode, so BatchNorm statistics stay untouched
            flat = self.features.eval()(torch.zeros(1, *input_shape)).numel()
        self.features.train()
        sizes = [flat, *fc_widths, num_classes]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)  # (B, C*H*W)
        for layer in self.fc[:-1]:
            x = self.dropout(torch.relu(layer(x)))
        return self.fc[-1](x)  # (B, num_classes)


@register
def lenet5(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, norm: str = "none") -> nn.Module:
    """LeNet-5: conv 6@5x5 (padded), pool, conv 16@5x5, pool, FC 120-84, output."""
    shape = image_shape("lenet5", input_shape)
    # LeCun's first conv sees 28x28 digits padded to 32x32; the second is unpadded
    plan: Plan = [(scaled(6, width), 5, 2), "M", (scaled(16, width), 5, 0), "M"]
    return ConvNet(shape, plan, [scaled(120, width), scaled(84, width)], num_classes, norm=norm)


_CONV_PLANS = {
    2: [64, 64, "M"],
    4: [64, 64, "M", 128, 128, "M"],
    6: [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


def _conv_n(depth: int, input_shape, num_classes, width, dropout, norm) -> nn.Module:
    shape = image_shape(f"conv_{depth}", input_shape)
    plan: Plan = [p if p == "M" else (scaled(p, width), 3, 1) for p in _CONV_PLANS[depth]]
    fc = [scaled(256, width), scaled(256, width)]
    return ConvNet(shape, plan, fc, num_classes, norm=norm, dropout=dropout)


@register
def conv_2(
    input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, dropout: float = 0.0, norm: str = "none"
) -> nn.Module:
    """Conv-2 (LTH paper): 3x3 convs 64-64, pool, FC 256-256, output; 4.3M weights on CIFAR-10."""
    return _conv_n(2, input_shape, num_classes, width, dropout, norm)


@register
def conv_4(
    input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, dropout: float = 0.0, norm: str = "none"
) -> nn.Module:
    """Conv-4 (LTH paper): 64-64, pool, 128-128, pool, FC 256-256, output; 2.4M weights on CIFAR-10."""
    return _conv_n(4, input_shape, num_classes, width, dropout, norm)


@register
def conv_6(
    input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, dropout: float = 0.0, norm: str = "none"
) -> nn.Module:
    """Conv-6 (LTH paper): 64-64, pool, 128-128, pool, 256-256, pool, FC 256-256, output; 2.3M weights."""
    return _conv_n(6, input_shape, num_classes, width, dropout, norm)
