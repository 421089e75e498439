"""Command line: `perforate compare | demo | train | report | bench | config | architecture`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from perforate import DendriteConfig, PerforateError, __version__

from .datasets import DatasetError


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


# Optional modules the commands import, and the pip extra that installs each.
EXTRAS = {
    "matplotlib": "plot",
    "sklearn": "bench",
    "mnist1d": "bench",
    "peft": "bench",
    "scipy": "bench",
    "tqdm": "bench",
    "lightning": "lightning",
    "transformers": "transformers",
    "accelerate": "transformers",
}


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error prints one line to stderr and returns 2 (no traceback)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _error("interrupted; run the same command again to continue where it stopped")
        return 130
    except BrokenPipeError:
        # The reader went away (`perforate bench --list | head`): stop quietly, as the
        # Python docs advise, so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        _error(
            f"this command needs {top!r}, which is not installed; "
            f"install it with: pip install 'perforate[{EXTRAS[top]}]'"
        )
        return 2
    except (PerforateError, DatasetError, json.JSONDecodeError, OSError) as exc:
        _error(str(exc))
        return 2


def _error(message: str) -> None:
    """The one line of a failed command, on a line of its own: a progress bar still on
    screen (a command that failed mid-run) is closed first, which ends its line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
    print(f"perforate: error: {message}", file=sys.stderr)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perforate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"perforate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser(
        "compare",
        help="do dendrites pay on my model? arms over paired seeds, a verdict, the best model",
        description="Run a study file's arms over paired seeds (resumable: run it again "
        "to continue), then write compare.json, compare.md and compare.png in --out.",
    )
    cmp_.add_argument("study", nargs="?", help="the study file (TOML); docs/study_file.md")
    cmp_.add_argument(
        "--seeds", default=None, help='number of seeds, or "auto" (default: the file\'s, else 3)'
    )
    cmp_.add_argument(
        "--out", default=None, help="output folder (default: [run] dir, else runs/<file name>)"
    )
    cmp_.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N"
    )
    cmp_.add_argument(
        "--jobs", type=_count(1), default=1, help="local worker processes (default 1)"
    )
    cmp_.add_argument(
        "--shard", default="0/1", help="i/n: run every n-th chain of runs from the i-th"
    )
    cmp_.add_argument("--arms", default=None, help="comma-separated arms to run now (default: all)")
    cmp_.add_argument("--list-arms", action="store_true", help="list the arms and what each is")
    cmp_.add_argument("-v", "--verbose", action="store_true", help="log every controller decision")
    demo = sub.add_parser(
        "demo", help="the bundled digits study: PB beside its controls and the width ladder"
    )
    demo.add_argument("--out", default="runs/demo", help="where results and the figure go")
    demo.add_argument("--seeds", type=_count(1), default=5, help="number of seeds (default 5)")
    demo.add_argument("--hidden", type=_count(1), default=8, help="hidden width of the PB model")
    train = sub.add_parser(
        "train", help="train from a TOML file (`perforate examples` lists the bundled ones)"
    )
    train.add_argument("config_file")
    train.add_argument(
        "--arm", default="pb", help="the arm to run (default pb: [dendrites] as it is)"
    )
    train.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N"
    )
    resume = train.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's checkpoint (an error if there is none)",
    )
    resume.add_argument(
        "--resume-if-present",
        action="store_true",
        help="continue from the run's checkpoint if there is one",
    )
    rep = sub.add_parser(
        "report", help="rewrite a compare folder's report from its ledger, or redraw a run dir"
    )
    rep.add_argument("run_dir")
    bench = sub.add_parser("bench", help="run a benchmark suite, or write its report")
    bench.add_argument("--suite", help="suite name (see --list)")
    bench.add_argument("--seeds", type=_count(1), default=None, help="seeds (default: the suite's)")
    bench.add_argument(
        "--shard", default="0/1", help="i/n: run every n-th chain of runs from the i-th"
    )
    bench.add_argument("--results", default="benchmarks/results", help="results directory")
    bench.add_argument("--docs", default="docs", help="where --report writes")
    bench.add_argument("--list", action="store_true", help="list the suites")
    bench.add_argument("--report", action="store_true", help="write docs/benchmarks.md")
    sub.add_parser("examples", help="list the bundled `perforate train` files and their paths")
    cfg = sub.add_parser("config", help="list every setting with its default and help")
    cfg.add_argument("--markdown", action="store_true", help="as the table of docs/settings.md")
    cfg.add_argument(
        "--study-file",
        action="store_true",
        help="the format of study files (perforate compare) instead, as docs/study_file.md",
    )
    cfg.add_argument(
        "--train-file",
        action="store_true",
        help="the same as --study-file: train and compare read one format",
    )
    arch = sub.add_parser("architecture", help="the library's import graph, as Markdown")
    arch.add_argument(
        "--write",
        metavar="DOC",
        help="replace the generated section of DOC (docs/architecture.md) instead of printing it",
    )
    args = parser.parse_args(argv)
    if args.command == "compare":
        return _compare(args, parser)
    if args.command == "demo":
        return _demo(args)
    elif args.command == "report":
        from pathlib import Path

        if (Path(args.run_dir) / "runs.jsonl").is_file():  # a compare study's folder
            from .compare import report_folder

            report_folder(args.run_dir)
        else:
            from .demo import report

            report(args.run_dir)
    elif args.command == "bench":
        return _bench(args, parser)
    elif args.command == "train":
        from .train_config import run_experiment

        run_experiment(
            args.config_file,
            resume="if-present" if args.resume_if_present else args.resume,
            device=args.device,
            arm=args.arm,
        )
    elif args.command == "architecture":
        from .architecture import application_markdown, markdown, write_section

        if args.write:
            write_section(args.write)
        else:
            print(markdown() + "\n" + application_markdown(), end="")
    elif args.command == "examples":
        from pathlib import Path

        folder = Path(__file__).parent / "examples"
        for path in sorted(folder.glob("*.toml")):
            first = path.read_text().splitlines()[0].lstrip("# ").strip()
            print(f"{path}\n    {first}")
        print("Copy one and edit it; `perforate config` lists every [dendrites] setting.")
    elif args.command == "config" and (args.study_file or args.train_file):
        from .study import schema_markdown

        print(schema_markdown(), end="")
    elif args.command == "config":
        print(
            DendriteConfig.markdown() if args.markdown else DendriteConfig.describe(),
            end="" if args.markdown else "\n",
        )
    return 0


def _shard(text: str, parser: argparse.ArgumentParser) -> tuple[int, int]:
    """`--shard i/n` as (i, n), or a usage error."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        parser.error(f"--shard {text!r}: write i/n, e.g. 0/2")
    if not 0 <= i < n:
        parser.error(f"--shard {text}: need 0 <= i < n")
    return i, n


def _demo(args: argparse.Namespace) -> int:
    """The bundled digits study on the compare engine (examples/digits_study.toml)."""
    from pathlib import Path

    from .compare import compare
    from .study import Study

    study = Study.from_toml(Path(__file__).parent / "examples" / "digits_study.toml")
    study.model["kwargs"]["hidden"] = args.hidden
    study = Study(**{**vars(study)})  # validated again with the new width
    compare(study, out=args.out, seeds=args.seeds, progress=sys.stderr.isatty())
    return 0


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import logging

    from .arms import LADDER, REGISTRY

    if args.list_arms:
        for arm in REGISTRY.values():
            print(f"{arm.name:<16} {arm.help}")
        print(
            f"{LADDER:<16} the plain model at other widths ([compare] ladder; needs [model] width)"
        )
        return 0
    if not args.study:
        parser.error("compare needs a study file (or --list-arms)")
    seeds: int | str | None = args.seeds
    if seeds is not None and seeds != "auto":
        try:
            seeds = _count(1)(seeds)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"--seeds: {exc} (or auto)")
        if seeds > 1000:
            parser.error(f"--seeds {seeds}: at most 1000")
    if args.out is not None and not args.out.strip():  # '' would be the current folder
        parser.error("--out is empty; give a folder (it will hold the study's files)")
    if args.out is not None and os.path.islink(args.out) and not os.path.exists(args.out):
        parser.error(f"--out {args.out}: a symbolic link to nothing (or to itself)")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: is a file; give a folder")
    i, n = _shard(args.shard, parser)
    arms = None if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .compare import compare

    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ModuleNotFoundError:  # pragma: no cover - tqdm is in the bench extra
        import contextlib

        logging_redirect_tqdm = contextlib.nullcontext  # type: ignore[assignment]
    with logging_redirect_tqdm():
        report = compare(
            args.study,
            out=args.out,
            seeds=seeds,
            device=args.device,
            jobs=args.jobs,
            shard_of=(i, n),
            arms=arms,
            progress=sys.stderr.isatty(),
        )
    del report  # written to the output folder; None while other shards still run
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The built-in suites (suites.py) on the compare engine, and their report."""
    from pathlib import Path

    from .suites import SUITES, run_suite

    if args.list:
        for s in SUITES.values():
            studies = ", ".join(step.study.name for step in s.steps(Path(args.results)))
            print(f"{s.name:<18} {s.regime:<12} {s.about} [{studies}]")
        return 0
    if not (args.suite or args.report):
        parser.error("bench needs --suite NAME, --report or --list")
    if args.suite:
        if args.suite not in SUITES:
            parser.error(f"unknown suite {args.suite!r}; choose from {', '.join(SUITES)}")
        i, n = _shard(args.shard, parser)
        run_suite(args.suite, Path(args.results), seeds=args.seeds, shard=(i, n))
    if args.report:
        from .bench_report import load, write_report
        from .cost_report import write_cost_report

        studied = load(Path(args.results))
        print(write_report(studied, Path(args.results), Path(args.docs)))
        print(write_cost_report(studied, Path(args.docs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
