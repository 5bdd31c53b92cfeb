"""The caller's own data, for the Python API: ``(x, y)`` tensors or NumPy arrays, or batches from a DataLoader,
read into one :class:`~ticketlab.data.Split`, with labels checked to be class indices."""

from __future__ import annotations

import numpy as np
import torch

from ticketlab.data import Split
from ticketlab.errors import TicketlabError
from ticketlab.store import tensor_digest


def tensors_from(source, name: str = "data") -> Split:
    """A :class:`Split` from ``(x, y)`` -- tensors or NumPy arrays, x (N, ...) and y (N,) integer class indices --
    or from any iterable of ``(x, y)`` batches (e.g. a DataLoader). TicketlabError for anything else, naming
    ``name``."""
    if isinstance(source, Split):
        return source
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(_array_like(t) for t in source):
        x, y = (_as_tensor(t, name) for t in source)
    else:
        try:
            xs, ys = zip(*((_as_tensor(b[0], name), _as_tensor(b[1], name)) for b in source))
            x, y = torch.cat(xs), torch.cat(ys)
        except (TypeError, ValueError, IndexError, RuntimeError):
            raise TicketlabError(
                f"{name}: expected (x, y) tensors or arrays, or an iterable of (x, y) batches such as a DataLoader"
            ) from None
    if len(x) != len(y):
        raise TicketlabError(f"{name}: x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        raise TicketlabError(f"{name}: no examples")
    return Split(x if x.dtype == torch.uint8 else x.float(), _class_indices(y, name))


def _array_like(t) -> bool:
    return torch.is_tensor(t) or isinstance(t, np.ndarray)


def _as_tensor(t, name: str) -> torch.Tensor:
    if torch.is_tensor(t):
        return t
    try:
        return torch.as_tensor(np.asarray(t))
    except (TypeError, ValueError, RuntimeError):
        raise TicketlabError(
            f"{name}: cannot read {type(t).__name__} as a tensor; pass tensors or NumPy arrays"
        ) from None


def _class_indices(y: torch.Tensor, name: str) -> torch.Tensor:
    """``y`` as int64 class indices (N,), or TicketlabError: one-hot, fractional or negative labels."""
    if y.dim() != 1:
        raise TicketlabError(
            f"{name}: y must hold one class index per example, shape (N,), not {tuple(y.shape)} "
            "(for one-hot labels pass y.argmax(1))"
        )
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise TicketlabError(f"{name}: y must hold whole-number class indices; it has fractional values")
    if y.dtype == torch.bool or y.is_complex():
        raise TicketlabError(f"{name}: y must hold integer class indices, not {y.dtype}")
    y = y.long()
    if bool((y < 0).any()):
        raise TicketlabError(f"{name}: class indices must be >= 0; y has {int(y.min())}")
    return y


def fingerprint(split: Split) -> str:
    """A short content hash (used to tie a Python-API run directory to its data)."""
    return tensor_digest([("", split.x), ("", split.y)])
