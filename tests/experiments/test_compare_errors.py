"""Bad input to `perforate compare`: one clear line on stderr, exit 2, no record lost."""

from __future__ import annotations

import json

import pytest
import torch
from compare_task import write_study

import perforate
from perforate.experiments import cli


def run(capsys, *args) -> str:
    code = cli.main(["compare", *map(str, args), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("perforate: error: "), err
    return err[-1]


def test_factory_that_cannot_be_imported_says_where_it_looked(tmp_path, capsys):
    study = write_study(tmp_path / "u")
    study.write_text(study.read_text().replace("mymodel:mlp", "nomodule:mlp"))
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "nomodule" in line and str(tmp_path / "u") in line


def test_factory_that_raises_or_returns_the_wrong_kind(tmp_path, capsys):
    study = write_study(tmp_path / "u")
    (tmp_path / "u" / "mymodel.py").write_text("def mlp(**kw):\n    raise RuntimeError('boom')\n")
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "mymodel:mlp" in line and "boom" in line
    study = write_study(tmp_path / "v")  # a new folder: modules are imported once per folder
    (tmp_path / "v" / "mydata.py").write_text("def table(**kw):\n    return [1, 2]\n")
    line = run(capsys, study, "--out", tmp_path / "o2")
    assert "mydata:table" in line and "'train', 'val' and 'test'" in line


def test_empty_or_too_small_splits(tmp_path, capsys):
    study = write_study(tmp_path / "u")
    study.write_text(study.read_text().replace('kind = "classes"', 'kind = "classes", rows = 2'))
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "the validation split is empty" in line and "train 1 / validation 0 / test 1" in line
    study.write_text(study.read_text().replace("rows = 2", "rows = 40"))
    line = run(capsys, study, "--out", tmp_path / "o2")
    assert "smaller than one batch" in line and "batch size 32" in line


def test_width_argument_the_factory_does_not_take(tmp_path, capsys):
    study = write_study(tmp_path / "u")
    text = study.read_text().replace('width = "hidden"', 'width = "size"')
    study.write_text(text.replace("hidden = 4", "hidden = 4, size = 4"))
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "takes no argument 'size'" in line


def test_metric_against_its_direction(tmp_path, capsys):
    study = write_study(tmp_path / "u", task='metric = "accuracy"\ndirection = "minimize"')
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "maximized" in line and "direction" in line
    (tmp_path / "u" / "mymetric.py").write_text("def val_loss(out, y):\n    return 0.0\n")
    study = write_study(tmp_path / "u", task='metric = "mymetric:val_loss"\ndirection = "maximize"')
    line = run(capsys, study, "--out", tmp_path / "o2")
    assert "named like a loss" in line and "minimize" in line
    study = write_study(tmp_path / "u", task='metric = "mymetric:val_loss"')
    line = run(capsys, study, "--out", tmp_path / "o3")
    assert "direction = 'maximize' or 'minimize'" in line


def test_non_finite_loss_keeps_the_finished_records(tmp_path, capsys):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart"]')
    assert cli.main(["compare", str(study), "--out", str(tmp_path / "o"), "--seeds", "1"]) == 0
    capsys.readouterr()
    before = (tmp_path / "o" / "runs.jsonl").read_text()
    # The same study with a learning rate that blows up: its seed-1 runs fail, the
    # seed-0 records stay.
    study.write_text(study.read_text().replace("lr = 0.02", "lr = 0.02\ncandidate_lr = 0.1"))
    line = run(capsys, study, "--out", tmp_path / "o", "--seeds", "2")
    assert "another study" in line  # [train] changed: that ledger is not this study's
    bad = write_study(tmp_path / "w", compare='arms = ["plain", "restart"]')
    (tmp_path / "w" / "mydata.py").write_text(
        (tmp_path / "w" / "mydata.py")
        .read_text()
        .replace("    a, b = rows", "    x[7] = float('inf')\n    a, b = rows")
    )
    line = run(capsys, bad, "--out", tmp_path / "o2", "--seeds", "1")
    assert "non-finite" in line and "arm plain, seed 0" in line
    assert (tmp_path / "o" / "runs.jsonl").read_text() == before


def test_another_studys_folder_is_refused(tmp_path, capsys):
    a = write_study(tmp_path / "a", compare='arms = ["plain", "restart"]')
    assert cli.main(["compare", str(a), "--out", str(tmp_path / "o"), "--seeds", "1"]) == 0
    b = write_study(tmp_path / "b", compare='arms = ["plain", "restart"]')
    b.write_text(b.read_text().replace("lr = 0.02", "lr = 0.03"))
    line = run(capsys, b, "--out", tmp_path / "o", "--seeds", "1")
    assert "another study ([train] differ)" in line and "choose another --out" in line


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (("[compare]", "[compare]\nbogus = 1"), "unknown key(s) ['bogus'] in [compare]"),
        (("seeds = 3", "seeds = 0"), "[compare] seeds must be"),
        (("lr = 0.02", "lr = 1" + "0" * 400), "[train] lr must be"),
        (("[compare]", '[compare]\narms = ["pb", "nope"]'), "unknown arm 'nope'"),
        (("[compare]", '[compare]\nreference = "gd"'), "reference 'gd' is not among"),
        (("[dendrites]", "[dendrites]\nobjective = 'x'"), "[dendrites]"),
    ],
)
def test_study_file_errors_name_file_section_and_key(tmp_path, capsys, edit, words):
    study = write_study(tmp_path / "u")
    study.write_text(study.read_text().replace(*edit, 1))
    line = run(capsys, study, "--out", tmp_path / "o")
    assert words in line and str(study) in line


def test_seeds_option_and_list(tmp_path, capsys):
    assert cli.main(["compare", "--list-arms"]) == 0
    listed = capsys.readouterr().out
    assert "restart" in listed and "ladder" in listed
    with pytest.raises(SystemExit):
        cli.main(["compare", "x.toml", "--seeds", "many"])
    assert json.dumps  # the module is used above for the ledger check


def test_e131_newcomer_mistakes_that_used_to_give_a_confident_wrong_verdict(tmp_path, capsys):
    # [dendrites] direction against the metric: every run would keep its worst model.
    study = write_study(tmp_path / "a")
    study.write_text(
        study.read_text().replace("[dendrites]", '[dendrites]\ndirection = "minimize"')
    )
    assert "the metric is better when maximized" in run(capsys, study, "--out", tmp_path / "o")
    # Accuracy (the default metric) on a regression's float targets scores 0 everywhere.
    study = write_study(tmp_path / "b", "regression", task='loss = "mse"')
    line = run(capsys, study, "--out", tmp_path / "o2")
    assert "metric accuracy" in line and 'metric = "mse"' in line
    # The default loss on float targets.
    study = write_study(tmp_path / "c", "regression", task='metric = "mse"')
    line = run(capsys, study, "--out", tmp_path / "o3")
    assert "loss cross_entropy" in line and 'loss = "mse"' in line
    # A ladder without a width argument would silently train no ladder.
    study = write_study(tmp_path / "d", compare="ladder = [2, 8]")
    study.write_text(study.read_text().replace('width = "hidden"\n', ""))
    assert "[compare] ladder needs [model] width" in run(capsys, study, "--out", tmp_path / "o4")
    # A typo gets a suggestion.
    study = write_study(tmp_path / "e")
    study.write_text(study.read_text().replace("batch_size", "bach_size"))
    assert "did you mean 'bach_size' -> 'batch_size'" in run(
        capsys, study, "--out", tmp_path / "o5"
    )


def test_e132_a_model_that_fails_on_a_batch_is_one_line(tmp_path, capsys):
    study = write_study(tmp_path / "u", task='loss = "mse"')  # 3 outputs against labels
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "the model or the loss failed on a training batch" in line
    assert "arm plain, seed 0" in line and "Traceback" not in capsys.readouterr().err


ODD_DATA = """
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from mydata import table


class Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def streamed():
    s = table()
    return {"train": Stream(*s["train"]), "val": s["val"], "test": s["test"]}


def empty_val():
    s = table()
    val = DataLoader(TensorDataset(*s["val"]), batch_size=1000, drop_last=True)
    return {"train": s["train"], "val": val, "test": s["test"]}


def nan_test(kind="regression"):
    s = table(kind=kind)
    x, y = s["test"]
    x = x.clone()
    x[0] = float("nan")
    return {"train": s["train"], "val": s["val"], "test": (x, y)}


def nan_classes():
    return nan_test(kind="classes")


def far_label():
    s = table()
    x, y = s["val"]
    y = y.clone()
    y[:2] = torch.tensor([7, -1])
    return {"train": s["train"], "val": (x, y), "test": s["test"]}
"""

ODD_MODELS = """
from torch import nn


class Pair(nn.Module):
    def __init__(self, inputs, hidden, outputs):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))

    def forward(self, x):
        return self.net(x), x


def pair(inputs, hidden, outputs):
    return Pair(inputs, hidden, outputs)


def ignores(inputs, hidden, outputs):
    return nn.Sequential(nn.Linear(inputs, 4), nn.ReLU(), nn.Linear(4, outputs))
"""


def _odd(
    tmp_path, name, data=None, model=None, compare='arms = ["plain", "restart"]', kind="classes"
):
    study = write_study(tmp_path / name, kind, compare=compare)
    (tmp_path / name / f"odddata_{name}.py").write_text(ODD_DATA)
    (tmp_path / name / f"oddmodels_{name}.py").write_text(ODD_MODELS)
    text = study.read_text()
    if data:
        text = text.replace("mydata:table", f"odddata_{name}:{data}").replace(
            'kwargs = { kind = "classes" }', ""
        )
    if model:
        text = text.replace("mymodel:mlp", f"oddmodels_{name}:{model}")
    study.write_text(text)
    return study


def test_e129_odd_splits_and_models_in_a_study(tmp_path, capsys):
    from perforate.experiments.compare import compare

    # An IterableDataset split streams in its own order.
    report = compare(
        _odd(tmp_path, "a", data="streamed"),
        out=tmp_path / "oa",
        seeds=1,
        log_line=None,
        progress=False,
    )
    assert {a["name"] for a in report["arms"]} == {"plain", "restart"}
    assert "validation split gave no rows" in run(
        capsys, _odd(tmp_path, "b", data="empty_val"), "--out", tmp_path / "ob", "--seeds", "1"
    )
    assert "outputs on the test split are NaN for 1 of 60 rows" in run(
        capsys,
        _odd(tmp_path, "c", data="nan_test", kind="regression"),
        "--out",
        tmp_path / "oc",
        "--seeds",
        "1",
    )
    line = run(capsys, _odd(tmp_path, "d", model="pair"), "--out", tmp_path / "od", "--seeds", "1")
    assert "returned a tuple" in line or "failed on a training batch" in line
    line = run(
        capsys,
        _odd(tmp_path, "e", model="ignores", compare='arms = ["plain", "restart", "ladder"]'),
        "--out",
        tmp_path / "oe",
    )
    assert "ignores its width argument 'hidden'" in line


def test_e128_output_folders_shared_or_tampered_with(tmp_path, capsys):
    from perforate.experiments.compare import compare

    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart"]')
    compare(study, out=tmp_path / "o", seeds=1, log_line=None, progress=False)
    # The same study on other data is refused, not pooled.
    other = write_study(tmp_path / "v", compare='arms = ["plain", "restart"]')
    (tmp_path / "v" / "mydata.py").write_text(
        (tmp_path / "u" / "mydata.py").read_text().replace("rows: int = 240", "rows: int = 300")
    )
    assert "made on other data" in run(capsys, other, "--out", tmp_path / "o", "--seeds", "2")
    # A ledger holding only another study's header is refused (a racing second study
    # would otherwise take it over).
    (tmp_path / "h").mkdir()
    lines = (tmp_path / "o" / "runs.jsonl").read_text().splitlines()
    (tmp_path / "h" / "runs.jsonl").write_text(lines[0] + "\n")
    b = write_study(tmp_path / "b", compare='arms = ["plain", "restart"]')
    b.write_text(b.read_text().replace("lr = 0.02", "lr = 0.03"))
    assert "another study" in run(capsys, b, "--out", tmp_path / "h", "--seeds", "1")
    # A deleted model file is flagged in the checks.
    for f in (tmp_path / "o" / "models").rglob("*.safetensors"):
        f.unlink()
    report = compare(study, out=tmp_path / "o", seeds=1, log_line=None, progress=False)
    (files,) = [c for c in report["checks"] if c["check"] == "model files present"]
    assert not files["ok"] and "missing" in files["detail"]
    # Options that used to be taken silently.
    assert "selects no arm" in run(capsys, study, "--out", tmp_path / "o", "--arms", ",")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit):
        cli.main(["compare", str(study), "--out", str(tmp_path / "afile")])
    with pytest.raises(SystemExit):
        cli.main(["compare", str(study), "--seeds", "1001"])


def _trained_once(tmp_path):
    """A study whose `perforate train` run has finished in tmp_path/run."""
    study = write_study(tmp_path / "u")
    run_dir = tmp_path / "run"
    study.write_text(
        study.read_text().replace("[compare]", f'[run]\ndir = "{run_dir}"\n\n[compare]')
    )
    assert cli.main(["train", str(study), "--device", "cpu"]) == 0
    return study, run_dir


def test_e130_train_resume_with_other_settings_is_refused(tmp_path, capsys):
    study, run_dir = _trained_once(tmp_path)
    assert (run_dir / "ckpt.safetensors").is_file()
    capsys.readouterr()
    code = cli.main(["train", str(study), "--resume", "--arm", "plain", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "other settings" in err and "'method'" in err


def test_e134_labels_outside_the_models_classes_are_refused_not_scored_wrong(tmp_path, capsys):
    line = run(
        capsys, _odd(tmp_path, "f", data="far_label"), "--out", tmp_path / "of", "--seeds", "1"
    )
    assert "the validation split has 2 label(s) outside the model's 3 outputs" in line
    assert "classes 0..2" in line and "accuracy would count them as wrong" in line


def test_e137_jobs_beyond_the_chains_or_the_cores_are_capped(caplog):
    import os

    import torch

    from perforate.experiments.engine import worker_count

    cores = len(os.sched_getaffinity(0))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with caplog.at_level("WARNING", logger="perforate.experiments.engine"):
        assert worker_count(300, 9, cpu) == min(9, cores)
    assert f"--jobs 300: running {min(9, cores)} worker(s) (9 chain(s) to run, on cpu)" in (
        caplog.text
    )
    assert worker_count(300, 9, cpu, threads=cores) == 1  # each worker takes every core
    assert worker_count(4, 2, cuda) == 2  # no worker without a chain
    assert worker_count(4, 9, cuda) == 4  # GPUs: the cores do not limit
    caplog.clear()
    with caplog.at_level("WARNING", logger="perforate.experiments.engine"):
        assert worker_count(1, 5, cpu) == 1
    assert caplog.text == ""


ODD_METRICS = """
import torch
from torch import nn


def boom(outputs, targets):
    raise ValueError("metric exploded")


def as_text(outputs, targets):
    return "0.5"


def huge(outputs, targets):
    return 10**400


class EvalBoom(nn.Module):
    def __init__(self, inputs, hidden, outputs):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))

    def forward(self, x):
        if not self.training:
            raise RuntimeError("eval-only failure")
        return self.net(x)


def eval_boom(inputs, hidden, outputs):
    return EvalBoom(inputs, hidden, outputs)


def narrow(inputs, hidden, outputs):
    return nn.Sequential(nn.Linear(inputs - 1, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
"""


def _metric_study(tmp_path, name, metric=None, model=None, data=None):
    study = _odd(tmp_path, name, data=data, compare='arms = ["plain", "restart"]')
    (tmp_path / name / f"oddmetrics_{name}.py").write_text(ODD_METRICS)
    text = study.read_text()
    if metric:
        text = text.replace(
            "[task]\n", f'[task]\nmetric = "oddmetrics_{name}:{metric}"\ndirection = "maximize"\n'
        )
    if model:
        text = text.replace("mymodel:mlp", f"oddmetrics_{name}:{model}")
    study.write_text(text)
    return study


def test_e138_scoring_failures_are_one_line_naming_arm_seed_and_split(tmp_path, capsys):
    def line(name, **kw):
        study = _metric_study(tmp_path, name, **kw)
        return run(capsys, study, "--out", tmp_path / f"o{name}", "--seeds", "1")

    # NaN in the test inputs of a classification: refused, not scored as class 0.
    got = line("nan", data="nan_classes")
    assert got.startswith("perforate: error: arm plain, seed 0: the model's outputs on the test")
    assert "NaN for 1 of 60 rows" in got
    got = line("boom", metric="boom")
    assert "arm plain, seed 0: scoring the validation split failed" in got
    assert "ValueError: metric exploded" in got
    got = line("evalboom", model="eval_boom")
    assert "scoring the validation split failed (RuntimeError: eval-only failure)" in got
    assert "returned the string '0.5', not a number" in line("text", metric="as_text")
    assert "not a number a float holds" in line("huge", metric="huge")
    # A library error inside a training batch says where it happened.
    got = line("narrow", model="narrow")
    assert "arm plain, seed 0, a training batch: 0: Linear expects input (..., 9)" in got


def test_e139_train_resume_on_other_data_is_refused(tmp_path, capsys):
    study, run_dir = _trained_once(tmp_path)
    assert json.loads((run_dir / "data.json").read_text())["digest"]
    capsys.readouterr()
    redrawn = study.read_text().replace('kind = "classes" }', 'kind = "classes", seed = 1 }')
    study.write_text(redrawn)
    code = cli.main(["train", str(study), "--resume", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--resume: the data differ from those" in err[0] and "start the run afresh" in err[0]
    # Started afresh on the new data, the run records those; resuming it then works.
    assert cli.main(["train", str(study), "--device", "cpu"]) == 0
    assert cli.main(["train", str(study), "--resume", "--device", "cpu"]) == 0


def test_e140_a_sparse_split_is_refused_when_loaded():
    from perforate.experiments.task import Split, TaskError

    x = torch.eye(4).to_sparse()
    with pytest.raises(TaskError, match=r"'train': x is a sparse tensor .*\.to_dense\(\)"):
        Split("train", (x, torch.arange(4)))
    Split("train", (x.to_dense(), torch.arange(4)))  # dense: accepted


def test_e141_a_ledger_line_edited_by_hand_is_refused_by_compare_and_report(tmp_path, capsys):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart"]')
    out = tmp_path / "o"
    assert cli.main(["compare", str(study), "--out", str(out), "--seeds", "1"]) == 0
    capsys.readouterr()
    ledger = out / "runs.jsonl"
    lines = ledger.read_text().splitlines()
    record = json.loads(lines[1])
    for edit, problem in (
        ({**record, "val": "NaN"}, "line 2, has 'val' that is 'NaN'"),
        ({k: v for k, v in record.items() if k != "seed"}, "line 2, has 'seed' that is missing"),
        ([1, 2], "line 2, is a JSON list"),
    ):
        ledger.write_text("\n".join([lines[0], json.dumps(edit), *lines[2:]]) + "\n")
        for args in (
            ["compare", str(study), "--out", str(out), "--seeds", "1"],
            ["report", str(out)],
        ):
            assert cli.main(args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and problem in err[0] and "delete that line" in err[0], err
    # A broken line that is not the last is corruption, not a kill: refused too.
    ledger.write_text("\n".join([lines[0], '{"arm": "pl', *lines[2:]]) + "\n")
    assert cli.main(["report", str(out)]) == 2
    assert "line 2, is not JSON" in capsys.readouterr().err


def test_e142_a_factory_calling_sys_exit_and_odd_out_folders(tmp_path, capsys, monkeypatch):
    study = write_study(tmp_path / "u")
    data = tmp_path / "u" / "mydata.py"
    data.write_text(
        data.read_text().replace("    g = torch", "    raise SystemExit(0)\n    g = torch")
    )
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "data factory mydata:table failed" in line and "SystemExit: 0" in line
    assert not (tmp_path / "o" / "runs.jsonl").exists()
    monkeypatch.chdir(tmp_path)
    for out, says in (("", "--out is empty"), (" ", "--out is empty")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["compare", str(study), "--out", out])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(SystemExit):
        cli.main(["compare", str(study), "--out", str(tmp_path / "loop")])
    assert "a symbolic link to nothing" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()  # nothing written in the current folder


USER_METRICS = """
def score(outputs, targets):  # a mean absolute error under a name that does not say so
    return (outputs - targets).abs().mean()
"""


def _own_metric_study(folder, direction: str, compare: str = 'arms = ["plain", "restart", "pb"]'):
    """A regression scored by USER_METRICS's `score` (an MAE) under `direction`."""
    study = write_study(
        folder,
        "regression",
        compare=compare,
        task=f'loss = "mse"\nmetric = "usermetrics:score"\ndirection = "{direction}"',
    )
    (folder / "usermetrics.py").write_text(USER_METRICS)
    return study


def test_e144_the_verdict_carries_what_the_checks_found(tmp_path, capsys):
    from perforate.experiments.compare import compare

    # A loss maximized: every run keeps its first epoch. The report says No verdict.
    study = _own_metric_study(tmp_path / "u", "maximize")
    with pytest.warns(perforate.PerforateWarning, match="moved the wrong way"):
        report = compare(study, out=tmp_path / "o", log_line=None, progress=False)
    verdict = report["verdict"]
    assert verdict["dendrites_pay"] == "no verdict", verdict
    assert verdict["sentence"].startswith("No verdict: plain: the first epoch's score stayed")
    assert "check [task] direction" in verdict["sentence"]
    failed = {(c["arm"], c["check"]) for c in report["checks"] if not c["ok"]}
    assert {("plain", "direction"), ("restart", "direction")} <= failed
    assert "No verdict: plain:" in (tmp_path / "o" / "compare.md").read_text()
    # The same metric minimized, its (N, 1) outputs matched to (N,) targets: a verdict,
    # and runs that hit the epoch cap are named in it.
    capped = _own_metric_study(tmp_path / "v", "minimize")
    capped.write_text(capped.read_text().replace("max_epochs = 40", "max_epochs = 4"))
    report = compare(capped, out=tmp_path / "o2", log_line=None, progress=False)
    assert report["verdict"]["dendrites_pay"] != "no verdict"
    assert not [c for c in report["checks"] if c["check"] == "direction"]
    assert "Failed checks (" in report["verdict"]["sentence"]
    assert "ended by its own rule" in report["verdict"]["sentence"]
    if report["verdict"]["dendrites_pay"] == "unclear":  # rope 0: seeds alone cannot decide
        assert "set [compare] rope (0 now)" in report["verdict"]["sentence"]


def test_e145_a_width_argument_that_sets_another_size_is_refused_before_any_run(tmp_path, capsys):
    study = write_study(tmp_path / "u")
    study.write_text(study.read_text().replace('width = "hidden"', 'width = "inputs"'))
    line = run(capsys, study, "--out", tmp_path / "o")
    assert "the model at width 5 ([model] width = 'inputs' set to 5) fails on a training" in line
    assert "does 'inputs' set the hidden size?" in line
    assert not (tmp_path / "o" / "runs.jsonl").exists()  # refused before the ledger


def test_e144b_an_own_metric_gets_a_one_output_models_outputs_as_the_targets_shape(tmp_path):
    from contextlib import nullcontext

    from perforate.experiments.study import Study

    spec = Study.from_toml(_own_metric_study(tmp_path / "u", "minimize", compare=""))
    task = spec.build_task()
    spec.load_data(task)
    torch.manual_seed(0)
    model = task.build_model()
    x, y = task.data().val.source
    got = task.score(model, "val", torch.device("cpu"), 16, nullcontext)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (len(y), 1)
    assert got == pytest.approx(float((out[:, 0] - y).abs().mean()), rel=1e-6)
    assert got != pytest.approx(float((out - y).abs().mean()), rel=1e-3)  # the N x N one
