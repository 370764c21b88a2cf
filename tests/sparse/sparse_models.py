"""Small models shared by the tests of coupled groups and of shrink's graph path."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """A ResNet basic block: ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
