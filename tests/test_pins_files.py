"""Files: atomic writes with a previous copy, validated reads, nested state as JSON."""

from __future__ import annotations

import json
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_bytes

from perforate import CheckpointError, files


def _st(meta: object, tensors=None) -> bytes:
    """A hand-made safetensors file whose metadata is `meta` (any JSON)."""
    raw = save_bytes(tensors or {"t": torch.zeros(1)})
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8 : 8 + n])
    head["__metadata__"] = meta
    new = json.dumps(head).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + raw[8 + n :]


def test_write_then_read_round_trips_header_and_tensors(tmp_path):
    path = tmp_path / "sub" / "f.safetensors"  # the folder is made
    files.write(path, {"format": "x/1", "n": 3}, {"a": torch.arange(4), "b": torch.ones(2, 2)})
    header, tensors = files.read(path)
    assert header == {"format": "x/1", "n": 3}
    assert torch.equal(tensors["a"], torch.arange(4)) and tensors["b"].shape == (2, 2)
    header, tensors = files.read(path, expect="x/1")
    assert sorted(tensors) == ["a", "b"]


def test_another_format_comes_back_without_its_tensors(tmp_path):
    path = tmp_path / "f"
    files.write(path, {"format": "x/1"}, {"a": torch.arange(4)})
    header, tensors = files.read(path, expect="y/1")
    assert header["format"] == "x/1" and tensors == {}


def test_keep_previous_keeps_exactly_the_file_before(tmp_path):
    path = tmp_path / "f"
    files.atomic_write(path, b"one", keep_previous=True)
    assert not (tmp_path / "f.prev").exists()  # nothing before the first
    files.atomic_write(path, b"two", keep_previous=True)
    files.atomic_write(path, b"three", keep_previous=True)
    assert path.read_bytes() == b"three" and (tmp_path / "f.prev").read_bytes() == b"two"
    files.atomic_write(path, b"four")  # without: .prev untouched
    assert (tmp_path / "f.prev").read_bytes() == b"two"
    assert files.temp_files(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.prev"]


def test_a_failed_write_removes_its_temporary_and_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    files.atomic_write(path, b"old")

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and files.temp_files(path) == []


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        files.atomic_write(tmp_path, b"x")


def test_temp_files_finds_only_this_files_temporaries(tmp_path):
    path = tmp_path / "f"
    (tmp_path / ".f.abc.tmp").write_bytes(b"")
    (tmp_path / ".g.abc.tmp").write_bytes(b"")
    (tmp_path / ".f.abc").write_bytes(b"")
    assert [p.name for p in files.temp_files(path)] == [".f.abc.tmp"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"1234567", "7 bytes: shorter than a safetensors header"),
        (struct.pack("<Q", 100) + b"{}", "header of 100 bytes in a file of 10"),
        (struct.pack("<Q", 3) + b"{}", "header of 3 bytes in a file of 10"),
        (struct.pack("<Q", 2) + b"[]", "header is not a mapping"),  # 2 bytes: all there
        (struct.pack("<Q", 19) + b'{"__metadata__": 5}', "metadata is not a mapping"),
    ],
)
def test_unreadable_files_are_refused_saying_why(tmp_path, data, message):
    path = tmp_path / "f"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=message):
        files.read(path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"other": "1"}, "is a safetensors file but not a perforate checkpoint"),
        ({"perforate": "[1]"}, "structure header has no format field"),
        ({"perforate": '{"format": 2}'}, "structure header has no format field"),
    ],
)
def test_foreign_headers_are_refused(tmp_path, meta, message):
    path = tmp_path / "f"
    path.write_bytes(_st(meta))
    with pytest.raises(CheckpointError, match=message):
        files.read(path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        files.read(tmp_path / "nothing")


def test_nested_state_round_trips_with_its_types():
    state = {
        "t": torch.arange(3),
        "nested": {"a": [1, 2.5, None, "s", True], 3: (torch.ones(2), "x")},
        "np": np.array([[1, 2]], dtype=np.int16),
        "scalars": [np.int64(4), np.float32(0.5)],
        "empty": {},
    }
    tensors: dict[str, torch.Tensor] = {}
    flat = files.flatten(state, "s", tensors)
    json.dumps(flat)  # JSON-able
    assert sorted(tensors) == ["s.0", "s.1.1.0"]
    back = files.unflatten(json.loads(json.dumps(flat)), tensors)
    assert torch.equal(back["t"], torch.arange(3))
    assert back["nested"]["a"] == [1, 2.5, None, "s", True]
    inner = back["nested"][3]
    assert isinstance(inner, tuple) and inner[1] == "x" and torch.equal(inner[0], torch.ones(2))
    assert back["np"].dtype == np.int16 and back["np"].tolist() == [[1, 2]]
    assert back["scalars"] == [4, 0.5] and type(back["scalars"][0]) is int
    assert back["empty"] == {}
    assert files.unflatten({"plain": [1]}, {}) == {"plain": [1]}


def test_a_tensor_is_stored_as_a_detached_copy():
    t = torch.ones(2, requires_grad=True)
    tensors: dict[str, torch.Tensor] = {}
    files.flatten(t, "p", tensors)
    assert not tensors["p"].requires_grad
    with torch.no_grad():
        t.add_(1)
    assert tensors["p"].tolist() == [1.0, 1.0]


def test_something_unstorable_is_refused_naming_where():
    with pytest.raises(CheckpointError, match=r"cannot store a function at 's.0.1'"):
        files.flatten({"f": [1, lambda: 0]}, "s", {})


def test_tensors_come_back_on_the_device_asked_for(tmp_path):
    path = tmp_path / "f"
    files.write(path, {"format": "x/1"}, {"a": torch.arange(3)})
    assert files.read(path)[1]["a"].device.type == "cpu"
    assert files.read(path, device="meta")[1]["a"].device.type == "meta"


def test_a_write_is_on_disk_before_the_rename_and_the_folder_synced_after(tmp_path, monkeypatch):
    log = []
    real_fsync, real_replace = files.os.fsync, files.os.replace

    def fsync(fd):
        st = files.os.fstat(fd)
        log.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else st.st_size))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write(tmp_path / "f", b"12345")
    # The temporary holds all 5 bytes when synced (flushed first), is renamed over the
    # file, and the folder is synced after the rename so the new name survives a crash.
    assert log == [("fsync", 5), ("replace", "f"), ("fsync", "dir")]


def _fixed_name_max(monkeypatch, limit):
    def pathconf(path, name):
        assert name == "PC_NAME_MAX"
        if limit is None:
            raise OSError("no pathconf here")
        return limit

    monkeypatch.setattr(files.os, "pathconf", pathconf)


def test_a_name_longer_than_the_file_system_allows_is_refused_before_writing(tmp_path, monkeypatch):
    _fixed_name_max(monkeypatch, 20)
    files.atomic_write(tmp_path / ("a" * 20), b"x")  # exactly the limit
    with pytest.raises(CheckpointError, match="is 21 bytes long and this file system allows 20"):
        files.atomic_write(tmp_path / ("b" * 21), b"x")
    with pytest.raises(CheckpointError) as info:
        files.atomic_write(tmp_path / ("c" * 16), b"x", keep_previous=True)  # .prev: 21
    assert "kept beside it as <name>.prev, so the name may have 15 bytes at most" in str(info.value)
    files.atomic_write(tmp_path / ("d" * 15), b"x", keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a" * 20, "d" * 15]


def test_without_pathconf_a_name_may_have_255_bytes(tmp_path, monkeypatch):
    _fixed_name_max(monkeypatch, None)
    with pytest.raises(CheckpointError, match="is 256 bytes long and this file system allows 255"):
        files.check_file_name(tmp_path / ("a" * 256))
    files.check_file_name(tmp_path / ("a" * 255))


def test_writes_and_reads_leave_no_file_descriptor_open(tmp_path):
    def open_fds() -> int:
        return len(list(Path("/proc/self/fd").iterdir()))

    files.write(tmp_path / "f", {"format": "x/1"}, {"a": torch.zeros(2)})  # warm up
    before = open_fds()
    for i in range(5):
        files.write(tmp_path / "f", {"format": "x/1", "i": i}, {"a": torch.zeros(2)})
        files.atomic_write(tmp_path / "g", b"data", keep_previous=True)
        files.read(tmp_path / "f")
    assert open_fds() == before


def test_without_proc_the_umask_is_read_and_put_back(monkeypatch, tmp_path):
    class NoProc:
        def __init__(self, *args):
            pass

        def read_text(self):
            raise OSError("no /proc here")

    monkeypatch.setattr(files, "Path", NoProc)
    old = files.os.umask(0o027)
    try:
        assert files._umask() == 0o027
        assert files._umask() == 0o027  # still: put back after reading
    finally:
        files.os.umask(old)


def test_a_name_check_takes_a_str_path(tmp_path):
    files.check_file_name(str(tmp_path / "ok.safetensors"), keep_previous=True)
    with pytest.raises(CheckpointError, match="choose a shorter name"):
        files.check_file_name(str(tmp_path / ("x" * 300)))


def test_without_hard_links_the_previous_file_is_copied(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(files.os, "link", no_links)
    path = tmp_path / "f"
    files.atomic_write(path, b"one", keep_previous=True)
    files.atomic_write(path, b"two", keep_previous=True)
    assert path.read_bytes() == b"two" and (tmp_path / "f.prev").read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.prev"]


def test_the_name_limit_is_asked_of_the_nearest_existing_folder(tmp_path, monkeypatch):
    asked = []

    def pathconf(path, name):
        asked.append(Path(path))
        return 255

    monkeypatch.setattr(files.os, "pathconf", pathconf)
    files.check_file_name(tmp_path / "a" / "b" / "c.safetensors")  # a/b do not exist yet
    assert asked == [tmp_path]


def test_a_header_longer_than_64_mib_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "big"
    n = 64 * 1024 * 1024 + 1
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", n) + b"{")
        fh.truncate(8 + n + 16)  # sparse: the size claims the header is all there
    with pytest.raises(CheckpointError, match=f"header of {n} bytes in a file of {n + 24}"):
        files.read(path)


def test_a_previous_file_replaced_meanwhile_is_simply_not_kept(tmp_path, monkeypatch):
    path = tmp_path / "f"
    files.atomic_write(path, b"one")

    def vanished(src, dst):
        raise FileNotFoundError(src)  # another writer replaced it this instant

    monkeypatch.setattr(files.os, "link", vanished)
    files.atomic_write(path, b"two", keep_previous=True)
    assert path.read_bytes() == b"two" and not (tmp_path / "f.prev").exists()
    assert files.temp_files(path) == []


def test_a_copied_previous_file_is_synced_before_it_is_published(tmp_path, monkeypatch):
    path = tmp_path / "f"
    files.atomic_write(path, b"old")
    log = []
    real_fsync, real_replace = files.os.fsync, files.os.replace

    def fsync(fd):
        log.append(("fsync", files.os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("replace", Path(dst).name))
        real_replace(src, dst)

    def no_links(src, dst):
        raise OSError("no hard links")

    monkeypatch.setattr(files.os, "link", no_links)
    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write(path, b"newer", keep_previous=True)
    # new temp synced (5 bytes), the old file's copy synced (3), published, then the new.
    assert log[:4] == [("fsync", 5), ("fsync", 3), ("replace", "f.prev"), ("replace", "f")]


def test_long_names_get_short_hashed_temporaries_that_are_found_again(tmp_path, monkeypatch):
    _fixed_name_max(monkeypatch, 60)
    long_a, long_b = tmp_path / ("a" * 40), tmp_path / ("b" * 40)
    seen = []
    real = files.tempfile.mkstemp

    def mkstemp(prefix, suffix, dir):
        seen.append(prefix)
        return real(prefix=prefix, suffix=suffix, dir=dir)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    files.atomic_write(long_a, b"x")
    files.atomic_write(long_b, b"x")
    files.atomic_write(long_a, b"y")
    a1, b1, a2 = seen
    assert a1 == a2 != b1 and a1.startswith(".perforate-") and len(a1) == len(".perforate-.") + 24
    stale = tmp_path / f"{a1}zz.tmp"
    stale.write_bytes(b"")
    assert files.temp_files(str(long_a)) == [stale] and files.temp_files(long_b) == []
    short = tmp_path / "s"
    files.atomic_write(short, b"x")
    assert seen[-1] == ".s."  # short names keep a readable prefix


def test_read_takes_a_str_path(tmp_path):
    files.write(tmp_path / "f", {"format": "x/1"}, {"a": torch.ones(1)})
    header, tensors = files.read(str(tmp_path / "f"))
    assert header["format"] == "x/1" and tensors["a"].tolist() == [1.0]


def test_a_plain_mapping_is_unflattened_inside_and_writes_take_a_str(tmp_path):
    t = torch.arange(2)
    back = files.unflatten({"plain": {"__tensor__": "t"}, "n": [1]}, {"t": t})
    assert back["plain"] is t and back["n"] == [1]
    files.atomic_write(str(tmp_path / "s"), b"x", keep_previous=True)
    assert (tmp_path / "s").read_bytes() == b"x"
