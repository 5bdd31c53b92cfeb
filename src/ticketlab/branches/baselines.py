"""The trunk's baselines, asked for after the fact: the ticket's mask on a new initialisation, and random masks."""

from __future__ import annotations

from typing import Annotated, Literal

from ticketlab.branches.base import BranchStart, FreshModel, Start, masked, register
from ticketlab.errors import TicketlabError
from ticketlab.pruning import random_mask
from ticketlab.seeds import derive_seed


@register(draws_mask=True)
def random_prune(
    s: Start,
    fresh: FreshModel,
    *,
    strategy: Annotated[
        Literal["trunk", "layerwise", "global"],
        "how layers are pooled: as the trunk's baseline pools them, each layer alone, or all in one pool",
    ] = "trunk",
) -> BranchStart:
    """A random mask at the ticket's densities (per layer, or per pool of layers), from theta_k."""
    if strategy == "trunk":  # exactly the trunk's baseline (its pools, its seed): the same job
        mask = s.trunk_random()
    else:
        if s.structured:
            raise TicketlabError("random_prune: a structured run's baseline is random units; use --strategy trunk")
        pools = [(n,) for n in s.mask] if strategy == "layerwise" else [tuple(s.mask)]
        mask = random_mask(s.mask, derive_seed(s.cfg.imp.seed, s.replicate, s.level, "random_prune", strategy), pools)
    return BranchStart(masked(s.rewind, mask), mask)


@register
def reinit(s: Start, fresh: FreshModel) -> BranchStart:
    """The ticket's mask on a newly initialised network (the trunk's own re-init baseline, after the fact)."""
    model = fresh(derive_seed(s.cfg.imp.seed, s.replicate, s.level, "reinit"))
    return BranchStart(masked(model.state_dict(), s.mask), s.mask)
