"""Where the image datasets come from: local files in their standard formats, or a checked download.

MNIST and Fashion-MNIST are four IDX files (gzipped or not); CIFAR-10 is the python pickle batches,
as the directory ``cifar-10-batches-py`` or the archive ``cifar-10-python.tar.gz``. A directory the
user names is read as it is (files are checked for structure: magic numbers, sizes, truncation).
Otherwise the files are fetched into the cache: each download streams to a temporary file, is checked
against the publisher's MD5 (or a SHA-256 we took, for the tiny-shakespeare text) and only then renamed
into place, so a half-written or corrupted file is never used. Cached files are checked again each time they are read.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ticketlab.errors import TicketlabError
from ticketlab.store import cache_dir


@dataclass(frozen=True)
class Remote:
    """Where a dataset's files are published, with their MD5 checksums (the ones the publishers give), or SHA-256
    checksums (taken by us, for files published without one)."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)

    def checksum(self, filename: str) -> tuple[str, str]:
        """``(algorithm, hex digest)`` expected of ``filename``: its MD5 where one is given, else its SHA-256."""
        return ("md5", self.md5[filename]) if filename in self.md5 else ("sha256", self.sha256[filename])


REMOTES: dict[str, Remote] = {
    "mnist": Remote(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": Remote(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": Remote(
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
    "tiny-shakespeare": Remote(  # Karpathy's char-rnn corpus, 1,115,394 bytes; no published checksum
        ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",),
        {},
        {"input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
    ),
}
MIRROR_ENV = "TICKETLAB_MIRROR"  # a base URL tried first, as MIRROR/<dataset>/<file> (a local mirror, a proxy)


def _hasher(algorithm: str):
    # the publishers' checksums are MD5: integrity, not security
    return hashlib.md5(usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)


def md5sum(path: Path) -> str:
    """The MD5 hex digest of the file at ``path``."""
    return file_digest(path, "md5")


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of the file at ``path`` by ``algorithm`` ("md5", "sha256")."""
    h = _hasher(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mirrors(dataset: str) -> list[str]:
    own = os.environ.get(MIRROR_ENV)
    urls = [f"{own.rstrip('/')}/{dataset}/"] if own else []
    return urls + list(REMOTES[dataset].mirrors)


def _download(url: str, dest: Path, md5: str, algorithm: str = "md5") -> str | None:
    """Stream ``url`` into ``dest`` (atomically, only if complete and the checksum ``md5``, of ``algorithm``,
    matches); the error otherwise."""
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise TicketlabError(f"cannot write to the cache directory {dest.parent}: {e.strerror or e}") from None
    h = _hasher(algorithm)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            expected = response.headers.get("Content-Length")
            got = 0
            while block := response.read(1 << 20):
                f.write(block)
                h.update(block)
                got += len(block)
            if expected is not None and got != int(expected):
                return f"incomplete: {got} of {expected} bytes"
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != md5:
            return f"checksum mismatch ({algorithm.upper()} {h.hexdigest()}, expected {md5})"
        os.replace(tmp, dest)
        return None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch(dataset: str, filename: str, directory: Path | None = None) -> Path:
    """The checked file ``filename`` of ``dataset`` in the cache, downloading it if needed."""
    algorithm, md5 = REMOTES[dataset].checksum(filename)
    directory = directory or cache_dir() / dataset
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / filename
    for stale in directory.glob(f".{filename}.*.part"):  # left by a download killed an hour ago or more
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    if dest.exists():
        if file_digest(dest, algorithm) == md5:
            return dest
        print(f"ticketlab: {dest} fails its {algorithm.upper()} check; fetching it again", file=sys.stderr)
        dest.unlink()
    errors = []
    for base in _mirrors(dataset):
        url = base + filename
        print(f"ticketlab: downloading {url}", file=sys.stderr, flush=True)
        error = _download(url, dest, md5, algorithm)
        if error is None:
            return dest
        errors.append(f"{url}: {error}")
    raise TicketlabError(
        f"could not download {filename} for {dataset} ({'; '.join(errors)}). Without a network, put the file in "
        f"{directory} yourself, or pass --data-dir to a directory holding the dataset"
    )


# ---------------------------------------------------------------------------------------------- IDX

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
        except (OSError, EOFError, zlib.error) as e:
            raise TicketlabError(f"{path} is not a complete gzip file ({e}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise TicketlabError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise TicketlabError(f"{path} is truncated or corrupt: its header is cut short")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise TicketlabError(f"{path} is truncated or corrupt: {len(body)} data bytes, expected {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).copy()  # writable, owned by the array


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def idx_paths(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (plain or .gz), or None when any is missing."""
    paths = {k: _find_idx(directory, stem) for k, stem in IDX_FILES.items()}
    return None if any(p is None for p in paths.values()) else paths


def read_idx_dataset(paths: dict[str, Path], name: str) -> dict[str, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) for train and test, checked for consistency."""
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1:
            raise TicketlabError(f"{name}: {paths[part + '_x']} does not hold uint8 images (N, H, W)")
        if len(x) != len(y):
            raise TicketlabError(f"{name}: {part} images ({len(x)}) and labels ({len(y)}) differ in number")
        arrays[f"{part}_x"] = x[:, None]
    return arrays


# ------------------------------------------------------------------------------------ CIFAR-10 pickles

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


class _ArraysOnly(pickle.Unpickler):
    """Unpickle the CIFAR batches without running arbitrary code: numpy arrays and plain containers only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles write bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, OverflowError) as e:
        raise TicketlabError(f"{where} is not a valid CIFAR-10 batch ({e}); delete it and fetch it again") from None
    if len(x) != len(y):
        raise TicketlabError(f"{where}: {len(x)} images but {len(y)} labels")
    return x, y


def read_cifar(path: Path) -> dict[str, np.ndarray]:
    """CIFAR-10 from the batches directory or the .tar.gz archive: (N, 3, 32, 32) uint8 images and labels."""
    names = (*CIFAR_TRAIN, CIFAR_TEST)
    if path.is_dir():
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise TicketlabError(f"cifar10: missing {', '.join(missing)} in {path}")
        raw = {n: (path / n).read_bytes() for n in names}
    else:
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in names if n not in members]
                if missing:
                    raise TicketlabError(f"cifar10: {path} lacks {', '.join(missing)}")
                raw = {n: tar.extractfile(members[n]).read() for n in names}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise TicketlabError(
                f"{path} is not a whole CIFAR-10 archive ({e}); delete it and fetch it again"
            ) from None
    train = [_cifar_batch(raw[n], f"{path}/{n}") for n in CIFAR_TRAIN]
    test_x, test_y = _cifar_batch(raw[CIFAR_TEST], f"{path}/{CIFAR_TEST}")
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
    }


def find_cifar(directory: Path) -> Path | None:
    """The CIFAR-10 batches directory or archive inside (or at) ``directory``."""
    for candidate in (directory / CIFAR_DIR, directory, directory / CIFAR_ARCHIVE):
        if candidate.is_dir() and (candidate / CIFAR_TEST).exists():
            return candidate
        if candidate.is_file() and candidate.name == CIFAR_ARCHIVE:
            return candidate
    return None
