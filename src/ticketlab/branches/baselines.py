"""The trunk's baselines, asked for after the fact: the ticket's mask on a new initialisation, and random masks.
Each may start at sparsity-aware scale (``--init sparse_aware``: :func:`ticketlab.models.sparse_aware`; ``--init
matched``: :func:`ticketlab.models.variance_matched`)."""

from __future__ import annotations

from typing import Annotated, Literal

from ticketlab import masks as M
from ticketlab.branches.base import BranchStart, FreshModel, Start, State, masked, register
from ticketlab.errors import TicketlabError
from ticketlab.models import sparse_aware, variance_matched
from ticketlab.pruning import random_mask
from ticketlab.seeds import derive_seed

Init = Annotated[
    Literal["as_is", "sparse_aware", "matched"],
    "sparse_aware: each layer's kept weights times 1/sqrt(its density); matched: rescaled so their mean square is "
    "2 / (density * fan_in), for masks that keep the large weights",
]


def scaled_start(s: Start, state: State, mask: M.Mask, init: str, branch: str) -> State:
    """``state`` pruned by ``mask``; at sparsity-aware scale when ``init`` is "sparse_aware" (times 1/sqrt(density))
    or "matched" (kept weights' mean square 2 / (density fan_in)). TicketlabError for a structured run (its masks
    remove whole units, whose fan-in the rules do not see)."""
    if init == "as_is":
        return masked(state, mask)
    if s.structured:
        raise TicketlabError(f"{branch} --init {init} scales weights by layer density; not for a --units run")
    return sparse_aware(state, mask) if init == "sparse_aware" else variance_matched(state, mask)


@register(draws_mask=True)
def random_prune(
    s: Start,
    fresh: FreshModel,
    *,
    strategy: Annotated[
        Literal["trunk", "layerwise", "global"],
        "how layers are pooled: as the trunk's baseline pools them, each layer alone, or all in one pool",
    ] = "trunk",
    init: Init = "as_is",
) -> BranchStart:
    """A random mask at the ticket's densities (per layer, or per pool of layers), from theta_k."""
    if strategy == "trunk":  # exactly the trunk's baseline (its pools, its seed): the same job
        mask = s.trunk_random()
    else:
        if s.structured:
            raise TicketlabError("random_prune: a structured run's baseline is random units; use --strategy trunk")
        pools = [(n,) for n in s.mask] if strategy == "layerwise" else [tuple(s.mask)]
        mask = random_mask(s.mask, derive_seed(s.cfg.imp.seed, s.replicate, s.level, "random_prune", strategy), pools)
    return BranchStart(scaled_start(s, s.rewind, mask, init, "random_prune"), mask)


@register
def reinit(s: Start, fresh: FreshModel, *, init: Init = "as_is") -> BranchStart:
    """The ticket's mask on a newly initialised network (the trunk's own re-init baseline, after the fact)."""
    model = fresh(derive_seed(s.cfg.imp.seed, s.replicate, s.level, "reinit"))
    return BranchStart(scaled_start(s, model.state_dict(), s.mask, init, "reinit"), s.mask)
