"""Scores: which weights to keep. A criterion returns one score per weight, higher meaning keep.

Turning scores into a mask (how many to keep, per layer or globally, never reviving a pruned weight) is
:func:`ticketlab.pruning.prune`'s job, shared by every criterion. The criteria here are those of Zhou et al.
2019 ("Deconstructing lottery tickets"), computed from the weights a level started from (``init``: theta_0,
or theta_k with rewinding) and the weights it ended with (``final``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Scores = dict[str, torch.Tensor]
Criterion = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str], int], Scores]
AFTER_TRAINING: dict[str, Criterion] = {}


def _register(fn: Criterion) -> Criterion:
    AFTER_TRAINING[fn.__name__] = fn
    return fn


def _rank(t: torch.Tensor) -> torch.Tensor:
    """Each entry's rank within its tensor, scaled to [0, 1] (ties broken by position, deterministically)."""
    flat = t.flatten().float()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device)
    return (ranks / max(flat.numel() - 1, 1)).view_as(t)


def _excluded(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` where ``keep``, else -inf: such weights go first, and stay only if nothing else is left."""
    return torch.where(keep, scores, torch.full_like(scores, float("-inf")))


@_register
def large_final(init, final, names, seed) -> Scores:
    """|w_T|: the LTH's magnitude criterion."""
    return {n: final[n].abs().float() for n in names}


@_register
def small_final(init, final, names, seed) -> Scores:
    """-|w_T|: keep the smallest final weights."""
    return {n: -final[n].abs().float() for n in names}


@_register
def large_init(init, final, names, seed) -> Scores:
    """|w_0|: keep the largest initial weights."""
    return {n: init[n].abs().float() for n in names}


@_register
def small_init(init, final, names, seed) -> Scores:
    """-|w_0|: keep the smallest initial weights."""
    return {n: -init[n].abs().float() for n in names}


@_register
def large_init_large_final(init, final, names, seed) -> Scores:
    """Large at both ends: the lower of the two within-layer ranks of |w_0| and |w_T|."""
    return {n: torch.minimum(_rank(init[n].abs()), _rank(final[n].abs())) for n in names}


@_register
def small_init_small_final(init, final, names, seed) -> Scores:
    """Small at both ends: the lower of the two within-layer ranks of -|w_0| and -|w_T|."""
    return {n: torch.minimum(_rank(-init[n].abs()), _rank(-final[n].abs())) for n in names}


@_register
def magnitude_increase(init, final, names, seed) -> Scores:
    """|w_T| - |w_0|: keep the weights that grew most."""
    return {n: (final[n].abs() - init[n].abs()).float() for n in names}


@_register
def movement(init, final, names, seed) -> Scores:
    """|w_T - w_0|: keep the weights that moved most."""
    return {n: (final[n] - init[n]).abs().float() for n in names}


@_register
def large_final_same_sign(init, final, names, seed) -> Scores:
    """|w_T| among weights whose sign did not change; the others are excluded."""
    return {n: _excluded(torch.sign(final[n]) == torch.sign(init[n]), final[n].abs().float()) for n in names}


@_register
def large_final_diff_sign(init, final, names, seed) -> Scores:
    """|w_T| among weights whose sign flipped; the others are excluded."""
    return {n: _excluded(torch.sign(final[n]) != torch.sign(init[n]), final[n].abs().float()) for n in names}


@_register
def random(init, final, names, seed) -> Scores:
    """Uniform random scores, seeded: random pruning of the surviving weights."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(final[n].shape, generator=g).to(final[n].device) for n in names}


def after_training(
    criterion: str, init: dict[str, torch.Tensor], final: dict[str, torch.Tensor], names: list[str], seed: int = 0
) -> Scores:
    """Score ``names`` by a registered after-training ``criterion``."""
    return AFTER_TRAINING[criterion](init, final, names, seed)
