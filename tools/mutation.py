"""Mutation testing of the library: does the test suite notice a one-token change?

    python tools/mutation.py [--modules correlation layers ...] [--per-module 20]
                             [--workers 2] [--seed 0] [--out docs/mutation.json]

Every library module (src/perforate/*.py; the application in experiments/ and the
integrations are not the library) has its tests in TESTS. For each module, every mutation
site is listed (a flipped comparison, a swapped arithmetic operator, a changed constant, a
negated condition, a swapped and/or, a deleted statement), a seeded sample is taken, and
each mutant runs the module's tests (`-x`, stop at the first failure) in a forked child of
a process that has already imported torch, with the mutated module imported from a
private copy of the source tree. A mutant is killed when a test fails, errors or times out;
it survives when every test passes. Mutants listed in EQUIVALENT (same behaviour by
construction) are excluded from the score.

Before any mutant, each module's tests run once unmutated (the baseline): a test that
already fails would kill every mutant, so it is left out (`--deselect`) and named in the
output; its time sets the mutants' timeout (5x, at least 30 s). The sources are copied once
at the start, so edits made while the tool runs do not mix into its mutants.

Tests that start other Python processes (test_distributed, test_kill, test_resume,
test_fuzz_files) import the unmutated tree and are not listed: they could not notice.

Why a small script and not mutmut or cosmic-ray: they rerun the whole interpreter start
(torch import, about 2 s) per mutant; forking after the import makes a run of a few
hundred mutants fit in minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
LIBRARY = sorted(p.stem for p in (SRC / "perforate").glob("*.py") if p.stem != "__init__")

# module -> the tests that pin it down, the most specific (and quickest to fail) first.
_CORE = ["tests/test_core_behaviours.py", "tests/test_rules.py", "tests/test_state_dicts.py"]
TESTS = {
    "accounting": [
        "tests/test_pins_accounting.py",
        "tests/test_accounting.py",
        "tests/test_rules.py",
        "tests/test_budget.py",
    ],
    "candidate_variants": [
        "tests/test_pins_candidate_variants.py",
        "tests/test_candidate_variants.py",
    ],
    "candidates": [
        "tests/test_pins_candidates.py",
        "tests/test_correlation.py",
        "tests/test_layers.py",
        "tests/test_pins_candidate_variants.py",
        # The draw made on the generator's device and copied (a generator posing as cpu:0).
        "tests/test_cross_device.py::test_e105_candidates_drawn_for_another_device_equal_the_direct_draw",
        *_CORE,
        "tests/test_hostile_round2.py",
    ],
    "checkpoint": [
        "tests/test_pins_checkpoint.py",
        "tests/test_checkpoint.py",
        "tests/test_state_dicts.py",
        "tests/test_properties.py",
        "tests/test_hostile.py",
    ],
    "config": ["tests/test_pins_config.py", "tests/test_config.py", "tests/test_rules.py"],
    "controller": [
        "tests/test_pins_controller.py",
        "tests/test_controller.py",
        *_CORE,
        "tests/test_training_checkpoint.py",
        "tests/test_bad_inputs.py",
        "tests/test_hostile.py",
        "tests/test_budget.py",
        "tests/test_frozen.py",
        "tests/test_issue21_controller.py",
        "tests/test_hostile_round2.py",
        "tests/test_pins_switching.py",  # the direction check at the end of a run
        "tests/test_candidate_variants.py",  # rules bound to the model (output_error)
    ],
    "convert": [
        "tests/test_convert.py",
        "tests/test_pins_convert.py",
        "tests/test_architectures.py",
        "tests/test_to_plain.py",
        "tests/test_checkpoint.py",
        "tests/test_rules.py",
        "tests/test_hostile_round2.py",
        "tests/test_issue21_controller.py",  # remove_dendrites inside a dendrite phase
    ],
    "correlation": [
        "tests/test_pins_correlation.py",
        "tests/test_correlation.py",
        "tests/test_properties.py",
        *_CORE,
    ],
    "distributed": ["tests/test_pins_distributed.py"],
    # Exception classes only: no statement the operators above can change (0 sites).
    "errors": ["tests/test_hostile.py"],
    "events": ["tests/test_pins_events.py", "tests/test_controller.py", "tests/test_hostile.py"],
    "files": [
        "tests/test_pins_files.py",
        "tests/test_hostile.py",
        "tests/test_checkpoint.py",
        "tests/test_training_checkpoint.py",
    ],
    "kinds": [
        "tests/test_pins_kinds.py",
        "tests/test_layers.py",
        "tests/test_convert.py",
        "tests/test_correlation.py",
    ],
    "layers": [
        "tests/test_pins_layers.py",
        "tests/test_layers.py",
        "tests/test_properties.py",
        "tests/test_correlation.py",
        "tests/test_accounting.py",
        *_CORE,
        "tests/test_hostile_round2.py",
    ],
    "optimizers": [
        "tests/test_pins_optimizers.py",
        "tests/test_controller.py",
        *_CORE,
        "tests/test_training_checkpoint.py",
        "tests/test_issue21_controller.py",
    ],
    "rules": [
        "tests/test_pins_rules.py",
        "tests/test_controller.py",
        *_CORE,
        "tests/test_candidate_variants.py",
    ],
    "selection": ["tests/test_controller.py", *_CORE],
    "snapshots": [
        "tests/test_pins_snapshots.py",
        "tests/test_controller.py",
        "tests/test_core_behaviours.py",
    ],
    "switching": [
        "tests/test_pins_switching.py",
        "tests/test_controller.py",
        *_CORE,
        "tests/test_bad_inputs.py",
        "tests/test_budget.py",
        "tests/test_issue21_controller.py",
    ],
    "trainability": [
        "tests/test_pins_trainability.py",
        "tests/test_frozen.py",
        "tests/test_controller.py",
        "tests/test_core_behaviours.py",
        "tests/test_issue21_controller.py",
    ],
    "training_state": [
        "tests/test_pins_training_state.py",
        "tests/test_cross_device.py",  # CUDA RNG states, with torch.cuda mocked
        "tests/test_training_checkpoint.py",
        "tests/test_hostile.py",
    ],
    "validation": [
        "tests/test_pins_validation.py",
        "tests/test_hostile.py",
        "tests/test_checkpoint.py",
        "tests/test_training_checkpoint.py",
    ],
}

# (module, source line, mutation[, which]) of mutants that cannot change behaviour, each
# with why; listed in docs/testing.md and excluded from the score. `which` (0, 1, ...)
# picks one of several same mutations on that line, left to right.
EQUIVALENT: frozenset[tuple] = frozenset(
    {
        # A no-op cast: `.to(dtype)` of a tensor already of that dtype returns it unchanged.
        ("layers", "out = y.to(dtype) if y.dtype != dtype else y", "NotEq -> Eq"),
        # With no slot left the mask is never read; the next set_slots refreshes it.
        ("layers", "self.cascade_weight = None\nself._refresh_mask()", "Expr deleted"),
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
        # A wrapped layer has at least one neuron (zero-width layers are refused), so the
        # count tensor is never empty and the fallback is never taken.
        (
            "accounting",
            "max_per_neuron=int(counts.max()) if counts.numel() else 0",
            "constant 0 changed",
        ),
        # `None` falls through to `return group`, which is None: the early return is a shortcut.
        (
            "distributed",
            'otherwise the group its processes share."""\nif group is None:\nreturn None',
            "Return deleted",
        ),
        # ClosedFormPool.__init__ runs right after CandidatePool.__init__ set `reduce` to
        # None: the check cannot fire (share_statistics refuses a reducer; tested).
        (
            "candidate_variants",
            "if self.reduce is not None:\nraise PhaseError(",
            "Raise deleted",
        ),
        # cxx is the (F, F) input covariance: square, so shape[0] == shape[1].
        ("candidate_variants", "f = cxx.shape[0]", "constant 0 changed"),
        # add_dendrites re-raises an unsupported layer's error unless skip_unsupported;
        # without that `raise`, DendriticLayer's constructor runs the same check and raises
        # the same UnsupportedLayerError, before anything is replaced.
        ("convert", "if config.skip_unsupported:\ncontinue\nraise", "Raise deleted"),
        # torch.export inlines every module: the only call_module node of an exported
        # layer is its guard, so `or` erases the same nodes as `and`.
        (
            "convert",
            'if node.op == "call_module" and node.target == "_guards_fn":',
            "And swapped",
        ),
        # An exported layer's graph returns its one tensor as a one-element tuple: the
        # isinstance and the length hold together, so `and` and `or` agree.
        (
            "convert",
            "if isinstance(result, (tuple, list)) and len(result) == 1:",
            "And swapped",
        ),
        # The window's "stepping" is read only by a dendrite epoch, and every end_epoch
        # sets it to False before one can come; its "steps" restart at every dendrite
        # phase's start. The first value of neither is ever read.
        (
            "controller",
            'self._window = {"steps": 0, "stepping": False, "install_due": False,',
            "constant False changed",
            0,
        ),
        ("controller", 'self._window = {"steps": 0, "stepping": False,', "constant 0 changed"),
        # A shortcut: with one slot the general path has no cascade term either, and with
        # none it is never reached; `k == 0` computes the same as `k == 1`.
        ("layers", "if self.cascade_weight is None or k == 1:", "constant 1 changed"),
        # Linear's early return: the general reshape adds no axis for it (spatial_dims 0).
        (
            "kinds",
            'to broadcast over this kind\'s output."""\nif self.spatial_dims == 0:\nreturn t',
            "Return deleted",
        ),
        # Which axis to_plain keeps fixed when exporting: Dim.AUTO lets torch.export find the
        # static sizes itself (the feature axis is static either way, fixed by the weights),
        # and the graphs keep no size guard, so any batch, length or spatial size runs.
        (
            "convert",
            "fixed = x.dim() - 1 if layer.kind.spatial_dims == 0 else 1",
            "condition negated",
        ),
        ("convert", "fixed = x.dim() - 1 if layer.kind.spatial_dims == 0 else 1", "Eq -> NotEq"),
        # Callers only test the verdict's truth (`not`, `or`): None and False alike.
        ("controller", "layer.stats.reset()\nreturn False", "Return deleted"),
        # The fast path of the replaced-layer check: without its `return` the full search
        # by name runs and finds nothing replaced either (slower, same behaviour).
        (
            "controller",
            "if all(parent._modules.get(key) is child for parent, key, child in self._placement):"
            "\nreturn",
            "Return deleted",
        ),
        # The same fixed axis: any constant in it leaves the export to Dim.AUTO as above.
        (
            "convert",
            "fixed = x.dim() - 1 if layer.kind.spatial_dims == 0 else 1",
            "constant 1 changed",
        ),
        ("convert", "fixed = x.dim() - 1 if layer.kind.spatial_dims == 0 else 1", "Sub -> Add"),
        (
            "convert",
            "fixed = x.dim() - 1 if layer.kind.spatial_dims == 0 else 1",
            "constant 0 changed",
        ),
        # After the rename the link's name is gone: the clean-up checks existence first.
        (
            "files",
            'os.replace(link, path.with_name(path.name + ".prev"))\nlink = None',
            "Assign deleted",
        ),
        # A first dendrite has no earlier slot: its cascade is (n, 0), and writing an empty
        # block (the guard on shape[0] >= 1 instead) changes nothing.
        (
            "layers",
            "if cascade is not None and self.cascade_weight is not None and cascade.shape[1]:",
            "constant 1 changed",
        ),
        # install, the only caller, passes the pool's mean activations when none are given:
        # the check cannot fire.
        ("layers", "if activation_mean is None:\nraise InstallError(", "Raise deleted"),
        # kind_of's last line: falling off the end returns None too.
        ("kinds", "return kind\nreturn None", "Return deleted"),
        # Linear's LayerNorm rule: the general rule below gives the same for spatial_dims 0.
        ("kinds", "if kind.spatial_dims == 0:\nreturn shape == (c,)", "Return deleted"),
        # The numpy generator is set last: when its own set_state fails it has not changed,
        # and nothing after it can fail, so putting it back (or failing to) changes nothing.
        ("training_state", "np.random.set_state(current[2])", "Expr deleted"),
        ("training_state", "np.random.set_state(current[2])", "constant 2 changed"),
        # Every install summary (selection.BestCandidate) has "installed": the log line's
        # default is never read.
        (
            "controller",
            'sum(int(v.get("installed", 0)) for v in summary.values()),',
            "constant 0 changed",
        ),
        ("controller", "int(v.get('installed', 0))", "constant 0 changed"),
        # The float32 batch means meet only float64 running sums afterwards, and the
        # promotion to float64 is exact: converting them first changes no value.
        ("correlation", "mean_v, mean_e = mean_v.double(), mean_e.double()", "Assign deleted"),
        # The paper's pool ignores the layer input the tap would save for it (memory only).
        ("candidates", "needs_input: ClassVar[bool] = False", "constant False changed"),
        # The generator is drawn from only after _before_restructure kept the whole state
        # (the generator included), which _undo applies first: this restore repeats it.
        ("controller", 'self._generator.set_state(point["generator"])', "Expr deleted"),
        # _umask's fallback sets any mask for an instant to read the old one, and puts the old
        # one back: which mask it sets is never seen.
        ("files", "mask = os.umask(0o022)", "constant 18 changed"),
        # `scheduler` is None already when the copy fails: setting it again changes nothing.
        (
            "optimizers",
            "except Exception:  # a state that cannot be copied\nscheduler = None",
            "Assign deleted",
        ),
        # Fixed phases count epochs only: the default number of samples is never read.
        (
            "switching",
            "self.phase_epochs = 0\n\n"
            "def dendrite_epoch(self, correlation: float, samples: int = 0)",
            "constant 0 changed",
        ),
        # The hooks sit on the copy's grown layers, which to_plain replaces by their exported
        # graphs right after: left or removed, nothing runs them again.
        ("convert", "for h in handles:\nh.remove()", "Expr deleted"),
        # `{**merged, **changes}` applies the changes again: the update before it is moot.
        ("config", "merged.update(changes)", "Expr deleted"),
        # The undo point is read only inside end_epoch, which sets a fresh one first: a
        # stale one left after a call is never used.
        ("controller", "finally:\nself._undo_point = None", "Assign deleted"),
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


def _source(module: str, tree: Path = SRC) -> str:
    return (tree / "perforate" / f"{module}.py").read_text()


def mutants(module: str, per_module: int, seed: int, tree: Path = SRC) -> list[Mutant]:
    """A seeded sample of `per_module` of the module's mutation sites."""
    all_sites = sites(ast.parse(_source(module, tree)))
    chosen = sorted(
        random.Random(f"{seed}:{module}").sample(
            range(len(all_sites)), min(per_module, len(all_sites))
        )
    )
    return [Mutant(module, i, all_sites[i][0].lineno, all_sites[i][1]) for i in chosen]


def _occurrence(m: Mutant, tree: Path) -> int:
    """Which of the same mutations on its line `m` is, left to right (0: the first)."""
    same = [
        (node.col_offset, i)
        for i, (node, desc) in enumerate(sites(ast.parse(_source(m.module, tree))))
        if node.lineno == m.line and desc == m.description
    ]
    return [i for _, i in sorted(same)].index(m.index)


def is_equivalent(m: Mutant, tree: Path = SRC) -> bool:
    """Whether `m` is listed in EQUIVALENT, matched by its source line, not its number (an
    entry of several lines, joined by newlines, names the lines before it too)."""
    lines = [line.strip() for line in _source(m.module, tree).splitlines()]
    for mod, code, desc, *which in EQUIVALENT:
        if mod != m.module or desc != m.description:
            continue
        want = [c.strip() for c in code.split("\n")]
        first = m.line - len(want)
        if first < 0:
            continue
        have = lines[first : m.line]
        if not all(w in h for w, h in zip(want, have, strict=True)):
            continue
        if not which or which[0] == _occurrence(m, tree):
            return True
    return False


def _pytest_args(module: str, deselect: list[str], stop_first: bool) -> list[str]:
    return [
        *(["-x"] if stop_first else []),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        *[f"--deselect={d}" for d in deselect],
        *[str(ROOT / t) for t in TESTS[module]],
    ]


class _Failures:
    """A pytest plugin that remembers the node ids of failing tests (for the baseline)."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)


def _fork_pytest(tree: Path, args: list[str], timeout: float, report: Path | None) -> str:
    """Run pytest on `args` in a forked child importing `tree`; 'passed', 'failed' or
    'timeout'. With `report`, the failing node ids are written there as JSON."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.path.insert(0, str(tree))
            os.environ["PYTHONPATH"] = str(tree)
            os.chdir(ROOT)
            import pytest

            plugin = _Failures()
            code = pytest.main(args, plugins=[plugin])
            if report is not None:
                report.write_text(json.dumps({"code": int(code), "failed": plugin.failed}))
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
            return "timeout"
        time.sleep(0.02)
    return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"


# Per pool worker: its private copy of the source tree.
_WORKDIR: list[Path] = []


def _init_worker(dirs) -> None:
    _WORKDIR.append(Path(dirs.get()))


def _baseline(module: str) -> tuple[str, list[str], int, float]:
    """The module's tests on the unmutated tree: (module, failing node ids, exit code, s)."""
    tree = _WORKDIR[0] / "src"
    report = _WORKDIR[0] / "baseline.json"
    report.unlink(missing_ok=True)
    start = time.monotonic()
    _fork_pytest(tree, _pytest_args(module, [], stop_first=False), 1800, report)
    seconds = time.monotonic() - start
    got = json.loads(report.read_text()) if report.exists() else {"code": -1, "failed": []}
    return module, got["failed"], got["code"], seconds


def _run_mutant(job: tuple[Mutant, list[str], float]) -> tuple[Mutant, str, float]:
    """Mutate one module of this worker's tree, run its tests, put the module back."""
    mutant, deselect, timeout = job
    tree = _WORKDIR[0] / "src"
    target = tree / "perforate" / f"{mutant.module}.py"
    original = target.read_text()
    target.write_text(mutate(original, mutant.index))
    start = time.monotonic()
    try:
        outcome = _fork_pytest(tree, _pytest_args(mutant.module, deselect, True), timeout, None)
    finally:
        target.write_text(original)
    result = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}[outcome]
    return mutant, result, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=LIBRARY)
    parser.add_argument("--per-module", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per mutant (default: 5x the module's baseline, at least 30)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "mutation.json"))
    args = parser.parse_args()
    missing = sorted(set(LIBRARY) - set(TESTS))
    unknown = sorted(set(args.modules) - set(TESTS))
    if missing or unknown:
        print(f"modules without tests in TESTS: {missing or unknown}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PERFORATE_TEST_THREADS"] = "1"
    # Imported once, inherited by every fork: what the tests import that is not perforate.
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    root = Path(tempfile.mkdtemp(prefix="perforate-mutation-"))
    # One snapshot of the sources, taken now: other edits during the run do not leak in.
    snapshot = root / "snapshot"
    shutil.copytree(SRC, snapshot, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    dirs = multiprocessing.get_context("fork").Queue()
    for w in range(args.workers):
        shutil.copytree(snapshot, root / f"w{w}" / "src")
        dirs.put(str(root / f"w{w}"))
    start = time.monotonic()
    chosen = {mod: mutants(mod, args.per_module, args.seed, snapshot) for mod in args.modules}
    n_sites = {mod: len(sites(ast.parse(_source(mod, snapshot)))) for mod in args.modules}
    summary: dict[str, dict] = {}
    with multiprocessing.get_context("fork").Pool(
        args.workers, initializer=_init_worker, initargs=(dirs,)
    ) as pool:
        # A module with no mutation site (errors.py: exception classes) needs no baseline.
        base = {mod: ([], 0, 0.0) for mod in args.modules if not chosen[mod]}
        todo = [mod for mod in args.modules if chosen[mod]]
        for mod, failed, code, seconds in pool.imap_unordered(_baseline, todo):
            base[mod] = (failed, code, seconds)
            if code not in (0, 1):  # 1: some tests failed; anything else: no usable run
                print(
                    f"{mod}: its tests do not run unmutated (pytest exit {code}); skipped",
                    flush=True,
                )
            elif failed:
                print(
                    f"{mod}: {len(failed)} test(s) fail unmutated, left out: {failed}", flush=True
                )
        jobs = []
        for mod in args.modules:
            failed, code, seconds = base[mod]
            if code not in (0, 1):
                continue
            timeout = args.timeout or max(30.0, 5 * seconds)
            jobs += [(m, failed, timeout) for m in chosen[mod] if not is_equivalent(m, snapshot)]
        results: dict[Mutant, tuple[str, float]] = {}
        for m, outcome, seconds in pool.imap_unordered(_run_mutant, jobs):
            results[m] = (outcome, seconds)
            if outcome == "survived":
                print(f"  survived: {m.module} line {m.line}: {m.description}", flush=True)
            if len(results) % 50 == 0:
                minutes = (time.monotonic() - start) / 60
                print(f"  {len(results)}/{len(jobs)} mutants run, {minutes:.1f} min", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    for mod in args.modules:
        failed, code, base_seconds = base[mod]
        rows = sorted(
            ((m, o) for m, o in results.items() if m.module == mod), key=lambda x: x[0].line
        )
        killed = sum(o.startswith("killed") for _, (o, _) in rows)
        summary[mod] = {
            "sites": n_sites[mod],
            "sampled": len(chosen[mod]),
            "equivalent": len(chosen[mod]) - len(rows) if code in (0, 1) else 0,
            "mutants": len(rows),
            "killed": killed,
            "score": round(100 * killed / len(rows), 1) if rows else None,
            "survivors": [
                f"line {m.line}: {m.description}" for m, (o, _) in rows if o == "survived"
            ],
            "timeouts": sum(o == "killed (timeout)" for _, (o, _) in rows),
            "tests": TESTS[mod],
            "baseline_seconds": round(base_seconds, 1),
            "worker_seconds": round(sum(s for _, (_, s) in rows), 1),
        }
        if failed:
            summary[mod]["failing_unmutated"] = failed
        if code not in (0, 1):
            summary[mod]["skipped"] = f"tests do not run unmutated (pytest exit {code})"
        elif not summary[mod]["sites"]:
            summary[mod]["note"] = "no mutation sites"
        score = summary[mod]["score"]
        shown = "  n/a" if score is None else f"{score:5.1f}%"
        print(f"{mod:<19} {killed:>3}/{len(rows):<3} killed  {shown}", flush=True)
    minutes = (time.monotonic() - start) / 60
    total = sum(v["mutants"] for v in summary.values())
    total_killed = sum(v["killed"] for v in summary.values())
    print(f"{total} mutants in {minutes:.1f} min ({args.workers} workers)")
    Path(args.out).write_text(
        json.dumps(
            {
                "per_module": args.per_module,
                "seed": args.seed,
                "workers": args.workers,
                "minutes": round(minutes, 1),
                "mutants": total,
                "killed": total_killed,
                "score": round(100 * total_killed / max(total, 1), 1),
                "lowest_module_score": min(
                    (v["score"] for v in summary.values() if v["score"] is not None),
                    default=None,
                ),
                "modules": summary,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
