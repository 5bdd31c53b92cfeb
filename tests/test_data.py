import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketlab.data import PAD, Split, augment_draws, batches, crop_flip, epoch_order, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.sources import IDX_FILES, read_idx
from ticketlab.user_data import tensors_from

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
    # images stay uint8 in memory, exactly the file's pixels
    assert ds.train.x.dtype == torch.uint8 and torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays["train_x"]))
    assert torch.equal(ds.train.y, torch.from_numpy(arrays["train_y"].astype(np.int64)))
    # batches are normalised with the training set's statistics
    x = ds.train.inputs(slice(None))
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2


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


def test_missing_files_say_what_is_needed(tmp_path):
    with pytest.raises(TicketlabError, match="must hold the four IDX files train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(TicketlabError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


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


def test_the_old_flat_data_dir_layout_gets_a_clear_error(tmp_path, monkeypatch):
    make_idx_dir(tmp_path)
    monkeypatch.setenv("TICKETLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(TicketlabError, match="one directory per dataset: move them to .*mnist"):
        load_dataset("mnist")


def test_a_corrupt_gzip_is_reported(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / (IDX_FILES["train_x"] + ".gz")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # damaged in the middle, length unchanged
    path.write_bytes(bytes(raw))
    with pytest.raises(TicketlabError, match="not a complete gzip"):
        read_idx(path)


def test_data_dir_from_environment_has_a_directory_per_dataset(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "mnist", n_train=50)
    make_idx_dir(tmp_path / "fashion-mnist", n_train=40)
    monkeypatch.setenv("TICKETLAB_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist").train) == 50
    assert len(load_dataset("fashion-mnist").train) == 40


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
    # Fashion-MNIST's published statistics: mean 0.286, std 0.353 (of pixels scaled to [0, 1])
    mean, std = -ds.train.shift / (ds.train.scale * 255), 1 / (ds.train.scale * 255)
    assert abs(float(mean) - 0.286) < 0.002 and abs(float(std) - 0.353) < 0.002


def test_tensors_from_a_dataloader_equals_the_tensors():
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    split = tensors_from(loader)
    assert torch.equal(split.x, x) and torch.equal(split.y, y)
    with pytest.raises(TicketlabError, match="expected"):
        tensors_from(42)


# ------------------------------------------------------------------------------------------ augmentation


def test_crop_flip_golden_on_a_tiny_image():
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3)  # rows 1 2 3 / 4 5 6 / 7 8 9
    centre = torch.tensor([[PAD, PAD, 0]])
    assert torch.equal(crop_flip(x, centre), x)
    flipped = crop_flip(x, torch.tensor([[PAD, PAD, 1]]))
    assert flipped[0, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
    # shift by one pixel down and right: the window starts one row/column up-left, padding is zero
    shifted = crop_flip(x, torch.tensor([[PAD - 1, PAD - 1, 0]]))
    assert shifted[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    both = crop_flip(x, torch.tensor([[PAD + 1, PAD - 1, 1]]))  # crop rows 1..3, cols -1..1, then flip
    assert both[0, 0].tolist() == [[5, 4, 0], [8, 7, 0], [0, 0, 0]]


def _image_split(n=64, channels=3, size=8):
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def test_augmentation_is_seeded_resumable_and_changes_images():
    split = _image_split()
    plain = [x for _, x, _ in batches(split, 16, 5, 0, 8)]
    a = [x for _, x, _ in batches(split, 16, 5, 0, 8, augment=True)]
    b = [x for _, x, _ in batches(split, 16, 5, 0, 8, augment=True)]
    other = [x for _, x, _ in batches(split, 16, 6, 0, 8, augment=True)]
    assert all(torch.equal(u, v) for u, v in zip(a, b)), "same seed, same augmented batches"
    assert not all(torch.equal(u, v) for u, v in zip(a, plain)), "augmentation must change the images"
    assert not all(torch.equal(u, v) for u, v in zip(a, other)), "another seed, other draws"
    # resuming at iteration 5 sees the batches an uninterrupted run saw there, augmentation included
    resumed = [x for _, x, _ in batches(split, 16, 5, 5, 8, augment=True)]
    assert all(torch.equal(u, v) for u, v in zip(a[5:], resumed))


def test_augmented_batches_are_crops_and_flips_of_the_same_images():
    split = _image_split(n=32, channels=1, size=6)
    (_, x_plain, y_plain), (_, x_aug, y_aug) = (
        next(batches(split, 32, 1, 0, 1)),
        next(batches(split, 32, 1, 0, 1, augment=True)),
    )
    assert torch.equal(y_plain, y_aug)  # augmentation leaves the order alone
    draws = augment_draws(32, 1, 0)
    raw = split.x[epoch_order(32, 1, 0)]
    assert torch.equal(x_aug, crop_flip(raw, draws).float()) and torch.equal(x_plain, raw.float())
    assert draws[:, :2].min() >= 0 and draws[:, :2].max() <= 2 * PAD and set(draws[:, 2].tolist()) <= {0, 1}


def test_augmentation_needs_images():
    with pytest.raises(TicketlabError, match="needs images"):
        load_dataset("synthetic", augment=True)


def test_synthetic_images_are_uint8_with_per_channel_normalisation():
    ds = load_dataset("synthetic-images", val_size=100)
    assert ds.input_shape == (3, 32, 32) and ds.train.x.dtype == torch.uint8 and len(ds.val) == 100
    x = ds.train.inputs(slice(None))
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-2)
    # test and validation use the training statistics, not their own
    assert torch.equal(ds.test.scale, ds.train.scale) and torch.equal(ds.val.shift, ds.train.shift)


def test_class_subsets_keep_only_those_classes_relabelled_in_order():
    from ticketlab.data import Split, class_subset

    split = Split(torch.arange(8.0).view(8, 1), torch.tensor([0, 5, 7, 5, 2, 9, 7, 1]))
    sub = class_subset(split, (7, 5))
    assert sub.x.flatten().tolist() == [1.0, 2.0, 3.0, 6.0] and sub.y.tolist() == [1, 0, 1, 0]
    data = load_dataset("synthetic", classes=(5, 6, 7, 8, 9))
    assert data.num_classes == 5 and set(data.train.y.tolist()) == {0, 1, 2, 3, 4}
    full = load_dataset("synthetic")
    assert len(data.train) == int((full.train.y >= 5).sum())
