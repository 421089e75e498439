"""Command line: `perforate demo | train | report | bench | config | architecture`."""

from __future__ import annotations

import argparse
import sys

from perforate import DendriteConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perforate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="PB beside the width ladder and the restart control")
    demo.add_argument("--out", default="runs/demo", help="where results and the figure go")
    demo.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    demo.add_argument("--hidden", type=int, default=8, help="hidden width of the PB model")
    train = sub.add_parser("train", help="train from a TOML file (see examples/*.toml)")
    train.add_argument("config_file")
    train.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    rep = sub.add_parser("report", help="reprint tables and redraw the figure of a run dir")
    rep.add_argument("run_dir")
    bench = sub.add_parser("bench", help="run a benchmark suite, or write its report")
    bench.add_argument("--suite", help="suite name (see --list)")
    bench.add_argument("--seeds", type=int, default=None, help="seeds (default: the suite's)")
    bench.add_argument("--shard", default="0/1", help="i/n: run every n-th job from the i-th")
    bench.add_argument("--results", default="benchmarks/results", help="results directory")
    bench.add_argument("--docs", default="docs", help="where --report writes")
    bench.add_argument("--list", action="store_true", help="list the suites")
    bench.add_argument("--report", action="store_true", help="write docs/benchmarks.md")
    cfg = sub.add_parser("config", help="list every setting with its default and help")
    cfg.add_argument("--markdown", action="store_true", help="as the table of docs/settings.md")
    arch = sub.add_parser("architecture", help="the library's import graph, as Markdown")
    arch.add_argument(
        "--write",
        metavar="DOC",
        help="replace the generated section of DOC (docs/architecture.md) instead of printing it",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, seeds=range(args.seeds), hidden=args.hidden)
    elif args.command == "report":
        from .demo import report

        report(args.run_dir)
    elif args.command == "bench":
        return _bench(args, parser)
    elif args.command == "train":
        from .train_config import run_experiment

        run_experiment(args.config_file, resume=args.resume)
    elif args.command == "architecture":
        from .architecture import markdown, write_section

        if args.write:
            write_section(args.write)
        else:
            print(markdown(), end="")
    elif args.command == "config":
        print(
            DendriteConfig.markdown() if args.markdown else DendriteConfig.describe(),
            end="" if args.markdown else "\n",
        )
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from .bench import SUITES, quick_suite, run_suite

    if args.list:
        for s in SUITES.values():
            print(
                f"{s.name:<14} {s.dataset:<14} {s.model}; ladder {s.ladder}, "
                f"PB widths {s.pb_widths}, {s.seeds} seeds"
            )
        return 0
    if args.suite:
        suites = {**SUITES, "quick": quick_suite()}
        if args.suite not in suites:
            parser.error(f"unknown suite {args.suite!r}; choose from {', '.join(suites)}")
        i, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= i < n:
            parser.error(f"--shard {args.shard}: need 0 <= i < n")
        run_suite(
            suites[args.suite], seeds=args.seeds, results_dir=Path(args.results), shard=(i, n)
        )
    if args.report:
        from .bench_report import write_report

        print(write_report(Path(args.results), Path(args.docs)))
    if not (args.suite or args.report):
        parser.error("bench needs --suite NAME, --report or --list")
    return 0


if __name__ == "__main__":
    sys.exit(main())
