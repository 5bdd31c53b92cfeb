"""A small 1D CNN for MNIST-1D (Greydanus & Kobak's ConvBase: three stride-2 convs, then a linear head)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models import register


class CNN1d(nn.Module):
    def __init__(self, length: int, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.ModuleList(
            [
                nn.Conv1d(in_channels, channels, 5, stride=2, padding=1),
                nn.Conv1d(channels, channels, 3, stride=2, padding=1),
                nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            ]
        )
        with torch.no_grad():
            flat = self._features(torch.zeros(1, in_channels, length)).shape[1]
        self.fc = nn.Linear(flat, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.conv:
            x = torch.relu(conv(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.conv[0].in_channels, -1)  # (B, L) or (B, C, H, W) -> (B, C, L)
        return self.fc(self._features(x))


@register
def mnist1d_cnn(input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> nn.Module:
    """Small 1D CNN for MNIST-1D: three conv layers (k5/3/3, stride 2) of `channels`, linear output."""
    # (L,) is one channel; (C, ...) keeps C channels and reads the rest as one sequence (images row by row).
    in_channels = 1 if len(input_shape) == 1 else input_shape[0]
    if math.prod(input_shape) // in_channels < 3:  # the first conv (kernel 5, padding 1) needs 3 positions
        raise TicketlabError(
            f"model 'mnist1d_cnn' reads examples of shape {tuple(input_shape)} as {in_channels} channels of length "
            f"{math.prod(input_shape) // in_channels}, too short for its convolutions: use it on mnist1d, or use "
            "rnn_classifier / transformer_classifier on (T, F) sequences"
        )
    return CNN1d(math.prod(input_shape) // in_channels, in_channels, channels, num_classes)
