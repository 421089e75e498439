"""The installed wheel without extras: run by `make wheel-check` in a fresh venv that holds
only torch and the wheel (CI runs it through `make test`).

    python tools/wheel_smoke.py            # inside the wheel's venv (make wheel-check)
    python tools/wheel_smoke.py --quick    # in the development tree (seconds; the tests)

`--quick` runs the same training loop and command-line checks against the source tree,
leaving out what only a bare wheel can show (imported from site-packages, extras missing).

Checks that `import perforate` pulls in no optional dependency, that a small training loop
grows dendrites end to end, and that the command line works where it can and names the
missing pip extra where it cannot.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

import perforate

OPTIONAL = ("matplotlib", "sklearn", "mnist1d", "peft", "lightning", "transformers")


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    here = Path(perforate.__file__).parent
    if not quick:
        assert "site-packages" in str(here), f"perforate imported from {here}, not the wheel"
    assert (here / "py.typed").is_file(), "py.typed is missing from the wheel"
    loaded = [m for m in OPTIONAL if m in sys.modules]
    assert not loaded, f"import perforate pulled in optional modules {loaded}"

    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    config = perforate.DendriteConfig(
        switch_mode="fixed", fixed_neuron_epochs=3, fixed_dendrite_epochs=2, max_cycles=2
    )
    ctl = perforate.Perforator(
        model, config, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), seed=0
    )
    events = []
    while not ctl.done:
        for i in range(0, 384, 32):
            ctl.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            ctl.optimizer.step()
        with torch.no_grad():
            accuracy = (model(x[384:]).argmax(1) == y[384:]).float().mean()
        events.append(ctl.end_epoch(accuracy))
    assert perforate.Event.INSTALLED in events, events

    cli = shutil.which("perforate")
    assert cli is not None, "the perforate command was not installed"
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"perforate {perforate.__version__}", version.stdout
    listed = subprocess.run([cli, "examples"], capture_output=True, text=True, check=True)
    bundled = [line for line in listed.stdout.splitlines() if line.endswith(".toml")]
    assert len(bundled) >= 2, listed.stdout
    assert quick or all("site-packages" in p for p in bundled), listed.stdout
    if quick:
        print(f"quick ok: perforate {perforate.__version__}, {len(events)} epochs")
        return
    demo = subprocess.run([cli, "demo", "--seeds", "1"], capture_output=True, text=True)
    assert demo.returncode == 2, (demo.returncode, demo.stderr)
    assert "pip install 'perforate[" in demo.stderr and "Traceback" not in demo.stderr
    print(f"wheel ok: perforate {perforate.__version__}, {len(events)} epochs, {events[-1].value}")


if __name__ == "__main__":
    main()
