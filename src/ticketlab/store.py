"""On-disk state of a run: atomic writes, a lock per run directory, checkpoints and results.

Every file is written to a temporary name and renamed into place, so a run killed at any moment
(even ``kill -9``) leaves either the old file or the new one. A job (one replicate, level and branch)
is complete exactly when its ``result.json`` exists; it is written last.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ticketlab.errors import TicketlabError


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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a name -> tensor mapping as safetensors (bit-exact, no pickle), remembering the mapping's order
    (safetensors sorts its entries; the model's order reads better in tables)."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), "order": json.dumps(list(flat))}
    atomic_write_bytes(path, st_save(flat, metadata=metadata))


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    try:
        blob = Path(path).read_bytes()
        tensors = st_load(blob)
        # the header: an 8-byte little-endian length, then JSON with the metadata under "__metadata__"
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        order = json.loads((header.get("__metadata__") or {}).get("order", "[]"))
    except Exception as e:  # noqa: BLE001 -- a damaged file of any kind
        raise TicketlabError(f"cannot read tensors from {path}: {e}") from None
    if sorted(order) == sorted(tensors):
        tensors = {k: tensors[k] for k in order}
    return {k: v.to(device) for k, v in tensors.items()}


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


class JobDir:
    """Files of one training job: ``replicate_R/level_L/BRANCH/``."""

    def __init__(self, root: Path, replicate: int, level: int, branch: str):
        self.path = Path(root) / f"replicate_{replicate}" / f"level_{level}" / branch
        self.replicate, self.level, self.branch = replicate, level, branch

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        return self.file("result.json").exists()

    def result(self) -> dict[str, Any]:
        return read_json(self.file("result.json"))
