"""Issue 21, the command line's traps: each test is a row of docs/errors.md.

Every user error exits with status 2 and one line on stderr, no traceback.
"""

from __future__ import annotations

import sys

import pytest

from perforate.experiments.cli import main
from perforate.experiments.imports import ImportObjectError, import_object

MODEL = (
    "from torch import nn\n"
    "def flat_mlp(hidden=4):\n"
    "    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
)
SECTIONS = {
    "model": 'factory = "perforate.experiments.models:mlp"\n'
    "kwargs = { inputs = 64, hidden = 4, classes = 10 }",
    "data": 'name = "digits"',
    "train": "lr = 0.01\nseed = 0\nthreads = 1",
    "dendrites": (
        'patience = 1\ndendrite_patience = 1\ndendrite_max_epochs = 1\nswitch_mode = "patience"\n'
        "max_epochs = 2"
    ),
}


def toml(folder, run_dir, name="exp.toml", **sections):
    parts = {**SECTIONS, **sections, "run": f'dir = "{run_dir}"'}
    text = "\n".join(f"[{k}]\n{v}" for k, v in parts.items() if v is not None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("perforate: error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1, err  # one line
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def forget_mymodel():
    """The tests import a `mymodel` from temporary folders; leave none behind."""
    yield
    for name in [n for n in sys.modules if n == "mymodel"]:
        del sys.modules[name]


def test_e99_a_factory_beside_the_toml_file_imports_from_another_cwd(
    tmp_path, capsys, monkeypatch, forget_mymodel
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mymodel.py").write_text(MODEL)
    path = toml(project, tmp_path / "run", model='factory = "mymodel:flat_mlp"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    assert main(["train", str(path)]) == 0, capsys.readouterr().err
    assert sys.path == before  # the folder was on the path only while importing
    assert sys.modules["mymodel"].__file__ == str(project / "mymodel.py")
    assert (tmp_path / "run" / "results.json").is_file()


def test_e99_a_factory_in_the_current_folder_imports(tmp_path, capsys, monkeypatch, forget_mymodel):
    (tmp_path / "mymodel.py").write_text(MODEL.replace("hidden=4", "hidden=3"))
    path = toml(tmp_path / "configs", tmp_path / "run", model='factory = "mymodel:flat_mlp"')
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(path)]) == 0, capsys.readouterr().err
    # hidden=3 is this folder's module, not one imported by an earlier test
    assert sys.modules["mymodel"].__file__ == str(tmp_path / "mymodel.py")


def test_e99_a_module_found_nowhere_says_where_it_looked(tmp_path, capsys, monkeypatch):
    path = toml(tmp_path / "configs", tmp_path / "run", model='factory = "nomodel_x:net"')
    monkeypatch.chdir(tmp_path)
    fails(
        capsys,
        ["train", str(path)],
        "no module 'nomodel_x' on the Python path",
        str(tmp_path / "configs"),
        str(tmp_path),
        "PYTHONPATH",
    )


@pytest.fixture
def clean_modules():
    """Leave no module of these tests' temporary folders imported."""
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in {"pkg_io", "mod_io", "helper_io"}]:
        del sys.modules[name]


def test_e99_import_object_an_installed_module_wins_over_a_file_of_the_same_name(tmp_path):
    (tmp_path / "json.py").write_text("def dumps(x):\n    return 'shadowed'\n")
    assert import_object("json:dumps", [tmp_path])({"a": 1}) == '{"a": 1}'


def test_e99_import_object_folders_are_searched_in_order_and_packages_and_dotted_names_work(
    tmp_path, clean_modules
):
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "pkg_io").mkdir(parents=True)
    (first / "pkg_io" / "__init__.py").write_text("")
    (first / "pkg_io" / "sub.py").write_text("class K:\n    VALUE = 'first'\n")
    second.mkdir()
    (second / "mod_io.py").write_text("import helper_io\nVALUE = helper_io.X\n")
    (second / "helper_io.py").write_text("X = 7\n")  # a sibling import works while importing
    before = list(sys.path)
    assert import_object("pkg_io.sub:K.VALUE", [first, second]) == "first"
    assert import_object("mod_io:VALUE", [first, second]) == 7
    assert sys.path == before


def test_e99_import_object_the_same_name_elsewhere_is_imported_afresh(tmp_path, clean_modules):
    for folder, value in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mod_io.py").write_text(f"VALUE = {value}\n")
    assert import_object("mod_io:VALUE", [tmp_path / "a"]) == 1
    assert import_object("mod_io:VALUE", [tmp_path / "a"]) == 1
    assert import_object("mod_io:VALUE", [tmp_path / "b", tmp_path / "a"]) == 2


@pytest.mark.parametrize("path", ["mod_io.VALUE", "a:b:c", ":x", "m:", 3])
def test_e99_import_object_a_malformed_path_is_refused(path):
    with pytest.raises(ImportObjectError, match=r"must look like 'package\.module:function'"):
        import_object(path, what="loss")


def test_e99_import_object_errors_say_where_it_looked_and_what_failed(tmp_path, clean_modules):
    with pytest.raises(ImportObjectError, match=r"no module 'mod_io' on the Python path nor in"):
        import_object("mod_io:f", [tmp_path])
    (tmp_path / "mod_io.py").write_text("import not_installed_io\n")
    with pytest.raises(ImportObjectError, match=r"\(from .*\): ModuleNotFoundError.*not_inst"):
        import_object("mod_io:f", [tmp_path])
    (tmp_path / "mod_io.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(ImportObjectError, match="ValueError: boom"):
        import_object("mod_io:f", [tmp_path])
    (tmp_path / "mod_io.py").write_text("g = 1\n")
    with pytest.raises(ImportObjectError, match=r"mod_io.py has no 'f'"):
        import_object("mod_io:f", [tmp_path], what="metric")


def write_idx(path, array):
    """An uncompressed IDX file of unsigned bytes, the MNIST family's format."""
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def small_idx(tmp_path):
    """A 1,600-row training table and 200 test rows of 4x4 images, as in the issue."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, rows in (("train", 1600), ("t10k", 200)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (rows, 4, 4)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, rows))
    return folder


def test_e100_a_validation_split_that_takes_every_training_row_is_refused(small_idx):
    from perforate.experiments.datasets import DatasetError, idx_directory

    with pytest.raises(DatasetError) as exc:
        idx_directory(small_idx, validation=10000)
    message = str(exc.value)
    assert "the training split is empty" in message
    assert "train 0 / validation 1,600 / test 200 rows" in message
    assert "use validation < 1,600" in message
    with pytest.raises(DatasetError, match=r"validation split is empty \(train 1,600 / valid"):
        idx_directory(small_idx, validation=0)
    with pytest.raises(DatasetError, match="validation must be an integer >= 1, got -5"):
        idx_directory(small_idx, validation=-5)
    splits = idx_directory(small_idx, validation=1599)  # one row left to train on: allowed
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (1, 1599, 200)


def test_e100_the_training_loop_refuses_an_empty_split(small_idx):
    from perforate import DendriteConfig
    from perforate.experiments.datasets import DatasetError, idx_directory
    from perforate.experiments.loop import fit_classifier
    from perforate.experiments.models import mlp

    data = idx_directory(small_idx, validation=100).subset(train=slice(0, 0))
    with pytest.raises(DatasetError, match=r"training split is empty \(train 0 / validation 100"):
        fit_classifier(mlp(16, 4, 10), data, DendriteConfig(), seed=0)


def test_e100_perforate_train_refuses_an_empty_split(tmp_path, capsys, small_idx):
    data = f'name = "fashion_mnist"\nkwargs = {{ directory = "{small_idx}", validation = 10000 }}'
    path = toml(tmp_path, tmp_path / "run", data=data)
    fails(capsys, ["train", str(path)], str(path), "[data]", "training split is empty", "1,600")
    assert not (tmp_path / "run" / "results.json").exists()


def test_e100_perforate_train_refuses_a_training_split_smaller_than_a_batch(tmp_path, capsys):
    path = toml(tmp_path, tmp_path / "run", train="batch_size = 2000\nthreads = 1")
    fails(
        capsys,
        ["train", str(path)],
        "[train] batch_size",
        "training split is smaller than one batch",
        "train 1,079 / validation 359 / test 359 rows, batch size 2000",
        "at most 1,079",
    )


@pytest.mark.parametrize(
    "line,needle",
    [
        (f"candidate_lr = {'9' * 400}", "candidate_lr must be a finite number > 0, got 99999"),
        ("lr = 1e400", "lr must be a finite number > 0, got inf"),
        ("seed = 9223372036854775808", "seed must be an integer from 0 to 2^63 - 1"),
        ("seed = 18446744073709551616", "seed must be an integer from 0 to 2^63 - 1"),
        ("weight_decay = 1e308", "weight_decay must be a number from 0 to 1"),
        ("weight_decay = -0.1", "weight_decay must be a number from 0 to 1"),
        ("threads = 100000000000", "threads must be an integer from 1 to 1024"),
        (f"batch_size = {'9' * 400}", "batch_size must be an integer from 1 to 2^63 - 1"),
    ],
)
def test_e101_train_values_that_used_to_crash_later_are_refused(tmp_path, capsys, line, needle):
    path = toml(tmp_path, tmp_path / "run", train=line)
    err = fails(capsys, ["train", str(path)], str(path), "[train]", needle)
    assert len(err) < 300  # a 400-digit value is shortened, the line stays readable


def test_e101_the_largest_accepted_values_still_train(tmp_path, capsys):
    path = toml(
        tmp_path, tmp_path / "run", train="seed = 9223372036854775807\nweight_decay = 1\nlr = 0.01"
    )
    assert main(["train", str(path)]) == 0, capsys.readouterr().err


def test_e101_a_negative_data_seed_is_refused(tmp_path, capsys):
    from perforate.experiments import datasets

    path = toml(tmp_path, tmp_path / "run", data='name = "digits"\nkwargs = { seed = -1 }')
    fails(capsys, ["train", str(path)], str(path), "[data] digits: seed must be an integer >= 0")
    for loader in (datasets.digits, datasets.breast_cancer, datasets.mnist1d):
        with pytest.raises(datasets.DatasetError, match="seed must be an integer >= 0, got -1"):
            loader(seed=-1)
    with pytest.raises(datasets.DatasetError, match=r"seed must be an integer >= 0, got 1\.5"):
        datasets.digits(seed=1.5)


def test_e102_report_of_an_empty_results_list_is_an_error(tmp_path, capsys):
    (tmp_path / "results.json").write_text("[]")
    fails(capsys, ["report", str(tmp_path)], "holds no runs (an empty list)")
    assert not (tmp_path / "demo.png").exists()


def test_e103_an_error_during_a_run_starts_its_own_line_after_the_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    path = toml(tmp_path, tmp_path / "run")
    (tmp_path / "run" / "ckpt.safetensors").mkdir(parents=True)  # the first save fails
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "epoch/s" in err  # the bar was drawn before the failure
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("perforate: error: checkpoint_path"), repr(err)
    assert err.endswith("\n") and "Traceback" not in err


def test_e103_any_command_failing_with_a_bar_on_screen_ends_the_bar_first(
    tmp_path, capsys, monkeypatch
):
    tqdm = pytest.importorskip("tqdm.auto")
    from perforate.experiments import demo
    from perforate.experiments.datasets import DatasetError

    def fails_mid_run(run_dir):
        bar = tqdm.tqdm(desc="runs", total=3)  # left open, as a command that raised leaves it
        bar.update(1)
        raise DatasetError("broken mid-run")

    monkeypatch.setattr(demo, "report", fails_mid_run)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "runs:  33%" in err
    assert err.endswith("\nperforate: error: broken mid-run\n"), repr(err)
