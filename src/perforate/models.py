"""Small reference models for the demo, the benchmarks and the tests."""

from __future__ import annotations

from torch import nn


def mlp(inputs: int, hidden: int, classes: int, depth: int = 1) -> nn.Module:
    """Flatten, `depth` x (Linear(hidden) + ReLU), Linear(classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def cnn2d(width: int, classes: int = 10, side: int = 28, channels: int = 1) -> nn.Module:
    """Two conv+BatchNorm units (width, 2*width channels), each pooled, and a linear head."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (side // 4) ** 2, classes),
    )


def cnn1d(width: int, length: int = 40, classes: int = 10) -> nn.Module:
    """The 1-D analogue for MNIST-1D: (B, length) in, two conv+BatchNorm units, a head."""
    return nn.Sequential(
        nn.Unflatten(1, (1, length)),
        nn.Conv1d(1, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(width, 2 * width, 5, padding=2), nn.BatchNorm1d(2 * width), nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(2 * width * (length // 4), classes),
    )
