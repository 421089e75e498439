"""Fault injection: SIGKILL a checkpointing run at random moments; no state is ever lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from perforate import training_state

WORKER = Path(__file__).with_name("kill_worker.py")
KILLS = int(os.environ.get("PERFORATE_KILL_TEST_KILLS", "6"))  # more for a campaign
MAX_EPOCHS = 150


def _start(ckpt: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent.parent / "src"), env.get("PYTHONPATH", "")]
    )
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(ckpt), str(MAX_EPOCHS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_e91_random_sigkills_never_lose_the_last_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.safetensors"
    rng = random.Random(7)
    kills = lost = found_prev = finished = last_saved = 0
    for _ in range(3 * KILLS):
        if kills == KILLS:
            break
        proc = _start(ckpt)
        saved: list[int] = []

        def read(p=proc, out=saved):
            for line in p.stdout:
                if line.startswith("saved"):
                    out.append(int(line.split()[1]))

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 120
        while not saved and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # anywhere: mid-epoch, mid-save, between
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        reader.join()
        if proc.returncode == 0:  # the run finished first: start a new one
            finished += 1
            for f in tmp_path.iterdir():
                f.unlink()
            last_saved = 0
            continue
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
        last_saved = max([last_saved, *saved])
        state, found = training_state.load_latest(ckpt)
        lost += state["controller"]["epoch"] < last_saved
        found_prev += found != ckpt
    assert kills == KILLS and lost == 0
    proc = _start(ckpt)  # and the run still finishes from where it was
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines()[-1].startswith("done")
    print(
        f"{kills} kills, {finished} runs finished on their own, lost {lost}, "
        f"resumed from .prev {found_prev}"
    )
