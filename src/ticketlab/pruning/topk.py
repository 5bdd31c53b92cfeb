"""Scores to masks: exact top-k over the weights still alive, per pool of layers, in one cut or in rounds.

Scoring (what to keep) and masking (how many to keep, where) are separate steps: a criterion returns a score
per weight, and :func:`prune` removes exactly ``round(fraction * remaining)`` weights per layer or per global
pool, never reviving a pruned one. An ERK group instead spreads its density over its layers by the
Erdos-Renyi-Kernel rule, each layer to its exact count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ticketlab.masks import Mask
from ticketlab.pruning.allocate import Group, as_group, erk_densities


def _kept_after(remaining: int, fraction: float) -> int:
    return remaining - round(fraction * remaining)


def keep_counts(groups: list[Group], mask: Mask) -> list[tuple[tuple[str, ...], int]]:
    """How many weights each pool keeps: ``round(fraction * remaining)`` go per group; an ERK group keeps
    ``round(d_l * size_l)`` in each layer l, d_l its ERK density at the group's density ``1 - fraction``."""
    out = []
    for g in map(as_group, groups):
        if g.origin is not None:
            keep, alive = round(g.origin * (1.0 - g.fraction)), sum(int(mask[n].sum()) for n in g.members)
            if keep > alive:
                raise AssertionError(f"the ladder asks {g.members} to keep {keep} weights, more than the {alive} left")
            out.append((g.members, keep))
            continue
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


class _StraightThroughTopK(torch.autograd.Function):
    """The top-``keep`` entries as a 0/1 float mask; backward returns the mask's gradient unchanged."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: int) -> torch.Tensor:  # type: ignore[override]
        # one topk in the scores' own dtype, every step of a supermask's training: no alive set, no float64 copy
        out = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
        if keep > 0:
            out[torch.topk(scores.detach().flatten(), keep, sorted=False).indices] = 1
        return out.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def straight_through_topk(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """A 0/1 mask (``scores``' shape and dtype) of exactly the ``keep`` highest ``scores``, whose gradient passes
    straight through to every score, kept or not: d mask_i / d score_i = 1 (the straight-through estimator of
    edge-popup, Ramanujan et al. 2020). Ties are broken as ``torch.topk`` breaks them, the same on every call."""
    return _StraightThroughTopK.apply(scores, keep)


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


def random_mask(like: Mask, seed: int, pools: list[tuple[str, ...]], allowed: Mask | None = None) -> Mask:
    """A random mask with the same number of kept weights as ``like`` in each pool of layers, drawn among the
    ``allowed`` weights (default: all).

    One pool per layer keeps every layer's density (the layerwise baseline); one pool of several
    layers keeps only their overall density (the global baseline).
    """
    g = torch.Generator().manual_seed(seed)
    out = dict(like)
    for pool in pools:
        sizes = [like[n].numel() for n in pool]
        keep = sum(int(like[n].sum()) for n in pool)
        flat = torch.zeros(sum(sizes), dtype=torch.bool)
        if allowed is None:
            flat[torch.randperm(sum(sizes), generator=g)[:keep]] = True
        else:  # the same draw as above when everything is allowed
            where = torch.cat([allowed[n].flatten().cpu() for n in pool]).nonzero().flatten()
            flat[where[torch.randperm(len(where), generator=g)[:keep]]] = True
        for name, part in zip(pool, torch.split(flat, sizes)):
            out[name] = part.view_as(like[name]).to(like[name].device)
    return out
