"""Turning scores into masks: layerwise or global top-k over the weights still alive.

Scoring (what to keep) and masking (how many to keep, where) are separate steps: a criterion
returns a score per weight, and :func:`prune` removes exactly ``round(fraction * remaining)``
weights per layer or per global pool, never reviving a pruned one.
"""

from __future__ import annotations

import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask

Group = tuple[tuple[str, ...], float]  # layers pruned under one threshold, and the fraction removed per level


def plan_groups(
    names: list[str],
    *,
    kinds: dict[str, str],
    output_name: str | None,
    strategy: str,
    fraction: float,
    conv_fraction: float | None = None,
    output_fraction: float | None = None,
) -> list[Group]:
    """Which layers are pruned together, and at what rate per level.

    A layer's rate: the output layer's (weight, and bias when biases are pruned) is ``output_fraction``,
    conv layers' ``conv_fraction`` (``kinds[name] == "conv"``), every other ``fraction``; an unset rate
    falls back to ``fraction``. Layerwise: each layer is its own group. Global: the layers sharing a
    rate share one threshold, except the output layer at its own rate, which stays alone.
    """
    if strategy not in ("layerwise", "global"):
        raise TicketlabError(f"unknown pruning strategy {strategy!r}; use layerwise or global")
    output = {output_name, output_name.removesuffix("weight") + "bias"} if output_name else set()
    rates: dict[str, tuple[str, float]] = {}
    for n in names:
        if n in output and output_fraction is not None:
            rates[n] = (f"output:{n}", output_fraction)  # alone even when global
        elif kinds.get(n) == "conv" and conv_fraction is not None:
            rates[n] = ("conv", conv_fraction)
        else:
            rates[n] = ("rest", fraction)
    if strategy == "layerwise":
        return [((n,), rates[n][1]) for n in names]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(rates[n][0], []).append(n)
    return [(tuple(members), rates[members[0]][1]) for members in groups.values()]


def compound(fraction: float, levels: int) -> float:
    """The fraction removed by ``levels`` iterative levels of ``fraction`` each, as one cut."""
    return 1.0 - (1.0 - fraction) ** levels


def one_shot_groups(groups: list[Group], sizes: dict[str, int], target_density: float) -> list[Group]:
    """Fractions that prune once to ``target_density`` overall, split between the groups as iterative pruning
    splits them: each group gets ``compound(f, L)`` for the (real) number of levels L at which the kept weights,
    summed over the groups (``sizes``: weights per layer), are ``target_density`` of all of them."""
    if len({f for _, f in groups}) == 1:
        return [(g, 1.0 - target_density) for g, _ in groups]  # exact, no search needed
    weights = [(sum(sizes[n] for n in g), f) for g, f in groups]
    total = sum(n for n, _ in weights)

    def density(levels: float) -> float:
        return sum(n * (1.0 - f) ** levels for n, f in weights) / total

    lo, hi = 0.0, 1.0
    while density(hi) > target_density:
        lo, hi = hi, 2 * hi
    for _ in range(100):  # bisection: density falls monotonically with the number of levels
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if density(mid) > target_density else (lo, mid)
    return [(g, compound(f, hi)) for g, f in groups]


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


def prune(scores: dict[str, torch.Tensor], mask: Mask, groups: list[Group]) -> Mask:
    """Remove each group's fraction of its remaining weights, lowest scores first, under one threshold per group.

    Exactly ``round(fraction * remaining)`` weights go per group; layers in no group keep their mask.
    """
    new = dict(mask)
    for members, fraction in groups:
        flat_s = torch.cat([scores[n].flatten().float() for n in members])
        flat_m = torch.cat([mask[n].flatten() for n in members])
        kept = _top(flat_s, flat_m, _kept_after(int(flat_m.sum()), fraction))
        for name, part in zip(members, torch.split(kept, [mask[n].numel() for n in members])):
            new[name] = part.view_as(mask[name])
    _check_shrank(mask, new)
    return new


def _check_shrank(old: Mask, new: Mask) -> None:
    for name in old:
        if bool((new[name] & ~old[name]).any()):
            raise AssertionError(f"pruning revived weights in {name}: masks must only shrink")


def random_mask(like: Mask, seed: int, pools: list[tuple[str, ...]]) -> Mask:
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
