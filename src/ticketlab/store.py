"""On-disk state of a run: atomic, reproducible, verified files and a lock per run directory.

Every file is written to a temporary name and renamed into place, so a run killed at any moment
(even ``kill -9``) leaves either the old file or the new one. The same tensors give the same bytes in
any process (safetensors' header is written with sorted keys), and files take the user's umask.
What a run reads back is checked: :func:`sha256_file` digests are recorded by whoever depends on a file
(see :mod:`ticketlab.rundir`), JSON records carry their own digest, and anything unreadable, truncated or
edited raises :class:`DamagedFile` -- never a traceback, never used silently.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ticketlab.errors import TicketlabError


class DamagedFile(TicketlabError):
    """A file of a run that cannot be trusted: missing, unreadable, truncated, or not what was recorded."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path} is damaged ({why}); run the same command again to recompute it")


def cache_dir() -> Path:
    """Where generated datasets are cached ($TICKETLAB_CACHE, else ~/.cache/ticketlab)."""
    path = Path(os.environ.get("TICKETLAB_CACHE") or Path.home() / ".cache" / "ticketlab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would follow the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's content; :class:`DamagedFile` if it is missing, not UTF-8 or not JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode())
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedFile(path, f"not valid JSON: {str(e)[:80]}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes; :class:`DamagedFile` if it is missing."""
    try:
        return sha256_bytes(Path(path).read_bytes())
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short (10 hex digits) hash of tensors' names and values, e.g. to tie a run directory to the weights,
    data or mask it was made from. Unnamed tensors (name "") hash their values alone."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:10]


def verify(path: Path, digest: str) -> None:
    """Raise :class:`DamagedFile` unless ``path`` exists with the recorded SHA-256 ``digest``."""
    if sha256_file(path) != digest:
        raise DamagedFile(path, "its bytes differ from the SHA-256 recorded when it was written")


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record that carries the SHA-256 of its own content (key ``sha256``), so that an edited,
    truncated or garbled record is recognised when read back (:func:`read_record`)."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    write_json(path, {**body, "sha256": _record_digest(body)})


def read_record(path: Path) -> dict[str, Any]:
    """A record written by :func:`write_record`, verified; :class:`DamagedFile` otherwise. A record without a
    digest (written by ticketlab 0.1 before records carried one) is returned as it is."""
    record = read_json(path)
    if not isinstance(record, dict):
        raise DamagedFile(path, "not a JSON object")
    if "sha256" in record and record["sha256"] != _record_digest({k: v for k, v in record.items() if k != "sha256"}):
        raise DamagedFile(path, "its content differs from the SHA-256 it was written with")
    return record


def _record_digest(body: dict[str, Any]) -> str:
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save a name -> tensor mapping as safetensors (bit-exact, no pickle) and return the file's SHA-256.

    The mapping's order is remembered (safetensors sorts its entries; the model's order reads better in
    tables), and the header is written with sorted keys, so the same tensors give the same bytes in any process.
    """
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), "order": json.dumps(list(flat))}
    blob = _canonical(st_save(flat, metadata=metadata))
    atomic_write_bytes(path, blob)
    return sha256_bytes(blob)


def _canonical(blob: bytes) -> bytes:
    """safetensors bytes with the header's JSON keys sorted (the library writes them in hash-map order).
    The header is 8 bytes of little-endian length, then JSON padded with spaces to a multiple of 8; the
    tensor data that follows is addressed relative to its own start, so only the header changes."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + n :]


def load_tensors(path: Path, device: torch.device | str = "cpu", sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors saved by :func:`save_tensors`, in their saved order. With ``sha256``, the file must have that
    digest. :class:`DamagedFile` if it is missing, unreadable or not as recorded."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    if sha256 is not None and sha256_bytes(blob) != sha256:
        raise DamagedFile(path, "its bytes differ from the SHA-256 recorded when it was written")
    try:
        tensors = st_load(blob)
        # the header: an 8-byte little-endian length, then JSON with the metadata under "__metadata__"
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        order = json.loads((header.get("__metadata__") or {}).get("order", "[]"))
    except Exception as e:  # noqa: BLE001 -- a damaged file of any kind
        raise DamagedFile(path, f"not a readable safetensors file: {str(e)[:80]}") from None
    if sorted(order) == sorted(tensors):
        tensors = {k: tensors[k] for k in order}
    return {k: v.to(device) for k, v in tensors.items()}


def derived(
    name: str, sources: list[Path], make: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``make()`` -- tensors, and a JSON-able info mapping -- computed from the files ``sources``, kept in the cache
    under ``name`` and the SHA-256 of their bytes, so that changed files never get a stale copy.

    For work slower than hashing its inputs (decompressing and parsing a dataset). The copy is checked as a run's
    files are (a self-digested record, then the tensors file's SHA-256); a copy missing or damaged, or a cache that
    cannot be written, only means calling ``make`` again. A source that is not a file: ``make()``, not cached.
    """
    if not all(Path(f).is_file() for f in sources):
        return make()
    key = hashlib.sha256(name.encode())
    for f in sources:
        key.update(sha256_file(f).encode())
    try:
        base = cache_dir() / "derived" / f"{name}-{key.hexdigest()[:20]}"
    except OSError:  # no cache directory can be made
        return make()
    tensors_file, record_file = base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")
    try:
        record = read_record(record_file)
        return load_tensors(tensors_file, sha256=record["tensors"]), record["info"]
    except (DamagedFile, KeyError, TypeError):
        pass
    tensors, info = make()
    try:
        digest = save_tensors(tensors_file, tensors)
        write_record(record_file, {"name": name, "info": info, "tensors": digest})  # last: the copy is whole
    except OSError:
        pass
    return tensors, info


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLock:
    """An exclusive lock on a run directory, so two processes never write one run.

    ``flock`` is released by the kernel when the holder dies, so a killed run never leaves a stale lock.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TicketlabError(
                f"run directory {self.path.parent} is in use by pid {holder}; wait for it to finish "
                "or stop it, then run the command again (it resumes where it stopped)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        # A job killed mid-write (kill -9) leaves its temporary file; holding the lock, nobody else writes in
        # the job directories (only there: `ticketlab report` may be writing at the top level without the lock).
        for pattern in ("replicate_*/level_*/.*.tmp", "replicate_*/level_*/*/.*.tmp"):
            for stale in self.path.parent.glob(pattern):
                stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
