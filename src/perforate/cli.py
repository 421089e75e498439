"""Command line: `perforate demo`."""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from . import add_dendrites, parameter_report
from .config import DendriteConfig


def _structure_demo() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 26 * 26, 32), nn.ReLU(), nn.Linear(32, 10))
    add_dendrites(model, DendriteConfig())
    print(model)
    print(parameter_report(model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perforate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="wrap a small model and print its structure")
    sub.add_parser("config", help="list every setting with its default and help")
    args = parser.parse_args(argv)
    if args.command == "demo":
        _structure_demo()
    elif args.command == "config":
        print(DendriteConfig.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
