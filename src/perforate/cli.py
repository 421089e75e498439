"""Command line: `perforate demo | report RUN_DIR | config`."""

from __future__ import annotations

import argparse
import sys

from .config import DendriteConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perforate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="PB beside the width ladder and the restart control")
    demo.add_argument("--out", default="runs/demo", help="where results and the figure go")
    demo.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    demo.add_argument("--hidden", type=int, default=8, help="hidden width of the PB model")
    rep = sub.add_parser("report", help="reprint tables and redraw the figure of a run dir")
    rep.add_argument("run_dir")
    sub.add_parser("config", help="list every setting with its default and help")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, seeds=range(args.seeds), hidden=args.hidden)
    elif args.command == "report":
        from .demo import report

        report(args.run_dir)
    elif args.command == "config":
        print(DendriteConfig.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
