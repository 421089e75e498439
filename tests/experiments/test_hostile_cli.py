"""Hostile inputs to the command line and `perforate train` files: docs/errors.md rows.

Every user error exits with status 2 and one message on stderr naming the file, the
section and the key where there is one; no traceback.
"""

from __future__ import annotations

import json

import pytest

from perforate.experiments.cli import main

GOOD = {
    "model": 'factory = "perforate.experiments.models:mlp"\n'
    "kwargs = { inputs = 64, hidden = 4, classes = 10 }",
    "data": 'name = "digits"',
    "train": "lr = 0.01\nseed = 0\nthreads = 1",
    "dendrites": (
        'patience = 1\ndendrite_patience = 1\ndendrite_max_epochs = 1\nswitch_mode = "patience"\n'
        "max_epochs = 3"
    ),
}


def toml(tmp_path, **sections):
    parts = {**GOOD, **sections}
    parts.setdefault("run", f'dir = "{tmp_path / "run"}"')
    text = "\n".join(f"[{k}]\n{v}" for k, v in parts.items() if v is not None)
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("perforate: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize(
    "line,key",
    [
        ("batch_size = 0", "batch_size"),
        ("seed = 1.7", "seed"),
        ('lr = "fast"', "lr"),
        ("threads = -1", "threads"),
        ("lr = nan", "lr"),
        ('optimizer = "Adagrad"', "optimizer"),
    ],
)
def test_e77_train_values_are_checked_naming_file_section_and_key(tmp_path, capsys, line, key):
    path = toml(tmp_path, train=line)
    fails(capsys, ["train", str(path)], str(path), "[train]", key)


def test_e78_a_missing_required_key_is_named(tmp_path, capsys):
    path = toml(tmp_path, data="kwargs = {}")
    fails(capsys, ["train", str(path)], "[data] needs exactly one of name")


def test_e79_an_unknown_dataset_lists_the_choices(tmp_path, capsys):
    path = toml(tmp_path, data='name = "cifar"')
    fails(capsys, ["train", str(path)], "[data] name must be one of", "digits")


def test_e80_a_model_module_that_raises_on_import_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = toml(tmp_path, model='factory = "broken_models:net"')
    fails(capsys, ["train", str(path)], "broken_models:net", "RuntimeError: boom at import")


def test_e81_a_factory_that_returns_no_module_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "odd_models.py").write_text("def net():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = toml(tmp_path, model='factory = "odd_models:net"')
    fails(capsys, ["train", str(path)], "odd_models:net", "not a torch.nn.Module")


def test_e82_resume_without_a_checkpoint_is_an_error_unless_asked_if_present(tmp_path, capsys):
    path = toml(tmp_path)
    fails(capsys, ["train", str(path), "--resume"], "no checkpoint", "--resume-if-present")
    assert not (tmp_path / "run" / "results.json").exists()
    assert main(["train", str(path), "--resume-if-present"]) == 0
    assert (tmp_path / "run" / "results.json").is_file()
    capsys.readouterr()
    assert main(["train", str(path), "--resume"]) == 0
    assert "resumed" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", json.dumps({"a": 1}), json.dumps([{"x": 1}])])
def test_e83_report_of_a_malformed_results_file_is_one_message(tmp_path, capsys, content):
    (tmp_path / "results.json").write_text(content)
    fails(capsys, ["report", str(tmp_path)], "results")


def test_e84_report_of_a_directory_without_results(tmp_path, capsys):
    fails(capsys, ["report", str(tmp_path)], "no results at")


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--seeds", "0"],
        ["demo", "--hidden", "x"],
        ["bench", "--suite", "quick", "--seeds", "0"],
        ["bench", "--suite", "quick", "--shard", "x"],
        ["bench", "--suite", "nope"],
    ],
)
def test_e85_bad_command_line_values_exit_2_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_e86_a_toml_syntax_error_names_the_file(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[model\nfactory = 1")
    fails(capsys, ["train", str(path)], f"cannot read {path}")


def test_e87_an_unknown_dendrite_setting_is_named_with_a_suggestion(tmp_path, capsys):
    path = toml(tmp_path, dendrites="patiense = 3")
    fails(capsys, ["train", str(path)], "[dendrites]", "did you mean 'patience'")


def test_e88_a_section_that_is_not_a_table_or_unknown(tmp_path, capsys):
    path = tmp_path / "x.toml"
    path.write_text('model = 3\n[data]\nname = "digits"\n')
    fails(capsys, ["train", str(path)], "[model] must be a table")
    path.write_text('[modle]\nfactory = "a:b"\n')
    fails(capsys, ["train", str(path)], "unknown section [modle]")


def test_e89_a_missing_file_is_one_message(tmp_path, capsys):
    fails(capsys, ["train", str(tmp_path / "nope.toml")], "cannot read")


def test_version_and_package_metadata(capsys):
    import pathlib

    import perforate
    from perforate.experiments.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"perforate {perforate.__version__}\n"
    package = pathlib.Path(perforate.__file__).parent
    assert (package / "py.typed").is_file()  # type checkers read the annotations
    license_text = (package.parent.parent / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text


def test_e93_a_closed_pipe_ends_the_command_quietly(monkeypatch, capsys):
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` after it has read enough: writes now fail (EPIPE)
    with os.fdopen(write_end, "w", buffering=1) as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert main(["bench", "--list"]) == 1  # quietly: no "Broken pipe" line
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_e94_a_missing_extra_is_one_line_naming_the_pip_extra(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["demo", "--seeds", "1", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "perforate: error: this command needs 'sklearn', which is not installed; "
        "install it with: pip install 'perforate[bench]'"
    )


def test_the_bundled_examples_are_listed_with_their_installed_paths(capsys):
    from pathlib import Path

    from perforate.experiments.study import Study
    from perforate.experiments.train_config import read_experiment

    assert main(["examples"]) == 0
    paths = [Path(line) for line in capsys.readouterr().out.splitlines() if line.endswith(".toml")]
    assert {p.name for p in paths} == {
        "digits_mlp.toml",
        "fashion_mnist_cnn.toml",
        "digits_study.toml",
    }
    for path in paths:
        assert path.is_file() and "experiments/examples" in str(path)
        if path.name.endswith("_study.toml"):
            Study.from_toml(path)  # a valid `perforate compare` file
        else:
            read_experiment(path)  # a valid `perforate train` file
