"""The caller's own data, for the Python API: ``(x, y)`` tensors or NumPy arrays, a dict, or batches from a
DataLoader, read into one :class:`~ticketlab.data.Split`, with the labels checked to be class ids.

The rules (also in the README):

- inputs ``x``: floating point -> float32; integer of any width (uint8 included) -> int64, used as they are
  (token ids for ``nn.Embedding``; images are *not* rescaled: pass ``x.float() / 255``); bool -> float32;
  anything else (complex, ...) is refused.
- labels ``y``: one class id per example, shape (N,): integers, or floats that are whole numbers. One-hot (N, C)
  and (N, 1) labels are refused with the call that fixes them; ids in [0, C) for a model of C outputs
  (:func:`check_labels`, once the model's width is known).
- batches: ``(x, y)`` tuples or lists, or dicts whose inputs are under one of :data:`X_KEYS` and labels under
  one of :data:`Y_KEYS`; single examples (a ``Dataset`` iterated as is) are stacked.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ticketlab.data import Split
from ticketlab.errors import TicketlabError
from ticketlab.store import tensor_digest

X_KEYS = ("x", "input", "inputs", "input_ids", "image", "images", "features")  # a dict batch's inputs
Y_KEYS = ("y", "label", "labels", "target", "targets")  # a dict batch's labels
_EXPECTED = "expected (x, y) tensors or NumPy arrays, a dict of them, or an iterable of such batches (a DataLoader)"


def tensors_from(source, name: str = "data") -> Split:
    """A :class:`Split` from the caller's data: ``(x, y)`` tensors or NumPy arrays, x (N, ...) and y (N,) class
    ids; a dict with x under one of :data:`X_KEYS` and y under one of :data:`Y_KEYS`; or any iterable of such
    batches, tuples, lists or dicts (e.g. a DataLoader, read once into memory; single examples are stacked).

    Inputs by dtype: floating point -> float32; integer of any width, uint8 included -> int64, values as given
    (token ids; images are not rescaled: pass ``x.float() / 255``); bool -> float32; complex or anything else ->
    TicketlabError. Labels -> int64: integers, or floats that are whole numbers; fractional floats, one-hot (N, C)
    and (N, 1) labels are refused with the fix. Every refusal is one TicketlabError line naming ``name``.
    """
    if isinstance(source, Split):
        return source
    if isinstance(source, Mapping):
        x, y = _from_dict(source, name)
    elif isinstance(source, (tuple, list)) and len(source) == 2 and not any(_batch_like(t) for t in source):
        x, y = (_as_tensor(t, name) for t in source)
    else:
        x, y = _read_batches(source, name)
    if x.dim() == 0 or y.dim() == 0:
        raise TicketlabError(f"{name}: x and y need one row per example; got shapes {tuple(x.shape)}, {tuple(y.shape)}")
    if len(x) != len(y):
        raise TicketlabError(f"{name}: x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        raise TicketlabError(f"{name}: no examples")
    return Split(_inputs(x, name), _class_ids(y, name))


def check_labels(split: Split, name: str, classes: int) -> None:
    """Refuse labels outside [0, ``classes``) -- ``classes`` being the model's output width -- in one line that
    names ``name`` and the width."""
    low, high = int(split.y.min()), int(split.y.max())
    if low < 0:
        raise TicketlabError(
            f"{name}: labels must be class ids in [0, {classes}) (the model has {classes} outputs); y has {low}. "
            "Remove unlabelled examples (e.g. label -1) or map the labels to 0..C-1"
        )
    if high >= classes:
        raise TicketlabError(
            f"{name}: labels must be class ids in [0, {classes}) (the model has {classes} outputs); y has {high}. "
            f"Give the model at least {high + 1} outputs, or map the labels to 0..{classes - 1}"
        )


def check_like(split: Split, train: Split, name: str) -> None:
    """Refuse ``split`` (test or val data) whose examples differ in shape or kind (integer / float) from train."""
    shape, want = tuple(split.x.shape[1:]), tuple(train.x.shape[1:])
    if shape != want:
        raise TicketlabError(f"{name}: examples have shape {shape} but the training examples have {want}")
    kind = lambda x: "floating-point" if x.is_floating_point() else "integer"  # noqa: E731
    if kind(split.x) != kind(train.x):
        raise TicketlabError(
            f"{name}: inputs are {kind(split.x)} but the training inputs are {kind(train.x)}; give both the same kind"
        )


def integer_hint(x: torch.Tensor) -> str:
    """For an error about a model failing on inputs ``x``: that they are integer, and how to make them floats."""
    if x.is_floating_point():
        return ""
    return (
        "; the inputs are integer (int64, kept as given for token ids): for a model that takes floats pass "
        "x.float() (images: x.float() / 255)"
    )


def fingerprint(split: Split) -> str:
    """A short content hash (used to tie a Python-API run directory to its data)."""
    return tensor_digest([("", split.x), ("", split.y)])


def _read_batches(source, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch of an iterable, joined: batches concatenated, single examples (0-d labels) stacked."""
    try:
        batches = iter(source)
    except TypeError:
        raise TicketlabError(f"{name}: {_EXPECTED}; got {type(source).__name__}") from None
    xs, ys = [], []
    for batch in batches:
        if isinstance(batch, Mapping):
            x, y = _from_dict(batch, name)
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = _as_tensor(batch[0], name), _as_tensor(batch[1], name)
        else:
            kind = type(batch).__name__
            what = f"a {kind} of {len(batch)}" if isinstance(batch, (tuple, list)) else f"a {kind}"
            raise TicketlabError(f"{name}: each batch must be (x, y) or a dict of x and y, not {what}")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise TicketlabError(f"{name}: no examples")
    join = torch.stack if ys[0].dim() == 0 else torch.cat  # single examples, or batches
    try:
        return join(xs), join(ys)
    except RuntimeError:
        shapes = sorted({tuple(t.shape[1:] if join is torch.cat else t.shape) for t in xs})
        raise TicketlabError(f"{name}: examples of different shapes ({shapes[:3]}); give them one shape") from None


def _from_dict(batch: Mapping, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of a dict, each under exactly one of its documented keys."""
    found = []
    for what, keys in (("inputs", X_KEYS), ("labels", Y_KEYS)):
        present = [k for k in keys if k in batch]
        if len(present) != 1:
            have = ", ".join(map(repr, batch)) or "none"
            why = "none of" if not present else f"several of ({', '.join(present)}) --"
            raise TicketlabError(
                f"{name}: a dict batch holds its {what} under {why} the keys {', '.join(keys)}; it has keys {have}"
            )
        found.append(_as_tensor(batch[present[0]], name))
    return found[0], found[1]


def _batch_like(t) -> bool:
    """Whether ``t`` reads as a batch (a tuple, list or dict), not as an array of x or y."""
    return isinstance(t, (tuple, list, Mapping))


def _as_tensor(t, name: str) -> torch.Tensor:
    if torch.is_tensor(t):
        return t.detach()
    try:
        return torch.as_tensor(np.asarray(t))
    except (TypeError, ValueError, RuntimeError):
        raise TicketlabError(
            f"{name}: cannot read {type(t).__name__} as a tensor; pass tensors or NumPy arrays"
        ) from None


def _inputs(x: torch.Tensor, name: str) -> torch.Tensor:
    """x by the dtype rule: floating and bool -> float32, integer -> int64; anything else refused."""
    if x.is_floating_point() or x.dtype == torch.bool:
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise TicketlabError(f"{name}: inputs hold NaN or infinite values; clean or drop those examples")
        return x
    if not x.is_complex() and _is_integer(x.dtype):
        return x.long()
    raise TicketlabError(
        f"{name}: inputs of dtype {x.dtype} cannot be used; pass floating-point inputs (x.real, x.abs() or "
        "x.float()) or integer token ids"
    )


def _is_integer(dtype: torch.dtype) -> bool:
    try:
        torch.iinfo(dtype)
    except TypeError:
        return False
    return dtype != torch.bool


def _class_ids(y: torch.Tensor, name: str) -> torch.Tensor:
    """``y`` as int64 class ids (N,), or TicketlabError: one-hot, (N, 1), fractional, bool or complex labels."""
    if y.dim() == 2 and y.shape[1] == 1:
        raise TicketlabError(f"{name}: y has shape {tuple(y.shape)}; pass one class id per example, y.view(-1)")
    if y.dim() == 2:
        raise TicketlabError(
            f"{name}: y has shape {tuple(y.shape)} (one-hot or scores?); pass one class id per example, y.argmax(1)"
        )
    if y.dim() != 1:
        raise TicketlabError(f"{name}: y must hold one class id per example, shape (N,), not {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_complex() or not (y.is_floating_point() or _is_integer(y.dtype)):
        raise TicketlabError(f"{name}: y must hold integer class ids, not {y.dtype}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        bad = y[y != y.round()][0].item()
        raise TicketlabError(
            f"{name}: y must hold class ids; it has fractional values (e.g. {bad:g}), which would be truncated. "
            "Pass integer class ids (for regression targets this tool does not apply)"
        )
    return y.long()
