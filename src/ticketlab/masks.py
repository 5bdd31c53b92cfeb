"""Masks: a plain mapping from parameter name to a bool tensor (True = weight kept), and free functions.

This module is also the one place that decides which parameters are prunable: the weights of
linear and conv layers; biases only when asked; norm layers never; anything in ``ignore`` never.
"""

from __future__ import annotations

import copy
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


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def dead_outputs(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """How many of the network's outputs no path from the input reaches through kept weights, and of how many.

    The network is made to count paths: kept weights become 1, pruned ones 0, other weights of prunable layers
    1, biases 0, and norm layers pass their input through; fed an all-ones input, an output is 0 exactly when
    every path to it crosses a pruned weight. Each layer's output is rescaled by its maximum, which keeps the
    zeros and keeps deep networks' path counts from overflowing.
    """
    net = copy.deepcopy(model).eval().double()
    params = dict(net.named_parameters())
    hooks = []
    for module in net.modules():
        if isinstance(module, PRUNABLE_LAYERS):
            module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()
            hooks.append(module.register_forward_hook(lambda m, i, out: out / out.abs().max().clamp_min(1e-300)))
        elif isinstance(module, _NORMS):
            hooks.append(module.register_forward_hook(lambda m, i, out: i[0]))
    for name, m in mask.items():
        if name.endswith("weight") and isinstance(_owner(net, name), PRUNABLE_LAYERS):
            params[name].copy_(m.to(params[name].dtype))
    device = next(iter(params.values())).device
    out = net(torch.ones(1, *input_shape, dtype=torch.float64, device=device))
    for h in hooks:
        h.remove()
    return int((out.flatten() == 0).sum()), out.numel()


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    module_name = param_name.rpartition(".")[0]
    return model.get_submodule(module_name) if module_name else model


def collapse(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> list[str]:
    """Layer collapse: layers with no weight left, and whether no path from the input reaches any output.
    (Some outputs cut off while others are reached is not collapse: it happens at extreme sparsity by design.)"""
    layers = [n for n in mask if n.endswith("weight") and isinstance(_owner(model, n), PRUNABLE_LAYERS)]
    problems = [f"{n} has no weight left" for n in layers if mask[n].numel() and not bool(mask[n].any())]
    dead, outputs = dead_outputs(model, mask, input_shape)
    if dead == outputs:
        problems.append("no path from the input reaches any output")
    return problems


def density_table(mask: Mask) -> str:
    """One line per masked parameter: kept / size and density."""
    width = max((len(n) for n in mask), default=4)
    lines = [f"{'layer':<{width}}  {'kept':>10}  {'size':>10}  density"]
    for n, m in mask.items():
        kept = int(m.sum())
        lines.append(f"{n:<{width}}  {kept:>10}  {m.numel():>10}  {kept / max(m.numel(), 1):8.4%}")
    lines.append(f"{'total':<{width}}  {count(mask):>10}  {size(mask):>10}  {density(mask):8.4%}")
    return "\n".join(lines)
