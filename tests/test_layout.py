"""The shape of the house: library apart from the application, no cycles, docs in step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from perforate.experiments import architecture

DOC = Path(__file__).parent.parent / "docs" / "architecture.md"


def test_import_perforate_loads_no_application_and_no_heavy_optional_package():
    code = (
        "import sys, perforate; bad = [m for m in sys.modules if m.startswith("
        "('perforate.experiments', 'perforate.integrations', 'sklearn', 'matplotlib', "
        "'lightning', 'transformers', 'mnist1d'))]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_library_never_imports_the_application_or_integrations():
    graph = architecture.import_graph()
    library = {
        n: d
        for n, d in graph.items()
        if not n.startswith(("perforate.experiments", "perforate.integrations"))
    }
    assert "perforate.controller" in library and "perforate.layers" in library
    leaks = {
        n: sorted(
            d for d in deps if d.startswith(("perforate.experiments", "perforate.integrations"))
        )
        for n, deps in library.items()
    }
    assert {n: d for n, d in leaks.items() if d} == {}


def test_no_import_cycle_anywhere_in_the_package():
    assert architecture.cycles(architecture.import_graph()) == []


def test_cycle_detection_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "perforate"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")  # hidden in a function
    (pkg / "c.py").write_text("from .b import f\n")
    graph = architecture.import_graph(pkg)
    assert graph["perforate.c"] == {"perforate.b"}
    assert architecture.cycles(graph) == [["perforate.a", "perforate.b", "perforate.a"]]


def test_controller_module_holds_only_the_state_machine():
    import perforate.controller as controller

    classes = [
        n
        for n, v in vars(controller).items()
        if isinstance(v, type) and v.__module__ == controller.__name__
    ]
    assert classes == ["Perforator"]


def test_architecture_doc_matches_the_code():
    assert architecture.section_of(DOC.read_text()) == architecture.markdown(), (
        "docs/architecture.md is stale: run `perforate architecture --write docs/architecture.md`"
    )
