"""The cache of work derived from files (decoded datasets): used when the files are the same, never stale or damaged."""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ticketlab.data import load_dataset
from ticketlab.sources import IDX_FILES
from ticketlab.store import cache_dir, derived


def counting_make(value: float):
    calls = []

    def make():
        calls.append(1)
        return {"t": torch.full((3,), value)}, {"value": value}

    return make, calls


def test_derived_work_is_done_once_per_content_of_its_sources(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"one")
    make, calls = counting_make(1.0)
    first = derived("thing", [source], make)
    again = derived("thing", [source], make)
    assert len(calls) == 1 and torch.equal(again[0]["t"], first[0]["t"]) and again[1] == {"value": 1.0}
    source.write_bytes(b"two")  # same size, maybe the same modification time: the content decides
    make2, calls2 = counting_make(2.0)
    assert derived("thing", [source], make2)[1] == {"value": 2.0} and len(calls2) == 1


def test_a_damaged_copy_is_made_again_and_a_missing_source_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETLAB_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "a.bin"
    source.write_bytes(b"one")
    make, calls = counting_make(1.0)
    derived("thing", [source], make)
    (tensors,) = (cache_dir() / "derived").glob("thing-*.safetensors")
    blob = bytearray(tensors.read_bytes())
    blob[-1] ^= 1  # one flipped bit in the data
    tensors.write_bytes(bytes(blob))
    tensors_back, _ = derived("thing", [source], make)
    assert len(calls) == 2 and torch.equal(tensors_back["t"], torch.full((3,), 1.0))
    assert derived("thing", [source], make) and len(calls) == 2  # written again, and trusted again
    make3, calls3 = counting_make(3.0)
    derived("other", [tmp_path / "missing.bin"], make3)
    derived("other", [tmp_path / "missing.bin"], make3)
    assert len(calls3) == 2


def write_idx_dir(directory: Path, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, 40, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, a in arrays.items():
        raw = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
        (directory / f"{IDX_FILES[key]}.gz").write_bytes(gzip.compress(raw))
    return arrays["train_x"]


def test_a_dataset_read_from_the_decoded_copy_equals_the_files_and_follows_their_changes(tmp_path):
    pixels = write_idx_dir(tmp_path, seed=0)
    first = load_dataset("mnist", data_dir=tmp_path)
    second = load_dataset("mnist", data_dir=tmp_path)  # from the decoded copy
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.x.dtype == b.x.dtype == torch.uint8
        assert torch.equal(a.scale, b.scale) and torch.equal(a.shift, b.shift)
    assert torch.equal(second.train.x[:, 0], torch.from_numpy(pixels))
    new_pixels = write_idx_dir(tmp_path, seed=1)  # new images, same sizes
    assert torch.equal(load_dataset("mnist", data_dir=tmp_path).train.x[:, 0], torch.from_numpy(new_pixels))
