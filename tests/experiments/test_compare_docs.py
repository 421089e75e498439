"""docs/compare.md and the README show files that exist and studies that run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from perforate.experiments.compare import compare
from perforate.experiments.study import Study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "own_study"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_walkthrough_shows_the_example_files_as_they_are():
    page = (ROOT / "docs" / "compare.md").read_text()
    python, toml = _blocks(page, "python"), _blocks(page, "toml")
    assert (EXAMPLE / "mymodel.py").read_text() in python
    assert (EXAMPLE / "mydata.py").read_text() in python
    study = (EXAMPLE / "study.toml").read_text()
    assert study.split("\n", 1)[1] in toml  # the file less its comment line
    lines = sum(len(p.read_text().splitlines()) for p in EXAMPLE.iterdir() if p.is_file())
    assert f"{lines} lines in all" in page


def test_the_example_study_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # modules are found beside the study file
    torch.set_num_threads(1)
    study = Study.from_toml(EXAMPLE / "study.toml")
    study.compare["arms"] = ["plain", "restart", "pb"]
    report = compare(study, out=tmp_path / "o", seeds=2, log_line=None, progress=False)
    assert report["verdict"]["dendrites_pay"] in ("yes", "no", "unclear")
    assert {a["name"] for a in report["arms"]} == {"plain", "restart", "pb"}


def test_the_readme_study_is_a_valid_study():
    readme = (ROOT / "README.md").read_text()
    (snippet,) = [b for b in _blocks(readme, "toml") if "[model]" in b]
    Study(**tomllib.loads(snippet))
