"""tools/mutation.py, the tool behind `make mutation`: its mutations against hand-written
results, and its quick run (one small module, a few mutants) as a user runs it."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "mutation.py"

SOURCE = '''def f(a, b):
    """Docstrings are never mutated."""
    if a < b and b:
        return a + 2
    x = a * b
    return x
'''


def _tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _run(source: str, a: int, b: int):
    scope: dict = {}
    exec(compile(source, "<mutant>", "exec"), scope)
    try:
        return scope["f"](a, b)
    except NameError:  # a deleted assignment
        return "NameError"


def test_every_site_of_a_small_function_and_what_each_mutant_computes():
    tool = _tool()
    found = [desc for _, desc in tool.sites(ast.parse(SOURCE))]
    # ast.walk order: the statements of the body, then what they hold.
    assert sorted(found) == sorted(
        [
            "condition negated",
            "Return deleted",
            "Assign deleted",
            "And swapped",
            "Lt -> GtE",
            "Add -> Sub",
            "constant 2 changed",
            "Mult -> Div",
            "Return deleted",
        ]
    )
    assert _run(SOURCE, 1, 3) == 3 and _run(SOURCE, 3, 1) == 3
    results = {}
    for i, desc in enumerate(found):
        mutant = tool.mutate(SOURCE, i)
        assert "Docstrings are never mutated." in mutant
        results.setdefault(desc, []).append((_run(mutant, 1, 3), _run(mutant, 3, 1)))
    # Each by hand, as (f(1, 3), f(3, 1)); the original gives (1 + 2, 3 * 1) = (3, 3).
    assert results["Lt -> GtE"] == [(3, 5)]  # 1 >= 3 fails: 1 * 3; 3 >= 1: 3 + 2
    assert results["condition negated"] == [(3, 5)]
    assert results["Add -> Sub"] == [(-1, 3)]  # 1 - 2
    assert results["constant 2 changed"] == [(4, 3)]  # 1 + 3
    assert results["Mult -> Div"] == [(3, 3.0)]  # 3 / 1
    assert results["And swapped"] == [(3, 5)]  # (3 < 1) or 1: taken
    # The first return deleted falls through to x = a * b; the last leaves None.
    assert sorted(results["Return deleted"], key=str) == [(3, 3), (3, None)]
    assert results["Assign deleted"] == [(3, "NameError")]  # x is never set


def test_the_sample_is_seeded_and_within_the_module():
    tool = _tool()
    first = tool.mutants("snapshots", 5, seed=3)
    assert first == tool.mutants("snapshots", 5, seed=3)
    assert first != tool.mutants("snapshots", 5, seed=4)
    assert len(first) == 5 and all(m.module == "snapshots" for m in first)
    assert [m.index for m in first] == sorted(m.index for m in first)
    assert set(tool.TESTS) >= set(tool.LIBRARY)  # every library module has its tests


def test_quick_run_on_one_module(tmp_path):
    out = tmp_path / "m.json"
    done = subprocess.run(
        [
            *(sys.executable, str(TOOL), "--modules", "snapshots", "--per-module", "3"),
            *("--workers", "1", "--seed", "0", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["mutants"] == 3 and list(result["modules"]) == ["snapshots"]
    module = result["modules"]["snapshots"]
    assert module["sampled"] == 3 and module["killed"] + len(module["survivors"]) == 3
    assert module["tests"][0] == "tests/test_pins_snapshots.py"
    assert "snapshots" in done.stdout and "mutants in" in done.stdout


def test_a_module_without_tests_is_refused():
    done = subprocess.run(
        [sys.executable, str(TOOL), "--modules", "nosuchmodule"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "modules without tests" in done.stderr
