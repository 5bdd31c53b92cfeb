"""Datasets held in memory as tensors on the device; batches are index gathers.

A dataset is loaded once, normalised with the training set's statistics, and moved to the device.
The training order is a seeded permutation per epoch, so the batch at any iteration can be recomputed
(which is what lets a run resume the data order at the rewind step k).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ticketlab.errors import TicketlabError
from ticketlab.store import atomic_write_bytes, cache_dir


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, *input_shape) float32 and labels ``y`` (N,) int64, on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    val: Split | None
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        val = self.val.to(device) if self.val is not None else None
        return replace(self, train=self.train.to(device), test=self.test.to(device), val=val)


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The seeded permutation of ``n`` training indices used in ``epoch``."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=g).to(device)


def batches(
    split: Split, batch_size: int, seed: int, start: int, stop: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(iteration, x, y)`` for iterations ``start <= it < stop``.

    Each epoch is a seeded permutation; the last partial batch is dropped so every epoch has
    ``len(split) // batch_size`` iterations. Starting at any ``start`` gives the same batches an
    uninterrupted run would have seen there.
    """
    per_epoch = iterations_per_epoch(len(split), batch_size)
    epoch, order = -1, None
    for it in range(start, stop):
        e, pos = divmod(it, per_epoch)
        if e != epoch:
            epoch, order = e, epoch_order(len(split), seed, e, split.x.device)
        idx = order[pos * batch_size : (pos + 1) * batch_size]
        yield it, split.x[idx], split.y[idx]


def iterations_per_epoch(n: int, batch_size: int) -> int:
    if batch_size > n:
        raise TicketlabError(f"batch_size {batch_size} is larger than the training set ({n} examples)")
    return n // batch_size


# ---------------------------------------------------------------------------------------------- loaders

_LOADERS: dict[str, tuple[str, Callable[[Path | None], tuple[Split, Split, int]]]] = {}


def register_dataset(name: str, description: str):
    def wrap(fn):
        _LOADERS[name] = (description, fn)
        return fn

    return wrap


def dataset_names() -> dict[str, str]:
    return {name: desc for name, (desc, _) in _LOADERS.items()}


def load_dataset(
    name: str, *, data_dir: str | Path | None = None, val_size: int = 0, device: str | torch.device = "cpu"
) -> Dataset:
    """Load a registered dataset, split off ``val_size`` training examples, normalise, move to ``device``."""
    if name not in _LOADERS:
        raise TicketlabError(f"unknown dataset {name!r}; known: {', '.join(_LOADERS)}")
    loader = _LOADERS[name][1]
    train, test, num_classes = loader(Path(data_dir) if data_dir else None)
    return prepare(name, train, test, num_classes, val_size=val_size, device=device)


def prepare(
    name: str, train: Split, test: Split, num_classes: int, *, val_size: int = 0, device: str | torch.device = "cpu"
) -> Dataset:
    """Split off validation data (a fixed seeded draw), standardise with training statistics, move to device."""
    train, val = split_validation(train, val_size)
    # One mean/std over all features: the usual MNIST-style normalisation, and shape agnostic.
    mean, std = train.x.mean(), train.x.std().clamp_min(1e-8)

    def norm(s: Split) -> Split:
        return Split(((s.x - mean) / std).float().contiguous(), s.y.long())

    return Dataset(name, norm(train), norm(test), norm(val) if val is not None else None, num_classes).to(device)


def split_validation(train: Split, val_size: int) -> tuple[Split, Split | None]:
    """Hold ``val_size`` training examples out for validation: the same fixed seeded draw every time."""
    if not val_size:
        return train, None
    if val_size >= len(train):
        raise TicketlabError(f"val_size {val_size} leaves no training data (training set has {len(train)})")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    vi, ti = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Split(train.x[ti], train.y[ti]), Split(train.x[vi], train.y[vi])


@register_dataset("mnist1d", "MNIST-1D (Greydanus & Kobak), generated locally: 4000 train / 1000 test, 40 features")
def _mnist1d(_: Path | None) -> tuple[Split, Split, int]:
    path = cache_dir() / "mnist1d-standard-v1.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # the package's standard arguments (seed 42)
        import io

        buf = io.BytesIO()
        np.savez(buf, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        atomic_write_bytes(path, buf.getvalue())
    with np.load(path) as d:
        train = Split(torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long())
        test = Split(torch.from_numpy(d["x_test"]).float(), torch.from_numpy(d["y_test"]).long())
    return train, test, 10


@register_dataset("synthetic", "tiny Gaussian-cluster data for tests: 10 classes, 20 features, 2000 / 500")
def _synthetic(_: Path | None) -> tuple[Split, Split, int]:
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(10, 20, generator=g) * 1.2

    def draw(n: int) -> Split:
        y = torch.randint(0, 10, (n,), generator=g)
        return Split(centers[y] + torch.randn(n, 20, generator=g), y)

    return draw(2000), draw(500), 10


# ------------------------------------------------------------------------------------------ IDX files

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array; a truncated or malformed file is an error."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise TicketlabError(f"{path} is not a complete gzip file ({e}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise TicketlabError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise TicketlabError(f"{path} is truncated or corrupt: {len(body)} data bytes, expected {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_idx_dir(directory: Path, name: str, how_to_get: str) -> tuple[Split, Split, int]:
    paths = {k: _find_idx(directory, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise TicketlabError(f"{name}: missing {', '.join(missing)} (.gz or plain) in {directory}. {how_to_get}")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        if len(arrays[f"{part}_x"]) != len(arrays[f"{part}_y"]):
            raise TicketlabError(f"{name}: {part} images and labels in {directory} differ in length")

    def split(part: str) -> Split:
        x = torch.from_numpy(arrays[f"{part}_x"].astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
        return Split(x, torch.from_numpy(arrays[f"{part}_y"].astype(np.int64)))

    return split("train"), split("test"), 10


def _data_dir(given: Path | None, default: str) -> Path:
    if given is not None:
        return given
    env = os.environ.get("TICKETLAB_DATA_DIR")
    return Path(env) if env else Path(default)


@register_dataset("fashion-mnist", "Fashion-MNIST from IDX files (Debian: apt-get install dataset-fashion-mnist)")
def _fashion_mnist(data_dir: Path | None) -> tuple[Split, Split, int]:
    directory = _data_dir(data_dir, "/usr/share/datasets/fashion-mnist")
    return load_idx_dir(
        directory,
        "fashion-mnist",
        "Install them with `apt-get install dataset-fashion-mnist` (puts them in /usr/share/datasets/fashion-mnist) "
        "or pass --data-dir / set TICKETLAB_DATA_DIR to a directory holding the four IDX files.",
    )


@register_dataset("mnist", "MNIST from IDX files in --data-dir / $TICKETLAB_DATA_DIR")
def _mnist(data_dir: Path | None) -> tuple[Split, Split, int]:
    directory = _data_dir(data_dir, str(cache_dir() / "mnist"))
    return load_idx_dir(
        directory,
        "mnist",
        "Put the four standard MNIST IDX files there, or pass --data-dir / set TICKETLAB_DATA_DIR to where they are.",
    )


def tensors_from(source, name: str = "data") -> Split:
    """A :class:`Split` from ``(x, y)`` tensors or any iterable of ``(x, y)`` batches (e.g. a DataLoader)."""
    if isinstance(source, Split):
        return source
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(torch.is_tensor(t) for t in source):
        x, y = source
    else:
        try:
            xs, ys = zip(*((b[0], b[1]) for b in source))
        except (TypeError, ValueError, IndexError):
            raise TicketlabError(
                f"{name}: expected (x, y) tensors or an iterable of (x, y) batches such as a DataLoader"
            ) from None
        x, y = torch.cat(xs), torch.cat(ys)
    if len(x) != len(y):
        raise TicketlabError(f"{name}: x has {len(x)} examples but y has {len(y)}")
    return Split(x.float(), y.long())


def fingerprint(split: Split) -> str:
    """A short content hash (used to tie a Python-API run directory to its data)."""
    h = hashlib.sha256()
    h.update(split.x.detach().cpu().numpy().tobytes())
    h.update(split.y.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:10]
