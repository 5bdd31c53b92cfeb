import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketlab.data import IDX_FILES, load_dataset, read_idx, tensors_from
from ticketlab.errors import TicketlabError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_dir(directory: Path, n_train=50, n_test=20, gz=True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        write_idx(directory / (IDX_FILES[key] + (".gz" if gz else "")), arr, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loads_in_the_standard_format(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.train.x.shape == (50, 1, 28, 28) and ds.test.x.shape == (20, 1, 28, 28)
    assert torch.equal(ds.train.y, torch.from_numpy(arrays["train_y"].astype(np.int64)))
    # normalised with the training set's statistics
    assert abs(float(ds.train.x.mean())) < 1e-4 and abs(float(ds.train.x.std()) - 1) < 1e-2
    # pixel order preserved: the brightest training pixel stays the brightest
    flat = arrays["train_x"].reshape(-1)
    assert int(ds.train.x.reshape(-1).argmax()) == int(flat.argmax())


def test_truncated_and_corrupt_idx_files_are_reported(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    path = tmp_path / IDX_FILES["train_x"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TicketlabError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(TicketlabError, match="bad magic"):
        read_idx(path)
    gz = tmp_path / "half.gz"
    gz.write_bytes(gzip.compress(b"\x00" * 1000)[:20])
    with pytest.raises(TicketlabError, match="not a complete gzip"):
        read_idx(gz)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(TicketlabError, match="missing train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    make_idx_dir(tmp_path, n_train=100)
    whole = load_dataset("mnist", data_dir=tmp_path)
    a = load_dataset("mnist", data_dir=tmp_path, val_size=30)
    b = load_dataset("mnist", data_dir=tmp_path, val_size=30)
    assert len(a.train) == 70 and len(a.val) == 30
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.train.y, b.train.y)
    # train and val together are the original training set (as multisets of labels)
    together = torch.cat([a.train.y, a.val.y]).sort().values
    assert torch.equal(together, whole.train.y.sort().values)
    with pytest.raises(TicketlabError, match="leaves no training data"):
        load_dataset("mnist", data_dir=tmp_path, val_size=100)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    make_idx_dir(tmp_path)
    monkeypatch.setenv("TICKETLAB_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist").train) == 50


def test_mnist1d_is_generated_once_and_cached():
    a = load_dataset("mnist1d")
    assert a.train.x.shape == (4000, 40) and a.test.x.shape == (1000, 40) and a.num_classes == 10
    b = load_dataset("mnist1d")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


@pytest.mark.skipif(not FASHION.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    ds = load_dataset("fashion-mnist", val_size=5000)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.input_shape == (1, 28, 28) and set(ds.test.y.tolist()) == set(range(10))


def test_tensors_from_a_dataloader_equals_the_tensors():
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    split = tensors_from(loader)
    assert torch.equal(split.x, x) and torch.equal(split.y, y)
    with pytest.raises(TicketlabError, match="expected"):
        tensors_from(42)
