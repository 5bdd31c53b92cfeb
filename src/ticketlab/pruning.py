"""Turning scores into masks: layerwise or global top-k over the weights still alive.

Scoring (what to keep) and masking (how many to keep, where) are separate steps: a criterion
returns a score per weight, and :func:`prune` removes exactly ``round(fraction * remaining)``
weights per layer or per global pool, never reviving a pruned one.
"""

from __future__ import annotations

import math

import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask


def magnitude(params: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The LTH criterion: keep the weights of largest absolute value."""
    return {n: params[n].detach().abs() for n in names}


def plan_fractions(
    names: list[str], output_name: str | None, fraction: float, output_fraction: float | None
) -> tuple[list[str], dict[str, float]]:
    """Split layers into the pool pruned at ``fraction`` and layers with their own rate (the output layer).

    The output layer's bias, when biases are pruned, goes at the output layer's rate too.
    """
    own = {}
    if output_fraction is not None and output_name is not None:
        bias = output_name.removesuffix("weight") + "bias"
        own = {n: output_fraction for n in (output_name, bias) if n in names}
    pool = [n for n in names if n not in own]
    return pool, own


def compound(fraction: float, levels: int) -> float:
    """The fraction removed by ``levels`` iterative levels of ``fraction`` each, as one cut."""
    return 1.0 - (1.0 - fraction) ** levels


def matching_output_fraction(fraction: float, output_fraction: float, target_density: float) -> float:
    """The output layer's one-shot fraction reaching what iterative pruning reaches when the pool hits target."""
    levels = math.log(target_density) / math.log(1.0 - fraction) if fraction < 1 else 1.0
    return compound(output_fraction, levels)


def _kept_after(remaining: int, fraction: float) -> int:
    return remaining - round(fraction * remaining)


def _top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the ``keep`` highest scores among ``alive`` entries (flattened)."""
    alive = alive.flatten()
    lowest = torch.finfo(torch.float32).min
    # Alive entries always rank above pruned ones, even with NaN or -inf scores, so the count is exact.
    s = scores.flatten().float().nan_to_num(nan=lowest, neginf=lowest)
    s = torch.where(alive, s, torch.full_like(s, float("-inf")))
    out = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    if keep > 0:
        out[torch.topk(s, keep, sorted=False).indices] = True
    if int(out.sum()) != keep or bool((out & ~alive).any()):
        raise AssertionError(f"pruning kept {int(out.sum())} weights, {keep} requested")
    return out


def prune(
    scores: dict[str, torch.Tensor],
    mask: Mask,
    *,
    fraction: float,
    strategy: str,
    pool: list[str],
    own: dict[str, float] | None = None,
) -> Mask:
    """Remove a fraction of the remaining weights, lowest scores first.

    ``pool`` layers lose ``fraction`` each (layerwise) or together under one threshold (global);
    layers in ``own`` lose their own fraction each. Layers in neither keep their mask.
    """
    own = own or {}
    new = dict(mask)
    for name, frac in own.items():
        m = mask[name]
        new[name] = _top(scores[name], m, _kept_after(int(m.sum()), frac)).view_as(m)
    if strategy == "layerwise":
        for name in pool:
            m = mask[name]
            new[name] = _top(scores[name], m, _kept_after(int(m.sum()), fraction)).view_as(m)
    elif strategy == "global":
        if pool:
            flat_s = torch.cat([scores[n].flatten().float() for n in pool])
            flat_m = torch.cat([mask[n].flatten() for n in pool])
            kept = _top(flat_s, flat_m, _kept_after(int(flat_m.sum()), fraction))
            for name, part in zip(pool, torch.split(kept, [mask[n].numel() for n in pool])):
                new[name] = part.view_as(mask[name])
    else:
        raise TicketlabError(f"unknown pruning strategy {strategy!r}; use layerwise or global")
    _check_shrank(mask, new)
    return new


def _check_shrank(old: Mask, new: Mask) -> None:
    for name in old:
        if bool((new[name] & ~old[name]).any()):
            raise AssertionError(f"pruning revived weights in {name}: masks must only shrink")


def random_mask(like: Mask, seed: int, pools: list[list[str]]) -> Mask:
    """A random mask with the same number of kept weights as ``like`` in each pool of layers.

    One pool per layer keeps every layer's density (the layerwise baseline); one pool of several
    layers keeps only their overall density (the global baseline).
    """
    g = torch.Generator().manual_seed(seed)
    out = dict(like)
    for pool in pools:
        sizes = [like[n].numel() for n in pool]
        keep = sum(int(like[n].sum()) for n in pool)
        flat = torch.zeros(sum(sizes), dtype=torch.bool)
        flat[torch.randperm(sum(sizes), generator=g)[:keep]] = True
        for name, part in zip(pool, torch.split(flat, sizes)):
            out[name] = part.view_as(like[name]).to(like[name].device)
    return out
