"""docs/architecture.md's application section: generated from the code, kept in step."""

from __future__ import annotations

from pathlib import Path

from perforate.experiments import architecture

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_application_section_matches_the_code():
    text = DOC.read_text()
    section = architecture.section_of(text, architecture.APP_BEGIN, architecture.APP_END)
    assert section == architecture.application_markdown(), (
        "docs/architecture.md is stale: run `perforate architecture --write docs/architecture.md`"
    )


def test_every_module_has_a_job_and_the_flow_names_only_modules():
    root = architecture.package_root()
    graph = architecture.import_graph(root)
    app = {
        n.removeprefix("perforate.experiments.")
        for n in graph
        if n.startswith("perforate.experiments.")
    }
    for a, what, b in architecture.FLOW:
        assert {a, b} <= app and what
    for module in app:
        job = architecture.job(root, f"perforate.experiments.{module}")
        assert job.endswith((".", "?", ")")) and len(job) > 20, module


def test_a_job_is_the_first_sentence_of_the_docstring(tmp_path):
    pkg = tmp_path / "perforate"
    (pkg / "experiments").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "experiments" / "__init__.py").write_text('"""The app."""\n')
    (pkg / "experiments" / "a.py").write_text(
        '"""Does one thing, well. And more\nbesides.\n\nDetails."""\nfrom . import b\n'
    )
    (pkg / "experiments" / "b.py").write_text('"""Pipes | in a job\nwrap."""\n')
    text = architecture.application_markdown(pkg)
    assert "| `a` | Does one thing, well. | b |" in text
    assert "| `b` | Pipes \\| in a job wrap. | - |" in text
