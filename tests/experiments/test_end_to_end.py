"""End to end on real data: scikit-learn's digits, an MLP, the documented loop."""

from __future__ import annotations

import json

import torch

import perforate
from perforate import DendriteConfig
from perforate.experiments import datasets as data
from perforate.experiments import loop as training
from perforate.experiments import models
from perforate.experiments.cli import main


def test_pb_run_installs_dendrites_and_never_ends_below_its_first_phase():
    torch.manual_seed(0)
    splits = data.digits(seed=0)
    model = models.mlp(64, 8, 10)
    config = DendriteConfig(
        patience=4, dendrite_patience=2, dendrite_max_epochs=4, max_dendrites=2, max_retries=1
    )
    result = training.fit_classifier(model, splits, config, seed=0)
    first_phase = [r for r in result.history if r["cycle"] == 0 and r["phase"] == "neuron"]
    assert any(r["event"] == "installed" for r in result.history)
    assert max(r["dendrites"] for r in result.history) >= 1
    assert result.val >= max(r["score"] for r in first_phase)
    # The final model holds the best accepted state: evaluated again, it scores exactly that.
    assert result.val == result.best_val
    assert any(r["correlation"] for r in result.history)
    assert result.epochs == len(result.history) == len(result.test_by_epoch)


def test_cli_report_redraws_from_saved_results(tmp_path, capsys):
    splits = data.digits(seed=0)
    runs = []
    for label, config in [
        ("restart control H=8", DendriteConfig(method="restart", patience=2, max_cycles=1)),
        ("PB H=8", DendriteConfig(patience=2, dendrite_max_epochs=2, max_cycles=1)),
    ]:
        torch.manual_seed(0)
        r = training.fit_classifier(models.mlp(64, 8, 10), splits, config, seed=0)
        runs.append({**r.to_dict(), "label": label, "dataset": "digits"})
    (tmp_path / "results.json").write_text(json.dumps(runs))
    import matplotlib

    matplotlib.use("svg")  # as a notebook would have its own: the report must not switch it
    assert main(["report", str(tmp_path)]) == 0
    assert matplotlib.get_backend() == "svg"
    from perforate.experiments.report import run_title

    assert run_title(tmp_path, runs) == f"{tmp_path.name}: digits, 2 runs, 1 seed"
    out = capsys.readouterr().out
    assert "PB H=8" in out and "cycle" in out
    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_config_lists_every_setting(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for name in perforate.DendriteConfig.__dataclass_fields__:
        assert name in out


def test_quickstart_example_runs(tmp_path, monkeypatch):
    import runpy
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "quickstart.py"
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "runs" / "quickstart" / "model.safetensors").is_file()
