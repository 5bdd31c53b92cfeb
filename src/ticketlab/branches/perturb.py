"""theta_k's kept weights changed, the mask kept: signs only (magnitudes replaced), noise, sign flips, shuffles."""

from __future__ import annotations

import math
import typing
from typing import Annotated, Literal

import torch

from ticketlab import masks as M
from ticketlab.branches.base import BranchStart, FreshModel, Start, State, masked, register
from ticketlab.errors import TicketlabError

Shuffle = Literal["none", "global", "layer", "filter", "sign"]
SHUFFLES = typing.get_args(Shuffle)


@register
def sign_only(
    s: Start,
    fresh: FreshModel,
    *,
    magnitudes: Annotated[
        Literal["constant", "resample"],
        "the new magnitudes: each layer's std at initialisation, or those of a new initialisation",
    ] = "constant",
) -> BranchStart:
    """theta_k's signs kept, magnitudes replaced (Zhou et al. 2019).

    ``constant``: each layer's standard deviation at initialisation; ``resample``: those of a new initialisation."""
    _weights_only(s, "sign_only")
    new = fresh(s.seed).state_dict() if magnitudes == "resample" else None
    state = {n: t.clone() for n, t in s.rewind.items()}
    for n in s.mask:
        size = s.init[n].float().std() if new is None else new[n].abs().to(s.rewind[n].device)
        state[n] = torch.sign(s.rewind[n]) * size
    return BranchStart(masked(state, s.mask), s.mask)


@register
def perturb(
    s: Start,
    fresh: FreshModel,
    *,
    noise: Annotated[float, "Gaussian noise, in units of each layer's std at initialisation"] = 0.0,
    flip: Annotated[float, "fraction of kept weights whose sign is flipped"] = 0.0,
    shuffle: Annotated[
        Shuffle, "shuffle kept values over every layer, within each layer, filter, or same-sign group"
    ] = "none",
) -> BranchStart:
    """theta_k's kept weights with noise, flipped signs, or shuffled values.

    Gaussian ``noise`` (std = noise x the layer's std at initialisation), the signs of a fraction ``flip`` of them
    flipped, or their values shuffled (``global`` over every layer, within each ``layer``, within each output
    ``filter``/neuron, or among weights of the same ``sign`` in a layer)."""
    if noise < 0 or not 0 <= flip <= 1:
        raise TicketlabError(f"perturb: noise must be >= 0 and flip in [0, 1], got noise={noise}, flip={flip}")
    if noise == 0 and flip == 0 and shuffle == "none":
        raise TicketlabError("perturb needs --noise, --flip or --shuffle")
    if not math.isfinite(noise):
        raise TicketlabError(f"perturb: noise must be a finite number, got {noise}")
    _weights_only(s, "perturb")
    g = torch.Generator().manual_seed(s.seed)
    state = {n: t.clone() for n, t in s.rewind.items()}
    for n, m in s.mask.items():
        w, keep = state[n].cpu(), m.cpu()
        if noise:
            w = w + keep * torch.randn(w.shape, generator=g) * noise * s.init[n].float().std().cpu()
        if flip:
            alive = keep.flatten().nonzero().flatten()
            chosen = alive[torch.randperm(len(alive), generator=g)[: round(flip * len(alive))]]
            flat = w.flatten().clone()
            flat[chosen] = -flat[chosen]
            w = flat.view_as(w)
        state[n] = w.to(state[n].device)
    if shuffle != "none":
        _shuffle(state, s.mask, shuffle, g)
    return BranchStart(masked(state, s.mask), s.mask)


def _weights_only(s: Start, name: str) -> None:
    if s.structured:  # its masks hold BatchNorm scales and biases, which have no init spread of their own
        raise TicketlabError(f"{name} changes weights one by one; it does not apply to a structured (--units) run")


def _shuffle(state: State, mask: M.Mask, how: str, g: torch.Generator) -> None:
    """Permute kept values within each group, in place: every group keeps its multiset of values."""
    groups: list[list[tuple[str, torch.Tensor]]] = []  # (layer, flat indices) making one group
    for n, m in mask.items():
        flat = m.cpu().flatten()
        if how == "filter":
            rows = m.cpu().reshape(m.shape[0], -1)
            width = rows.shape[1]
            groups += [[(n, r * width + rows[r].nonzero().flatten())] for r in range(rows.shape[0])]
        elif how == "sign":
            w = state[n].cpu().flatten()
            groups += [[(n, (flat & (w > 0)).nonzero().flatten())], [(n, (flat & (w <= 0)).nonzero().flatten())]]
        else:
            groups.append([(n, flat.nonzero().flatten())])
    if how == "global":
        groups = [[part for group in groups for part in group]]
    flats = {n: state[n].cpu().flatten().clone() for n in mask}
    for group in groups:
        values = torch.cat([flats[n][idx] for n, idx in group])
        values = values[torch.randperm(len(values), generator=g)]
        for (n, idx), part in zip(group, torch.split(values, [len(i) for _, i in group])):
            flats[n][idx] = part
    for n in mask:
        state[n] = flats[n].view_as(state[n]).to(state[n].device)
