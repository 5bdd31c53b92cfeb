"""How many weights each layer keeps: layers grouped under one threshold (layerwise / global), ERK densities,
the fraction of each level, and one-shot fractions to a target density.

The groups say *how many*; :mod:`ticketlab.pruning.topk` decides *which*, from the scores.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ticketlab.errors import TicketlabError

STRATEGIES = ("layerwise", "global", "erk")


class Group(NamedTuple):
    """Layers pruned together. ``fraction``: of the group's remaining weights removed, under one threshold.
    With ``erk``, ``fraction`` is of the group's *full* size, and each layer gets its ERK share of the density.
    With ``origin`` (the group's weights alive at level 0), ``fraction`` is of those: the group keeps exactly
    ``round(origin * (1 - fraction))`` (the exact iterative ladder)."""

    members: tuple[str, ...]
    fraction: float
    erk: bool = False
    origin: int | None = None


def as_group(g) -> Group:
    """A Group from a Group or a plain (members, fraction[, erk]) tuple."""
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
    return [Group(g.members, compound(g.fraction, level), True) if g.erk else g for g in map(as_group, groups)]


def on_ladder(groups: list[Group], level: int, origin: dict[str, int]) -> list[Group]:
    """The groups of iterative level ``level`` on the exact ladder: a group of n weights alive at level 0
    (``origin``: per layer) keeps round(n * (1 - f)^level), so a tiny layer's count keeps falling with the levels
    instead of stalling where one level's cut rounds to zero."""
    return [
        g if g.erk else Group(g.members, compound(g.fraction, level), False, sum(origin[n] for n in g.members))
        for g in at_level(groups, level)
    ]


def one_shot_groups(groups: list[Group], sizes: dict[str, int], target_density: float) -> list[Group]:
    """Fractions that prune once to ``target_density`` overall, split between the groups as iterative pruning
    splits them: each group gets ``compound(f, L)`` for the (real) number of levels L at which the kept weights,
    summed over the groups (``sizes``: weights per layer), are ``target_density`` of all of them."""
    groups = [as_group(g) for g in groups]
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
