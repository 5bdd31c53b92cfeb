"""Turning scores into masks: layerwise, global or ERK top-k over the weights still alive.

Scoring (what to keep) and masking (how many to keep, where) are separate steps: a criterion
returns a score per weight, and :func:`prune` removes exactly ``round(fraction * remaining)``
weights per layer or per global pool, never reviving a pruned one. An ERK group instead spreads
its density over its layers by the Erdos-Renyi-Kernel rule, each layer to its exact count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask

STRATEGIES = ("layerwise", "global", "erk")


class Group(NamedTuple):
    """Layers pruned together. ``fraction``: of the group's remaining weights removed, under one threshold.
    With ``erk``, ``fraction`` is of the group's *full* size, and each layer gets its ERK share of the density."""

    members: tuple[str, ...]
    fraction: float
    erk: bool = False


def _group(g) -> Group:
    return g if isinstance(g, Group) else Group(*g)


def plan_groups(
    names: list[str],
    *,
    kinds: dict[str, str],
    output_name: str | None,
    strategy: str,
    fraction: float,
    conv_fraction: float | None = None,
    output_fraction: float | None = None,
    overrides: dict[str, float] | None = None,
) -> list[Group]:
    """Which layers are pruned together, and at what rate per level.

    A layer's rate: its entry in ``overrides`` (0 keeps it dense); else the output layer's (weight, and bias when
    biases are pruned) ``output_fraction``; else conv layers' ``conv_fraction`` (``kinds[name] == "conv"``); else
    ``fraction``; an unset rate falls back to ``fraction``. Layerwise: each layer is its own group. Global: the
    layers sharing a rate share one threshold, except the output layer and overridden layers, which stay alone.
    ERK: as global, but a shared rate is spread over its layers by the ERK rule instead of one threshold.
    """
    if strategy not in STRATEGIES:
        raise TicketlabError(f"unknown pruning strategy {strategy!r}; use {', '.join(STRATEGIES)}")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TicketlabError(f"per-layer fractions name {unknown}, which are not prunable; prunable: {names}")
    output = {output_name, output_name.removesuffix("weight") + "bias"} if output_name else set()
    rates: dict[str, tuple[str, float]] = {}
    for n in names:
        if n in overrides:
            rates[n] = (f"layer:{n}", overrides[n])  # alone even when global
        elif n in output and output_fraction is not None:
            rates[n] = (f"output:{n}", output_fraction)
        elif kinds.get(n) == "conv" and conv_fraction is not None:
            rates[n] = ("conv", conv_fraction)
        else:
            rates[n] = ("rest", fraction)
    if strategy == "layerwise":
        return [Group((n,), rates[n][1]) for n in names]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(rates[n][0], []).append(n)
    shared = {"conv", "rest"}
    return [Group(tuple(m), rates[m[0]][1], strategy == "erk" and key in shared) for key, m in groups.items()]


def compound(fraction: float, levels: float) -> float:
    """The fraction removed by ``levels`` iterative levels of ``fraction`` each, as one cut."""
    return 1.0 - (1.0 - fraction) ** levels


def at_level(groups: list[Group], level: int) -> list[Group]:
    """The groups of iterative level ``level``: ERK groups' fractions are of the full size, so they compound."""
    return [Group(g.members, compound(g.fraction, level), True) if g.erk else g for g in map(_group, groups)]


def one_shot_groups(groups: list[Group], sizes: dict[str, int], target_density: float) -> list[Group]:
    """Fractions that prune once to ``target_density`` overall, split between the groups as iterative pruning
    splits them: each group gets ``compound(f, L)`` for the (real) number of levels L at which the kept weights,
    summed over the groups (``sizes``: weights per layer), are ``target_density`` of all of them."""
    groups = [_group(g) for g in groups]
    weights = [(sum(sizes[n] for n in g.members), g.fraction) for g in groups]
    total = sum(n for n, _ in weights)
    floor = sum(n for n, f in weights if f == 0) / total
    if target_density <= floor:
        raise TicketlabError(
            f"target density {target_density:.4g} cannot be reached: the layers kept dense already hold "
            f"{floor:.4g} of the prunable weights; ask for a higher density or prune those layers"
        )
    if len({f for _, f in weights}) == 1:
        return [Group(g.members, 1.0 - target_density, g.erk) for g in groups]  # exact, no search needed

    def density(levels: float) -> float:
        return sum(n * (1.0 - f) ** levels for n, f in weights) / total

    lo, hi = 0.0, 1.0
    while density(hi) > target_density:
        lo, hi = hi, 2 * hi
    for _ in range(100):  # bisection: density falls monotonically with the number of levels
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if density(mid) > target_density else (lo, mid)
    return [Group(g.members, compound(g.fraction, hi), g.erk) for g in groups]


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-layer densities with ``density`` overall, by the Erdos-Renyi-Kernel rule (Evci et al. 2020, RigL):
    a layer of shape (n_out, n_in, k_h, k_w) gets a density proportional to sum(shape) / prod(shape), so
    small layers stay denser. A layer that would exceed 1 is made dense, and the rest re-solved (the largest
    first, one at a time, as in RigL's code)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        if not rest:
            return {n: 1.0 for n in shapes}
        budget = density * total - sum(sizes[n] for n in dense)
        eps = budget / sum(raw[n] * sizes[n] for n in rest)
        top = max(rest, key=lambda n: raw[n])
        if eps * raw[top] <= 1.0:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.add(top)


def _kept_after(remaining: int, fraction: float) -> int:
    return remaining - round(fraction * remaining)


def keep_counts(groups: list[Group], mask: Mask) -> list[tuple[tuple[str, ...], int]]:
    """How many weights each pool keeps: ``round(fraction * remaining)`` go per group; an ERK group keeps
    ``round(d_l * size_l)`` in each layer l, d_l its ERK density at the group's density ``1 - fraction``."""
    out = []
    for g in map(_group, groups):
        if not g.erk:
            out.append((g.members, _kept_after(sum(int(mask[n].sum()) for n in g.members), g.fraction)))
            continue
        dens = erk_densities({n: tuple(mask[n].shape) for n in g.members}, 1.0 - g.fraction)
        for n in g.members:
            keep = round(dens[n] * mask[n].numel())
            if keep > int(mask[n].sum()):
                raise AssertionError(f"ERK asks {n} to keep {keep} weights, more than the {int(mask[n].sum())} left")
            out.append(((n,), keep))
    return out


def _top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the ``keep`` highest scores among ``alive`` entries (flattened), ranked in double precision
    (SynFlow's scores on deep networks exceed float32's range)."""
    alive = alive.flatten()
    lowest = torch.finfo(torch.float64).min
    # Alive entries always rank above pruned ones, even with NaN or -inf scores, so the count is exact.
    s = scores.flatten().double().nan_to_num(nan=lowest, neginf=lowest)
    s = torch.where(alive, s, torch.full_like(s, float("-inf")))
    out = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    if keep > 0:
        out[torch.topk(s, keep, sorted=False).indices] = True
    if int(out.sum()) != keep or bool((out & ~alive).any()):
        raise AssertionError(f"pruning kept {int(out.sum())} weights, {keep} requested")
    return out


def prune_to(scores: dict[str, torch.Tensor], mask: Mask, counts: list[tuple[tuple[str, ...], int]]) -> Mask:
    """Keep exactly ``keep`` weights in each pool of layers, the highest scores among those alive."""
    new = dict(mask)
    for members, keep in counts:
        flat_s = torch.cat([scores[n].flatten().double() for n in members])
        flat_m = torch.cat([mask[n].flatten() for n in members])
        kept = _top(flat_s, flat_m, keep)
        for name, part in zip(members, torch.split(kept, [mask[n].numel() for n in members])):
            new[name] = part.view_as(mask[name])
    _check_shrank(mask, new)
    return new


def prune(scores: dict[str, torch.Tensor], mask: Mask, groups: list[Group]) -> Mask:
    """Remove each group's fraction of its remaining weights, lowest scores first, under one threshold per group
    (per layer, to its ERK count, in an ERK group). Layers in no group keep their mask."""
    return prune_to(scores, mask, keep_counts(groups, mask))


def prune_in_rounds(score: Callable[[Mask], dict[str, torch.Tensor]], mask: Mask, groups: list[Group], rounds: int):
    """Reach the groups' counts in ``rounds`` prune-and-rescore rounds on an exponential schedule (SynFlow's):
    after round r a pool keeps ``alive * (keep / alive) ** (r / rounds)`` weights, the last round exactly ``keep``.
    ``score(mask)`` scores the network under the current mask."""
    targets = keep_counts(groups, mask)
    start = [sum(int(mask[n].sum()) for n in members) for members, _ in targets]
    for r in range(1, rounds + 1):
        counts = [
            (members, keep if r == rounds else max(keep, round(alive * (keep / max(alive, 1)) ** (r / rounds))))
            for (members, keep), alive in zip(targets, start)
        ]
        mask = prune_to(score(mask), mask, counts)
    return mask


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
