"""Fuzzes perforate's readers with mutated real files; run by test_fuzz_files.py.

    python fuzz_worker.py OUT_DIR EXAMPLES

Writes OUT_DIR/fuzz.json: outcomes by exception type, the file size, and how much the
process's peak resident memory grew while fuzzing (a load that allocated from an edited
size would show here).
"""

import json
import random
import resource
import struct
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import perforate
from perforate import DendriteConfig, Perforator

torch.set_num_threads(1)
out = Path(sys.argv[1])
examples = int(sys.argv[2])


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))


def adam(p):
    return torch.optim.Adam(p, lr=0.05)


def make_files():
    model = build()
    ckpt = out / "ckpt.safetensors"
    cfg = DendriteConfig(
        patience=1, dendrite_patience=1, switch_mode="patience", dendrite_max_epochs=2
    )
    ctl = Perforator(model, cfg, optimizer=adam, checkpoint_path=ckpt, seed=0)
    gen = torch.Generator().manual_seed(0)
    for s in [0.1, 0.1, 0.0, 0.0, 0.5, 0.5, 0.0]:
        x, t = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
        ctl.optimizer.zero_grad()
        nn.functional.mse_loss(model(x), t).backward()
        ctl.optimizer.step()
        ctl.end_epoch(s)
    model_file = out / "model.safetensors"
    perforate.save(model, model_file)
    return {"model": model_file.read_bytes(), "training": ckpt.read_bytes()}


ORIGINALS = make_files()


def split(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(st_header, body):
    raw = json.dumps(st_header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


def replace(obj, path, value):
    if not path:
        return value
    obj[path[0]] = replace(obj[path[0]], path[1:], value)
    return obj


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True)
    | st.text(max_size=5)
    | st.sampled_from([10**8, -1, 0, 1, 2.5, "2"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
outcomes: dict[str, int] = {}


def attempt(kind, data):
    path = out / f"fuzzed_{kind}.safetensors"
    path.write_bytes(data)
    try:
        if kind == "model":
            perforate.load(build(), path)
        else:
            Perforator.resume(path, build(), optimizer=adam)
        name = "ok"
    except perforate.CheckpointError as exc:
        name = type(exc).__name__
    except Exception as exc:  # what the test looks for
        name = f"UNEXPECTED {type(exc).__name__}: {str(exc)[:200]}"
    outcomes[name] = outcomes.get(name, 0) + 1


@settings(
    max_examples=examples,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    kind=st.sampled_from(["model", "training"]),
    how=st.sampled_from(["bytes", "value"]),
    seed=st.integers(0, 2**32 - 1),
    value=JSON,
)
def fuzz(kind, how, seed, value):
    data = bytearray(ORIGINALS[kind])
    rng = random.Random(seed)
    if how == "bytes":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        attempt(kind, bytes(data))
        return
    st_header, body = split(bytes(data))
    meta = json.loads(st_header["__metadata__"]["perforate"])
    where = rng.choice(list(paths(meta))[1:])
    meta = replace(meta, where, value)
    st_header["__metadata__"]["perforate"] = json.dumps(meta)
    attempt(kind, join(st_header, body))


attempt("model", ORIGINALS["model"])
attempt("training", ORIGINALS["training"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fuzz()
growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
(out / "fuzz.json").write_text(
    json.dumps(
        {
            "outcomes": outcomes,
            "growth_kb": growth_kb,
            "file_kb": max(len(v) for v in ORIGINALS.values()) / 1024,
        }
    )
)
