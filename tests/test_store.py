"""The store: atomic, reproducible, umask-following files, verified when read back, and a lock per run."""

import json
import os
import random
import signal
import stat
import subprocess
import time

import pytest
import torch
from conftest import PY, REPO

from ticketlab import masks as M
from ticketlab import store
from ticketlab.errors import TicketlabError
from ticketlab.store import DamagedFile, RunLock

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _tensors() -> dict[str, torch.Tensor]:
    # Enough names that a hash-map order equal to the sorted one by chance is out of the question (1 / 12!).
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.{kind}": torch.randn(3, i + 1, generator=g) for i in range(6) for kind in ("weight", "bias")}


def _record(**extra):
    return {"level": 1, "branch": "ticket", "final_test_acc": 0.5, "files": {"a": "00"}, **extra}


# ------------------------------------------------------------------------------------------ reproducible bytes


def test_the_same_tensors_saved_by_two_processes_give_identical_bytes(tmp_path):
    # The safetensors library writes its header's keys in (per-process random) hash-map order.
    script = (
        "import sys, torch; from ticketlab import store, masks as M\n"
        "g = torch.Generator().manual_seed(0)\n"
        "t = {f'layer{i}.{k}': torch.randn(3, i + 1, generator=g) for i in range(6) for k in ('weight', 'bias')}\n"
        "store.save_tensors(sys.argv[1] + '/t.safetensors', t, metadata={'a': '1', 'b': '2', 'c': '3'})\n"
        "M.save_mask(sys.argv[1] + '/m.safetensors', {n: v > 0 for n, v in t.items()})\n"
    )
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        subprocess.run([PY, "-c", script, str(tmp_path / name)], env=ENV, check=True)
    for file in ("t.safetensors", "m.safetensors"):
        a, b = (tmp_path / "a" / file).read_bytes(), (tmp_path / "b" / file).read_bytes()
        assert a == b, f"{file} differs between two processes"
    # and this process writes the same bytes too
    digest = store.save_tensors(tmp_path / "here.safetensors", _tensors(), metadata={"c": "3", "b": "2", "a": "1"})
    assert (tmp_path / "here.safetensors").read_bytes() == (tmp_path / "a" / "t.safetensors").read_bytes()
    assert digest == store.sha256_file(tmp_path / "a" / "t.safetensors")


def test_saved_tensors_come_back_exactly_and_in_their_order(tmp_path):
    tensors = {"z": torch.arange(4.0), "a": torch.tensor([True, False]), "m": torch.tensor([[1, 2]], dtype=torch.int8)}
    digest = store.save_tensors(tmp_path / "t.safetensors", tensors)
    back = store.load_tensors(tmp_path / "t.safetensors", sha256=digest)
    assert list(back) == ["z", "a", "m"]
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


# ------------------------------------------------------------------------------------------ permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store.save_tensors(tmp_path / "t.safetensors", _tensors())
        M.save_mask(tmp_path / "m.safetensors", {"w": torch.ones(2, dtype=torch.bool)})
        store.write_record(tmp_path / "r.json", _record())
        store.write_csv(tmp_path / "r.csv", [{"a": 1}], ["a"])
        store.atomic_write_text(tmp_path / "sub" / "t.txt", "x")
    finally:
        os.umask(old)
    for name in ("t.safetensors", "m.safetensors", "r.json", "r.csv", "sub/t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# ------------------------------------------------------------------------------------------ atomic writes


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    store.write_record(path, _record())
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_record(path, _record(final_test_acc=0.9))
    with pytest.raises(OSError, match="No space left"):
        store.save_tensors(tmp_path / "new.safetensors", _tensors())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_taking_the_lock_sweeps_temporaries_a_killed_writer_left(tmp_path):
    stale = [
        tmp_path / "replicate_0" / "level_1" / ".mask.safetensors.abc123.tmp",
        tmp_path / "replicate_0" / "level_1" / "ticket" / ".final.safetensors.x9.tmp",
    ]
    kept = [tmp_path / "replicate_0" / "level_1" / "mask.safetensors", tmp_path / "replicate_0" / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    with RunLock(tmp_path):
        pass
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


# ------------------------------------------------------------------------------------------ verified reads


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "not-utf8":
        path.write_bytes(data.replace(b'"ticket"', b'"tick\xffet"'))
    elif how == "edited":
        record = json.loads(data)
        record["final_test_acc"] = 0.75
        path.write_text(json.dumps(record, indent=2, sort_keys=True))
    elif how == "list":
        path.write_text("[1, 2]")


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "not-utf8", "edited", "list"])
def test_read_record_refuses_a_damaged_record_in_one_line(tmp_path, how):
    path = tmp_path / "result.json"
    store.write_record(path, _record())
    _damage(path, how)
    with pytest.raises(DamagedFile) as e:
        store.read_record(path)
    assert isinstance(e.value, TicketlabError) and e.value.path == path
    assert str(path) in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400


def test_read_record_returns_an_intact_record_and_accepts_one_without_a_digest(tmp_path):
    path = tmp_path / "result.json"
    store.write_record(path, _record())
    assert {k: v for k, v in store.read_record(path).items() if k != "sha256"} == _record()
    # records written before they carried their own digest (ticketlab 0.1) are read as they are
    path.write_text(json.dumps(_record()))
    assert store.read_record(path) == _record()
    with pytest.raises(DamagedFile, match="missing"):
        store.read_record(tmp_path / "absent.json")


def test_read_json_refuses_non_utf8(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"lr": "0.1\xe9"}')
    with pytest.raises(DamagedFile, match="not valid JSON"):
        store.read_json(path)


def test_load_tensors_refuses_a_file_that_is_not_the_recorded_one(tmp_path):
    path = tmp_path / "t.safetensors"
    digest = store.save_tensors(path, _tensors())
    with pytest.raises(DamagedFile, match="SHA-256"):
        store.load_tensors(path, sha256="0" * 64)
    changed = {**_tensors(), "layer0.bias": torch.zeros(3, 1)}
    store.save_tensors(path, changed)  # a valid file, but not the one recorded
    with pytest.raises(DamagedFile, match="SHA-256"):
        store.load_tensors(path, sha256=digest)
    with pytest.raises(DamagedFile, match="missing"):
        store.load_tensors(tmp_path / "absent.safetensors", sha256=digest)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_load_tensors_refuses_an_unreadable_file_without_a_digest(tmp_path, how):
    path = tmp_path / "t.safetensors"
    store.save_tensors(path, _tensors())
    _damage(path, how)
    with pytest.raises(DamagedFile):
        store.load_tensors(path)


# ------------------------------------------------------------------------------------------ the lock


def test_a_second_holder_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            "import sys, time; from ticketlab.store import RunLock\n"
            "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TicketlabError, match=f"in use by pid {holder.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    start = time.monotonic()
    with RunLock(tmp_path):  # the kernel dropped the dead holder's lock
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert time.monotonic() - start < 1
