"""Datasets held in memory as tensors on the device; batches are index gathers.

A dataset is loaded once, split, and moved to the device. Images stay uint8 there (a quarter of the
memory of float32) and each batch is normalised per channel with the training set's statistics, and
augmented if asked, on the device, for the whole batch at once. Other data is normalised once.
The training order is a seeded permutation per epoch, and so are the augmentation draws, so the batch
at any iteration can be recomputed (which is what lets a run resume the data order at the rewind step k).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ticketlab import sources
from ticketlab.errors import TicketlabError
from ticketlab.seeds import generator
from ticketlab.store import atomic_write_bytes, cache_dir, derived

if TYPE_CHECKING:  # objectives import Split; the Dataset only carries one
    from ticketlab.training.objectives import Objective


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, *input_shape) and labels ``y`` (N,) int64, on one device.

    ``x`` is float32 and ready to use, or uint8 images (N, C, H, W) with a per-channel affine map
    ``scale``, ``shift`` (C, 1, 1) that :meth:`normalize` applies to a batch where it is used, or (the Python
    API's integer inputs, e.g. token ids) int64 used as it is.
    """

    x: torch.Tensor
    y: torch.Tensor
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of raw ``x`` rows as float32 model inputs."""
        if self.scale is None:
            return x
        return torch.addcmul(self.shift, x.float(), self.scale)  # x * scale + shift, one pass

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.normalize(self.x[index])

    def head(self, n: int) -> Split:
        """The first ``n`` examples."""
        return Split(self.x[:n], self.y[:n], self.scale, self.shift)

    def to(self, device: torch.device | str) -> Split:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Split(self.x.to(device), self.y.to(device), move(self.scale), move(self.shift))


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    val: Split | None
    num_classes: int
    augment: bool = False  # random crop (4-pixel padding) and horizontal flip of training batches
    objective: Objective | None = None  # how training and scoring read the model's output; None: classification
    vocab: int | None = None  # token datasets: the input vocabulary (ids 0..vocab-1); None for float inputs

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


PAD = 4  # the CIFAR standard: pad by 4 pixels, crop back to the original size


def augment_draws(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-position draws for an epoch: (n, 3) int64 rows of (row shift, column shift, flip)."""
    g = generator(seed, epoch, "augment")  # independent of the data order's draws
    shifts = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n, 1), generator=g)
    return torch.cat([shifts, flips], 1).to(device)


def crop_flip(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Random crop with zero padding, then horizontal flip, of a whole batch (B, C, H, W), in one gather.

    ``draws`` (B, 3): row offset and column offset into the padded image (0..2*PAD), flip (0/1).
    Works on raw uint8 images, so the padding is black, as in the usual pipeline (pad, crop, normalise).
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))  # (B, C, H+2P, W+2P)
    rows = draws[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    cols = draws[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(draws[:, 2:3].bool(), cols.flip(1), cols)  # a flipped crop reads its columns backwards
    flat = padded.flatten(2)  # (B, C, (H+2P)(W+2P))
    index = (rows[:, :, None] * padded.shape[-1] + cols[:, None, :]).flatten(1)  # (B, H*W)
    return flat.gather(2, index[:, None, :].expand(b, c, -1)).view(b, c, h, w)


def batches(
    split: Split, batch_size: int, seed: int, start: int, stop: int, *, augment: bool = False
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(iteration, x, y)`` for iterations ``start <= it < stop``; ``x`` is normalised float32 (integer
    inputs pass as they are).

    Each epoch is a seeded permutation; the last partial batch is dropped so every epoch has
    ``len(split) // batch_size`` iterations. Starting at any ``start`` gives the same batches an
    uninterrupted run would have seen there, augmentation included.
    """
    per_epoch = iterations_per_epoch(len(split), batch_size)
    epoch, order, draws = -1, None, None
    for it in range(start, stop):
        e, pos = divmod(it, per_epoch)
        if e != epoch:
            epoch, order = e, epoch_order(len(split), seed, e, split.x.device)
            if augment:
                draws = augment_draws(len(split), seed, e, split.x.device)
        window = slice(pos * batch_size, (pos + 1) * batch_size)
        idx = order[window]
        x = split.x[idx]
        if augment:
            x = crop_flip(x, draws[window])
        yield it, split.normalize(x), split.y[idx]


def iterations_per_epoch(n: int, batch_size: int) -> int:
    if batch_size > n:
        raise TicketlabError(f"batch_size {batch_size} is larger than the training set ({n} examples)")
    return n // batch_size


# ---------------------------------------------------------------------------------------------- loaders

_LOADERS: dict[str, tuple[str, Callable[..., tuple]]] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}  # the DataConfig fields a loader takes as keywords
OPTIONS = ("modulus", "operation", "train_fraction", "context", "corpus")


def register_dataset(name: str, description: str, options: tuple[str, ...] = ()):
    """Register ``fn(data_dir, **options) -> (train, test, num_classes)`` or ``(train, test, num_classes, extras)``
    with ``extras`` keys ``objective`` and ``vocab`` (:class:`Dataset` fields); ``options``: the
    :data:`OPTIONS` it takes."""

    def wrap(fn):
        _LOADERS[name], _OPTIONS[name] = (description, fn), options
        return fn

    return wrap


def dataset_names() -> dict[str, str]:
    return {name: desc for name, (desc, _) in _LOADERS.items()}


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_size: int = 0,
    augment: bool = False,
    device: str | torch.device = "cpu",
    classes: tuple[int, ...] = (),
    options: dict | None = None,
) -> Dataset:
    """Load a registered dataset, keep only ``classes`` (relabelled 0, 1, ... in the order given) when any are
    named, split off ``val_size`` training examples, normalise, move to ``device``. ``options``: values of
    :data:`OPTIONS`, passed to the loaders that take them."""
    if name not in _LOADERS:
        raise TicketlabError(f"unknown dataset {name!r}; known: {', '.join(_LOADERS)}")
    loader = _LOADERS[name][1]
    kwargs = {k: v for k, v in (options or {}).items() if k in _OPTIONS[name]}
    train, test, num_classes, *more = loader(Path(data_dir) if data_dir else None, **kwargs)
    extras = more[0] if more else {}
    if classes:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad or len(set(classes)) != len(classes):
            raise TicketlabError(
                f"{name}: classes must be distinct labels in 0..{num_classes - 1}, got {','.join(map(str, classes))}"
            )
        train, test, num_classes = class_subset(train, classes), class_subset(test, classes), len(classes)
    return prepare(name, train, test, num_classes, val_size=val_size, augment=augment, device=device, **extras)


def class_subset(split: Split, classes: tuple[int, ...]) -> Split:
    """The examples of ``classes``, relabelled by their position in ``classes``."""
    lookup = torch.full((int(split.y.max()) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor([c for c in classes if c < len(lookup)], dtype=torch.long)] = torch.tensor(
        [i for i, c in enumerate(classes) if c < len(lookup)], dtype=torch.long
    )
    y = lookup[split.y.long()]
    keep = y >= 0
    return Split(split.x[keep], y[keep], split.scale, split.shift)


def load_configured(d, device: str | torch.device = "cpu") -> Dataset:
    """The dataset a :class:`ticketlab.config.DataConfig` describes. TicketlabError when it sets an option of
    :data:`OPTIONS` away from its default for a dataset that does not take it (it would be ignored, yet change the
    run's hash)."""
    defaults = {f.name: f.default for f in fields(d)}
    for key in OPTIONS:
        if key not in _OPTIONS.get(d.dataset, OPTIONS) and getattr(d, key) != defaults[key]:
            users = ", ".join(name for name, takes in _OPTIONS.items() if key in takes)
            raise TicketlabError(
                f"--{key.replace('_', '-')} {getattr(d, key)}: dataset {d.dataset!r} does not use it (only {users} "
                f"does); drop it or set it back to {defaults[key]}"
            )
    data = load_dataset(
        d.dataset,
        data_dir=d.data_dir or None,
        val_size=d.val_size,
        augment=d.augment,
        device=device,
        classes=d.classes,
        options={k: getattr(d, k) for k in OPTIONS},
    )
    return label_noise.with_label_noise(data, d.label_noise)


def prepare(
    name: str,
    train: Split,
    test: Split,
    num_classes: int,
    *,
    val_size: int = 0,
    augment: bool = False,
    device: str | torch.device = "cpu",
    objective: Objective | None = None,
    vocab: int | None = None,
) -> Dataset:
    """Split off validation data (a fixed seeded draw), standardise with training statistics, move to device.

    uint8 images (N, C, H, W) stay uint8 and get per-channel statistics, applied per batch; other integer inputs
    (token ids) stay exactly as they are; anything else is standardised once with one mean and std over all
    features (MNIST-1D style, shape agnostic).
    """
    if augment and train.x.dim() != 4:
        raise TicketlabError(
            f"{name}: augmentation (random crop and flip) needs images (N, C, H, W); this data is "
            f"{tuple(train.x.shape[1:])} per example. Leave --augment off"
        )
    train, val = split_validation(train, val_size)
    if train.x.dtype == torch.uint8 and train.x.dim() == 4:
        means, stds = [], []
        for c in train.x.transpose(0, 1).flatten(1):  # (N*H*W,) per channel, converted to float once
            c = c.float()
            means.append(c.mean())
            stds.append(c.std())
        mean, std = torch.stack(means) / 255, torch.stack(stds).clamp_min(1e-3) / 255
        scale, shift = (1 / (255 * std)).view(-1, 1, 1), (-mean / std).view(-1, 1, 1)

        def norm(s: Split) -> Split:
            return Split(s.x.contiguous(), s.y.long(), scale, shift)

    elif not train.x.is_floating_point() and train.x.dtype != torch.uint8:

        def norm(s: Split) -> Split:
            return Split(s.x.contiguous(), s.y.long())

    else:
        mean, std = train.x.float().mean(), train.x.float().std().clamp_min(1e-8)

        def norm(s: Split) -> Split:
            return Split(((s.x.float() - mean) / std).contiguous(), s.y.long())

    val = norm(val) if val is not None else None
    return Dataset(name, norm(train), norm(test), val, num_classes, augment, objective, vocab).to(device)


def split_validation(train: Split, val_size: int) -> tuple[Split, Split | None]:
    """Hold ``val_size`` training examples out for validation: the same fixed seeded draw every time."""
    if not val_size:
        return train, None
    if val_size >= len(train):
        raise TicketlabError(
            f"val_size {val_size} leaves no training data (training set has {len(train)}); give a smaller --val-size"
        )
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    vi, ti = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Split(train.x[ti], train.y[ti]), Split(train.x[vi], train.y[vi])


@register_dataset("mnist1d", "MNIST-1D (Greydanus & Kobak), generated locally: 4000 train / 1000 test, 40 features")
def mnist1d_splits(_: Path | None = None) -> tuple[Split, Split, int]:
    """MNIST-1D's standard split: x (4000, 40) and (1000, 40) float32, 10 classes (generated once, cached)."""
    path = cache_dir() / "mnist1d-standard-v1.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset  # imported when first needed: it is slow to load

        d = make_dataset(get_dataset_args())  # the package's standard arguments (seed 42)
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


# ------------------------------------------------------------------------------------------ image data


def _user_dir(given: Path | None, name: str) -> Path | None:
    """The directory the user named for ``name``: --data-dir, else $TICKETLAB_DATA_DIR/<name> if it exists."""
    if given is not None:
        if not given.exists():
            raise TicketlabError(f"{name}: data directory {given} does not exist")
        return given
    env = os.environ.get("TICKETLAB_DATA_DIR")
    if env and (Path(env) / name).exists():
        return Path(env) / name
    if env and (sources.idx_paths(Path(env)) or sources.find_cifar(Path(env))):
        raise TicketlabError(
            f"$TICKETLAB_DATA_DIR ({env}) holds dataset files itself; it now holds one directory per dataset: "
            f"move them to {Path(env) / name}/ or pass --data-dir {env}"
        )
    return None


def _idx_dataset(name: str, data_dir: Path | None, system_dir: str | None = None) -> tuple[Split, Split, int]:
    """MNIST-format data from the user's directory, a system directory, or the checked download cache."""
    directory = _user_dir(data_dir, name)
    if directory is None and system_dir and sources.idx_paths(Path(system_dir)):
        directory = Path(system_dir)
    if directory is not None:
        paths = sources.idx_paths(directory)
        if paths is None:
            files = ", ".join(sources.IDX_FILES.values())
            raise TicketlabError(f"{name}: {directory} must hold the four IDX files {files} (plain or .gz)")
    else:
        paths = {k: sources.fetch(name, f"{stem}.gz") for k, stem in sources.IDX_FILES.items()}
    return _decoded(name, list(paths.values()), lambda: _uint8_splits(sources.read_idx_dataset(paths, name), 10, name))


def _decoded(name: str, files: list[Path], decode: Callable[[], tuple[Split, Split, int]]) -> tuple[Split, Split, int]:
    """``decode()`` of a dataset's source ``files``, kept decoded in the cache (:func:`ticketlab.store.derived`):
    decompressing and parsing takes 0.3 s for Fashion-MNIST's 30 MB of gzip (more for CIFAR-10), hashing the files
    and reading the decoded copy back a fifth of that."""

    def make() -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        train, test, num_classes = decode()
        return {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}, {"classes": num_classes}

    t, info = derived(f"{name}-decoded-1", files, make)  # -1: bump when what decoding gives changes
    return Split(t["train_x"], t["train_y"]), Split(t["test_x"], t["test_y"]), int(info["classes"])


def _uint8_splits(arrays: dict[str, np.ndarray], num_classes: int, name: str) -> tuple[Split, Split, int]:
    for part in ("train", "test"):
        y = arrays[f"{part}_y"]
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise TicketlabError(f"{name}: {part} labels must lie in 0..{num_classes - 1}")

    def split(part: str) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(arrays[f"{part}_x"]))
        return Split(x, torch.from_numpy(arrays[f"{part}_y"].astype(np.int64)))

    return split("train"), split("test"), num_classes


@register_dataset("mnist", "MNIST (IDX): --data-dir, $TICKETLAB_DATA_DIR/mnist, or downloaded and checked")
def _mnist(data_dir: Path | None) -> tuple[Split, Split, int]:
    return _idx_dataset("mnist", data_dir)


@register_dataset(
    "fashion-mnist",
    "Fashion-MNIST (IDX): --data-dir, $TICKETLAB_DATA_DIR/fashion-mnist, Debian's dataset-fashion-mnist, or downloaded",
)
def _fashion_mnist(data_dir: Path | None) -> tuple[Split, Split, int]:
    return _idx_dataset("fashion-mnist", data_dir, system_dir="/usr/share/datasets/fashion-mnist")


@register_dataset("cifar10", "CIFAR-10 (python batches): --data-dir, $TICKETLAB_DATA_DIR/cifar10, or downloaded")
def _cifar10(data_dir: Path | None) -> tuple[Split, Split, int]:
    directory = _user_dir(data_dir, "cifar10")
    if directory is not None:
        found = sources.find_cifar(directory)
        if found is None:
            raise TicketlabError(
                f"cifar10: {directory} holds neither {sources.CIFAR_DIR}/ nor {sources.CIFAR_ARCHIVE}; "
                "point --data-dir at the directory holding one of them"
            )
    else:
        found = sources.fetch("cifar10", sources.CIFAR_ARCHIVE)
    files = [found] if found.is_file() else [found / n for n in (*sources.CIFAR_TRAIN, sources.CIFAR_TEST)]
    return _decoded("cifar10", files, lambda: _uint8_splits(sources.read_cifar(found), 10, "cifar10"))


@register_dataset("synthetic-images", "tiny class-patterned 3x32x32 uint8 images for tests: 10 classes, 600 / 200")
def _synthetic_images(_: Path | None) -> tuple[Split, Split, int]:
    g = torch.Generator().manual_seed(4321)
    templates = torch.rand(10, 3, 32, 32, generator=g) * 255

    def draw(n: int) -> Split:
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.6 * templates[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=g) * 255
        return Split(x.round().to(torch.uint8), y)

    return draw(600), draw(200), 10


# at the end: these modules import Dataset and Split from this one; tokens registers the token datasets
from ticketlab import label_noise, tokens  # noqa: E402,F401
