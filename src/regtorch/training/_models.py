"""The models ``regtorch train --model`` builds: the tutorial's MLP and a small CNN."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from regtorch.training._errors import UsageError

__all__ = ["make_cnn", "make_mlp"]


def make_mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> nn.Sequential:
    """Return ``Flatten → Linear(in, h₁) → ReLU → … → Linear(h_k, classes)``.

    With the default ``hidden=(64, 32)`` this is the tutorial's MLP: ``Flatten → Linear(in, 64)
    → ReLU → Linear(64, 32) → ReLU → Linear(32, classes)``. Layers are named ``fc1``, ``fc2``, …
    so ``--params 'fc1.*'`` selects the first layer.

    Args:
        input_shape: Shape of one example (flattened).
        num_classes: Number of outputs.
        hidden: Hidden layer sizes.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = math.prod(input_shape)
    for index, size in enumerate(hidden, start=1):
        layers[f"fc{index}"] = nn.Linear(width, size)
        layers[f"relu{index}"] = nn.ReLU()
        width = size
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def make_cnn(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> nn.Sequential:
    """Return a small CNN for ``(C, H, W)`` images.

    ``conv1`` (16 3×3 filters) → ReLU → 2×2 max-pool → ``conv2`` (32 filters) → ReLU → max-pool
    → Flatten → ``fc1`` … (``hidden`` sizes, default 64) → ``fc{k+1}`` (classes).

    Raises:
        UsageError: If the examples are not images of at least 4×4 pixels.
    """
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise UsageError(
            f"--model cnn needs image data of shape (channels, height, width) of at least 4x4; "
            f"this data set has examples of shape {tuple(input_shape)}; use --model mlp"
        )
    channels, height, width = input_shape
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(channels, 16, 3, padding=1),
        relu_c1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(16, 32, 3, padding=1),
        relu_c2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    features = 32 * (height // 4) * (width // 4)
    for index, size in enumerate(hidden, start=1):
        layers[f"fc{index}"] = nn.Linear(features, size)
        layers[f"relu{index}"] = nn.ReLU()
        features = size
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(features, num_classes)
    return nn.Sequential(layers)
