"""Masks: a plain mapping from parameter name to a bool tensor (True = weight kept), and free functions.

Which parameters are prunable is :mod:`ticketlab.prunable`'s to say; layer collapse is
:mod:`ticketlab.pruning.collapse`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.store import load_tensors, save_tensors

Mask = dict[str, torch.Tensor]


def full_mask(model: nn.Module, names: Iterable[str]) -> Mask:
    """A mask keeping every weight of the parameters ``names``."""
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def count(mask: Mask) -> int:
    """Number of weights kept."""
    return int(sum(int(m.sum()) for m in mask.values()))


def size(mask: Mask) -> int:
    """Number of weights the mask covers, kept or not."""
    return int(sum(m.numel() for m in mask.values()))


def density(mask: Mask) -> float:
    """Fraction of prunable weights kept."""
    return count(mask) / max(size(mask), 1)


def layer_densities(mask: Mask) -> dict[str, float]:
    """Fraction kept per masked parameter."""
    return {n: float(m.float().mean()) for n, m in mask.items()}


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> nn.Module:
    """Zero the pruned weights of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        params[name].mul_(m.to(params[name].device, params[name].dtype))
    return model


def is_subset(new: Mask, old: Mask) -> bool:
    """True when every weight kept by ``new`` was kept by ``old`` (masks only shrink)."""
    return all(not bool((new[n] & ~old[n].to(new[n].device)).any()) for n in new)


def hamming(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: fraction of prunable weights on which the masks differ."""
    diff = sum(int((a[n] != b[n].to(a[n].device)).sum()) for n in a)
    return diff / max(size(a), 1)


def save_mask(path: str | Path, mask: Mask) -> str:
    """Save a mask (bool tensors) as safetensors; returns the file's SHA-256."""
    return save_tensors(
        Path(path), {n: m.to(torch.bool) for n, m in mask.items()}, metadata={"format": "ticketlab-mask"}
    )


def load_mask(path: str | Path, device: torch.device | str = "cpu") -> Mask:
    mask = load_tensors(Path(path), device)
    bad = [n for n, m in mask.items() if m.dtype != torch.bool]
    if bad:
        raise TicketlabError(f"{path} is not a mask: tensors {bad} are not boolean")
    return mask


def check_mask(model: nn.Module, mask: Mask) -> None:
    """A mask must name parameters of the model with matching shapes."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        if name not in params:
            raise TicketlabError(f"mask names {name!r}, which the model does not have")
        if tuple(m.shape) != tuple(params[name].shape):
            raise TicketlabError(
                f"mask for {name!r} has shape {tuple(m.shape)}, the parameter {tuple(params[name].shape)}"
            )


def density_table(mask: Mask) -> str:
    """One line per masked parameter: kept / size and density."""
    width = max((len(n) for n in mask), default=4)
    lines = [f"{'layer':<{width}}  {'kept':>10}  {'size':>10}  density"]
    for n, m in mask.items():
        kept = int(m.sum())
        lines.append(f"{n:<{width}}  {kept:>10}  {m.numel():>10}  {kept / max(m.numel(), 1):8.4%}")
    lines.append(f"{'total':<{width}}  {count(mask):>10}  {size(mask):>10}  {density(mask):8.4%}")
    return "\n".join(lines)
