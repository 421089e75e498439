"""`perforate train CONFIG.toml`, and docs generated from the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import perforate
from perforate.experiments.cli import main
from perforate.experiments.train_config import read_experiment

TOML = """
[model]
factory = "perforate.experiments.models:mlp"
kwargs = {{ inputs = 64, hidden = 4, classes = 10 }}
[data]
name = "digits"
[train]
lr = 0.01
seed = 0
threads = 1
[dendrites]
patience = 1
dendrite_patience = 1
switch_mode = "patience"
dendrite_max_epochs = 1
max_epochs = {max_epochs}
[run]
dir = "{dir}"
"""


def test_train_writes_a_complete_run_dir_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tmp_path / "exp.toml"
    cfg.write_text(TOML.format(max_epochs=4, dir=run))
    assert main(["train", str(cfg)]) == 0
    for name in ("results.json", "model.safetensors", "ckpt.safetensors", "demo.png"):
        assert (run / name).is_file(), name
    record = json.loads((run / "results.json").read_text())[0]
    assert record["epochs"] == 4 and len(record["history"]) == 4
    assert "test" in capsys.readouterr().out
    cfg.write_text(TOML.format(max_epochs=6, dir=run))  # another budget, same run dir
    # The checkpoint carries its own settings: resuming under others is refused, not
    # silently run with the checkpoint's (the new budget would never apply).
    assert main(["train", str(cfg), "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    cfg.write_text(TOML.format(max_epochs=4, dir=run))
    assert main(["train", str(cfg), "--resume"]) == 0  # done: resuming ends at once
    assert "resumed" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nfactory='x'\n[data]\nname='digits'\n[bogus]\n", r"unknown section \[bogus\]"),
        ("[model]\nfactory='x'\ncolour=1\n[data]\nname='digits'\n", "unknown key"),
        ("[data]\nname='digits'\n", r"missing section \[model\]"),
        ("[model]\nfactory='x'\n[data]\nname='digits'\n[dendrites]\npatince=3\n", "patience"),
        ("[model]\nfactory='x'\n[data]\nname='digits'\n[train]\noptimizer='Lion'\n", "Lion"),
        ("[model\n", "cannot read"),
    ],
)
def test_bad_experiment_files_raise_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(perforate.ConfigError, match=message):
        read_experiment(path)


def test_bad_factory_path():
    from perforate.experiments.train_config import import_factory

    with pytest.raises(perforate.ConfigError, match=r"package\.module:function"):
        import_factory("perforate.experiments.models.mlp")
    with pytest.raises(perforate.ConfigError, match="cannot import"):
        import_factory("perforate.experiments.models:nope")


def test_docs_settings_page_is_generated_from_the_config():
    page = Path(__file__).parents[2] / "docs" / "settings.md"
    assert page.read_text() == perforate.DendriteConfig.markdown(), (
        "docs/settings.md is stale: run perforate config --markdown > docs/settings.md"
    )


def test_example_configs_are_valid():
    for path in (Path(__file__).parents[2] / "examples").glob("*.toml"):
        read_experiment(path)


def test_docs_train_file_page_is_generated_from_the_schema():
    from perforate.experiments.train_config import SCHEMA, schema_markdown

    page = (Path(__file__).parents[2] / "docs" / "study_file.md").read_text()
    assert page == schema_markdown(), (
        "regenerate: perforate config --study-file > docs/study_file.md"
    )
    for section, keys in SCHEMA.items():
        assert f"## [{section}]" in page and all(f"| `{k}` |" in page for k in keys)
