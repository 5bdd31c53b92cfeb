"""Untrained supermasks: a criterion's mask on theta_0, evaluated without any training (Zhou et al. 2019).

Zhou, Lan, Liu and Yosinski ("Deconstructing lottery tickets: zeros, signs, and the supermask", NeurIPS 2019)
found that the mask alone, applied to the untrained initial weights, already classifies well above chance --
best with the ``large_final_same_sign`` criterion, better still with each kept weight replaced by its sign times
its layer's standard deviation at initialisation (the "signed constant"). This branch asks that of every level:
the mask is recomputed by a criterion from theta_0 and the weights the level was pruned from, with the ticket's
per-layer counts, and the network is evaluated once, as it starts: zero optimizer steps.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from ticketlab import masks as M
from ticketlab import scores as S
from ticketlab.branches.base import BranchStart, FreshModel, Start, masked, register
from ticketlab.errors import TicketlabError
from ticketlab.pruning import prune_to


def ends_criteria() -> list[str]:
    """The criteria this branch takes: those that read only the start and end weights (Zhou et al.'s)."""
    return [n for n in S.names() if S.get(n).needs == "ends"]


_CRITERION_HELP = (
    "which weights the supermask keeps, scored from theta_0 and the trained weights (Zhou et al.): "
    + " | ".join(ends_criteria())
)


@register
def supermask_eval(
    s: Start,
    fresh: FreshModel,
    *,
    criterion: Annotated[str, _CRITERION_HELP] = "large_final_same_sign",
    weights: Annotated[
        Literal["init", "signed_constant"],
        "the kept weights: theta_0's, or theta_0's signs times each layer's std at initialisation",
    ] = "init",
) -> BranchStart:
    """theta_0 under a criterion's mask, evaluated untrained: Zhou et al. 2019's supermasks.

    The mask: ``criterion`` (one of :func:`ends_criteria`) scores every weight from theta_0 (``s.init``) and the
    trained weights the level's ticket was pruned from (``s.trained``), and keeps in each layer exactly as many as
    the ticket does, among the weights alive there (those of the previous level's ticket, or of the dense network
    for a one-shot run), so masks only shrink along levels. With the run's own criterion, an unstructured run and
    the rewind point k = 0 (or a criterion that ignores the start weights), it is the ticket's own mask.

    The weights: theta_0 masked (``init``), or ``signed_constant``: each kept weight sign(theta_0) times its
    layer's standard deviation of theta_0 (all of the layer, at initialisation); biases and other tensors as
    theta_0. BatchNorm running statistics are theta_0's too, the initial ones (mean 0, variance 1), not
    recomputed on data.

    The job starts at the end of training (iteration ``total``): no optimizer step, one evaluation, and the
    final weights are the starting ones. Raises TicketlabError for a criterion that scores the network or
    units (SNIP, GraSP, SynFlow, l1, ...) and for a structured (``--units``) run.
    """
    allowed = ends_criteria()
    if criterion not in allowed:
        raise TicketlabError(f"supermask_eval: --criterion must be one of {', '.join(allowed)}, not {criterion!r}")
    if s.structured:  # its masks cover whole units (biases, norm parameters), which these criteria do not rank
        raise TicketlabError("supermask_eval ranks weights one by one; it does not apply to a structured (--units) run")
    mask = supermask(s, criterion)
    state = {n: t.clone() for n, t in s.init.items()}
    if weights == "signed_constant":
        for n in mask:
            std = s.init[n].float().std()
            state[n] = (torch.sign(s.init[n]) * std).to(s.init[n].dtype)
    return BranchStart(masked(state, mask), mask, begin=s.total)


def supermask(s: Start, criterion: str) -> M.Mask:
    """The mask ``criterion`` gives on (theta_0, ``s.trained``): per layer the ticket's count of kept weights, the
    highest scores among the weights alive in the source (nonzero in ``s.trained``, or kept by the ticket)."""
    alive = {n: (s.trained[n] != 0) | m for n, m in s.mask.items()}
    scores = S.score(criterion, mask=alive, start=s.init, end=s.trained, seed=s.seed)
    counts = [((n,), int(m.sum())) for n, m in s.mask.items()]
    return prune_to(scores, alive, counts)
