"""Masks: a plain mapping from parameter name to a bool tensor (True = weight kept), and free functions.

This module is also the one place that decides which parameters are prunable: the weights of
linear and conv layers; biases only when asked; norm layers never; anything in ``ignore`` never.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.store import load_tensors, save_tensors

Mask = dict[str, torch.Tensor]
PRUNABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _ignored(name: str, ignore: Iterable[str]) -> bool:
    return any(name == i or name.startswith(i + ".") for i in ignore)


def prunable_names(model: nn.Module, *, prune_biases: bool = False, ignore: Iterable[str] = ()) -> list[str]:
    """Names of the prunable parameters, in module order."""
    ignore = tuple(ignore)
    names = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_LAYERS):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for pname in ("weight", "bias") if prune_biases else ("weight",):
            if getattr(module, pname, None) is not None and not _ignored(prefix + pname, ignore):
                names.append(prefix + pname)
    all_params = dict(model.named_parameters())
    unknown = [i for i in ignore if i not in all_params and not any(n.startswith(i + ".") for n in all_params)]
    if unknown:
        raise TicketlabError(f"--ignore names no parameter of the model: {unknown}; parameters: {list(all_params)}")
    return names


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """``"conv"`` or ``"linear"`` for every parameter of a prunable layer (by module type, not by name)."""
    kinds = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
            prefix = f"{mod_name}." if mod_name else ""
            for pname, _ in module.named_parameters(recurse=False):
                kinds[prefix + pname] = kind
    return kinds


def output_layer_name(model: nn.Module) -> str | None:
    """The output layer's weight: the last linear/conv layer in module order."""
    last = None
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            last = f"{mod_name}.weight" if mod_name else "weight"
    return last


def full_mask(model: nn.Module, names: Iterable[str]) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def count(mask: Mask) -> int:
    return int(sum(int(m.sum()) for m in mask.values()))


def size(mask: Mask) -> int:
    return int(sum(m.numel() for m in mask.values()))


def density(mask: Mask) -> float:
    """Fraction of prunable weights kept."""
    return count(mask) / max(size(mask), 1)


def layer_densities(mask: Mask) -> dict[str, float]:
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


def save_mask(path: str | Path, mask: Mask) -> None:
    save_tensors(Path(path), {n: m.to(torch.bool) for n, m in mask.items()}, metadata={"format": "ticketlab-mask"})


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
