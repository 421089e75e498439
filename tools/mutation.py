"""Mutation testing of the library core: does the test suite notice a one-token change?

    python tools/mutation.py [--modules correlation layers ...] [--per-module 40]
                             [--workers 2] [--out docs/mutation.json]

For each core module, every mutation site is listed (a flipped comparison, a swapped
arithmetic operator, a changed constant, a negated condition, a deleted statement), a
seeded sample is taken, and each mutant runs the module's tests (`-x`, stop at the first
failure) in a forked child of a process that has already imported torch, with the
mutated module imported from a private copy of the source tree. A mutant is killed when
a test fails, errors or times out; it survives when every test passes. Mutants listed in
EQUIVALENT (same behaviour by construction) are excluded from the score.

Why a small script and not mutmut or cosmic-ray: they rerun the whole interpreter start
(torch import, about 2 s) per mutant; forking after the import makes a run of a few
hundred mutants fit in minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# module -> the tests that pin it down
_CORE = ["tests/test_core_behaviours.py", "tests/test_rules.py", "tests/test_state_dicts.py"]
TESTS = {
    "correlation": ["tests/test_correlation.py", "tests/test_properties.py", *_CORE],
    "candidates": ["tests/test_correlation.py", "tests/test_layers.py", *_CORE],
    "layers": [
        "tests/test_layers.py",
        "tests/test_properties.py",
        "tests/test_correlation.py",
        "tests/test_accounting.py",
        *_CORE,
    ],
    "controller": [
        "tests/test_controller.py",
        *_CORE,
        "tests/test_training_checkpoint.py",
        "tests/test_bad_inputs.py",
        "tests/test_hostile.py",
        "tests/test_budget.py",
        "tests/test_frozen.py",
    ],
    "switching": [
        "tests/test_controller.py",
        *_CORE,
        "tests/test_bad_inputs.py",
        "tests/test_budget.py",
    ],
    "rules": ["tests/test_controller.py", *_CORE],
    "selection": ["tests/test_controller.py", *_CORE],
}

# (module, source line, mutation) of mutants that cannot change behaviour, each with why;
# listed in docs/testing.md and excluded from the score.
EQUIVALENT: frozenset[tuple[str, str, str]] = frozenset(
    {
        # A no-op cast: `.to(dtype)` of a tensor already of that dtype returns it unchanged.
        ("layers", "out = y.to(dtype) if y.dtype != dtype else y", "NotEq -> Eq"),
        # With no slot left the mask is never read; the next set_slots refreshes it.
        ("layers", "self._refresh_mask()", "Expr deleted"),
        # A format number written and read by the same code; old formats have their own test.
        ("controller", "STATE_VERSION = 2", "constant 2 changed"),
        # Single-process runs pass reduce=None, the layer's default; the multi-process test
        # (tests/test_distributed.py, 2 processes) covers it and is too slow to run per mutant.
        (
            "controller",
            "layer.share_statistics(distributed.sum_reducer(self.group), self.world_size)",
            "Expr deleted",
        ),
        # Every slot's activation has one dtype: the first one's or the second one's alike.
        ("layers", "dtype = a[0].dtype if isinstance(a, list) else a.dtype", "constant 0 changed"),
        # A layer has at least one neuron (zero-width layers are refused), so c is never 0.
        ("correlation", "n_local = e.numel() // c if c else 0", "constant 0 changed"),
        # A type alias used only in annotations (postponed by `from __future__ import annotations`).
        ("rules", "Layers = dict[str, DendriticLayer]", "Assign deleted"),
    }
)

_CMP_FLIP = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BIN_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # which site of the module, in walk order
    line: int
    description: str


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            out.add(id(body[0]))
            out.add(id(body[0].value))
    return out


def sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every mutable node with a description of its mutation, in a stable order."""
    skip = _docstring_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP_FLIP:
            out.append(
                (node, f"{type(node.ops[0]).__name__} -> {_CMP_FLIP[type(node.ops[0])].__name__}")
            )
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN_SWAP:
            out.append((node, f"{type(node.op).__name__} -> {_BIN_SWAP[type(node.op)].__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            out.append((node, f"constant {node.value!r} changed"))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            out.append((node, "condition negated"))
        elif isinstance(node, ast.BoolOp):
            out.append((node, f"{type(node.op).__name__} swapped"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Return, ast.Raise)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        ):
            out.append((node, f"{type(node).__name__} deleted"))
    return out


def _changed_constant(value):
    if isinstance(value, bool):
        return not value
    if value == 0:
        return 1
    if value == 1:
        return 0 if isinstance(value, int) else 2.0
    return value + 1 if isinstance(value, int) else value * 2


def mutate(source: str, index: int) -> str:
    tree = ast.parse(source)
    node, _ = sites(tree)[index]
    if isinstance(node, ast.Compare):
        node.ops[0] = _CMP_FLIP[type(node.ops[0])]()
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN_SWAP:
        node.op = _BIN_SWAP[type(node.op)]()
    elif isinstance(node, ast.Constant):
        node.value = _changed_constant(node.value)
    elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    else:  # a deleted statement: `pass` keeps the block valid
        for parent in ast.walk(tree):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(parent, field, None)
                if isinstance(block, list) and node in block:
                    block[block.index(node)] = ast.Pass()
    return ast.unparse(ast.fix_missing_locations(tree))


def mutants(module: str, per_module: int, seed: int) -> list[Mutant]:
    source = (SRC / "perforate" / f"{module}.py").read_text()
    all_sites = sites(ast.parse(source))
    chosen = sorted(
        random.Random(f"{seed}:{module}").sample(
            range(len(all_sites)), min(per_module, len(all_sites))
        )
    )
    return [Mutant(module, i, all_sites[i][0].lineno, all_sites[i][1]) for i in chosen]


def is_equivalent(m: Mutant) -> bool:
    """Whether `m` is listed in EQUIVALENT (matched by its source line, not its number)."""
    line = (SRC / "perforate" / f"{m.module}.py").read_text().splitlines()[m.line - 1]
    return any(
        mod == m.module and code in line and m.description == desc for mod, code, desc in EQUIVALENT
    )


def _run_child(mutant: Mutant, workdir: Path, timeout: int) -> str:
    """Fork; the child imports the mutated tree and runs the tests. 'killed'/'survived'."""
    tree = workdir / "src"
    target = tree / "perforate" / f"{mutant.module}.py"
    original = (SRC / "perforate" / f"{mutant.module}.py").read_text()
    target.write_text(mutate(original, mutant.index))
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.path.insert(0, str(tree))
            os.environ["PYTHONPATH"] = str(tree)
            import pytest

            code = pytest.main(
                [
                    "-x",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "-p",
                    "no:randomly",
                    *[str(ROOT / t) for t in TESTS[mutant.module]],
                ]
            )
        finally:
            os._exit(int(code))
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            target.write_text(original)
            return "killed (timeout)"
        time.sleep(0.05)
    target.write_text(original)
    return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=list(TESTS))
    parser.add_argument("--per-module", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--out", default=str(ROOT / "docs" / "mutation.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PERFORATE_TEST_THREADS"] = "1"
    import torch  # noqa: F401  (imported once, inherited by every fork)

    todo = [
        m
        for mod in args.modules
        for m in mutants(mod, args.per_module, args.seed)
        if not is_equivalent(m)
    ]
    results: dict[Mutant, str] = {}
    workdirs = []
    for _ in range(args.workers):
        d = Path(tempfile.mkdtemp(prefix="perforate-mutation-"))
        shutil.copytree(SRC, d / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        workdirs.append(d)
    start = time.monotonic()
    # Workers: fork one driver per workdir, each takes every n-th mutant.
    readers = []
    for w, d in enumerate(workdirs):
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            out = []
            for m in todo[w :: args.workers]:
                out.append([asdict(m), _run_child(m, d, args.timeout)])
            os.write(wfd, json.dumps(out).encode())
            os._exit(0)
        os.close(wfd)
        readers.append((pid, r))
    for pid, r in readers:
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.waitpid(pid, 0)
        for m, outcome in json.loads(b"".join(chunks)):
            results[Mutant(**m)] = outcome
    for d in workdirs:
        shutil.rmtree(d)
    summary = {}
    for mod in args.modules:
        rows = [(m, o) for m, o in results.items() if m.module == mod]
        killed = sum(o.startswith("killed") for _, o in rows)
        summary[mod] = {
            "mutants": len(rows),
            "killed": killed,
            "score": round(100 * killed / max(len(rows), 1), 1),
            "survivors": [
                f"line {m.line}: {m.description}"
                for m, o in sorted(rows, key=lambda x: x[0].line)
                if o == "survived"
            ],
        }
        print(f"{mod:<12} {killed:>3}/{len(rows):<3} killed  {summary[mod]['score']:5.1f}%")
    minutes = (time.monotonic() - start) / 60
    print(f"{len(results)} mutants in {minutes:.1f} min")
    Path(args.out).write_text(
        json.dumps(
            {
                "per_module": args.per_module,
                "seed": args.seed,
                "minutes": round(minutes, 1),
                "modules": summary,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
