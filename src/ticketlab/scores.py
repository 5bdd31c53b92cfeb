"""Scores: which weights to keep. A criterion returns one score per weight, higher meaning keep.

Turning scores into a mask (how many to keep, per layer or globally, never reviving a pruned weight) is
:func:`ticketlab.pruning.prune`'s job, shared by every criterion. Two kinds of criteria:

- ``AFTER_TRAINING``, those of Zhou et al. 2019 ("Deconstructing lottery tickets"), computed from the weights
  a level started from (``init``: theta_0, or theta_k with rewinding) and the weights it ended with (``final``);
- ``WITH_MODEL``, the pruning-at-initialisation scores SNIP, GraSP and SynFlow, computed from the network
  itself (and, for SNIP and GraSP, a few training batches). They score a copy of the model in eval mode, so
  the model's weights and its norm layers' statistics are left as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.errors import TicketlabError

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


@dataclass(frozen=True)
class Examples:
    """What a data-driven score may read: ``batches()`` yields a few (inputs, labels) training batches;
    ``input_shape`` (without the batch dimension) is all that SynFlow needs."""

    input_shape: tuple[int, ...]
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


ModelCriterion = Callable[[nn.Module, dict[str, torch.Tensor], Examples], Scores]
WITH_MODEL: dict[str, ModelCriterion] = {}
# Scores that need the two ends of training: at initialisation (w_T = w_0) they say nothing.
NEED_TRAINING = ("magnitude_increase", "movement", "large_final_same_sign", "large_final_diff_sign")
ROUNDS = {"synflow": 100}  # prune-and-rescore rounds by default (SynFlow's iterative schedule); others one


def _register_model(fn: ModelCriterion) -> ModelCriterion:
    WITH_MODEL[fn.__name__] = fn
    return fn


def _scoring_copy(model: nn.Module, mask: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> nn.Module:
    """A masked copy in eval mode (BatchNorm uses, and keeps, its running statistics; dropout is off)."""
    net = copy.deepcopy(model).eval()
    if dtype is not None:
        net.to(dtype)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, m in mask.items():
            params[n].mul_(m.to(params[n].device, params[n].dtype))
    for p in net.parameters():
        p.requires_grad_(False)
    for n in mask:
        params[n].requires_grad_(True)
    return net


@_register_model
def snip(model: nn.Module, mask: dict[str, torch.Tensor], examples: Examples) -> Scores:
    """|g * w| (Lee et al. 2019): the loss's sensitivity to removing each weight, summed over the batches."""
    net = _scoring_copy(model, mask)
    params = dict(net.named_parameters())
    for x, y in examples.batches():
        F.cross_entropy(net(x).float(), y).backward()
    return {n: (params[n].grad * params[n]).abs().detach() for n in mask}


@_register_model
def grasp(model: nn.Module, mask: dict[str, torch.Tensor], examples: Examples) -> Scores:
    """w * (H g) (Wang et al. 2020), H the Hessian and g the gradient of the loss over the batches.

    GraSP's own score is -w * (H g), and it removes the *highest* scores, those whose removal least reduces
    gradient flow; with higher meaning keep here, the score is its negation. Pruned weights do not count in g.
    """
    net = _scoring_copy(model, mask)
    names = list(mask)
    params = dict(net.named_parameters())
    weights = [params[n] for n in names]
    g = [torch.zeros_like(w) for w in weights]
    for x, y in examples.batches():
        grads = torch.autograd.grad(F.cross_entropy(net(x).float(), y), weights)
        g = [a + b * mask[n].to(b.device) for a, b, n in zip(g, grads, names)]
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in examples.batches():  # H g = d(g . grad)/dw, one batch at a time (a Hessian-vector product)
        grads = torch.autograd.grad(F.cross_entropy(net(x).float(), y), weights, create_graph=True)
        dot = sum((a.detach() * b).sum() for a, b in zip(g, grads))
        hg = [a + b for a, b in zip(hg, torch.autograd.grad(dot, weights))]
    return {n: (w * h).detach() for n, w, h in zip(names, weights, hg)}


@_register_model
def synflow(model: nn.Module, mask: dict[str, torch.Tensor], examples: Examples) -> Scores:
    """|w * dR/dw| (Tanaka et al. 2020), R the sum of the outputs of the network with every parameter and
    statistic replaced by its absolute value, fed an all-ones input: the synaptic flow through each weight.
    Reads no data; in double precision, since R grows exponentially with depth (1e68 on a ResNet-56)."""
    net = _scoring_copy(model, mask, torch.float64)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    params = dict(net.named_parameters())
    device = next(iter(params.values())).device
    net(torch.ones(1, *examples.input_shape, dtype=torch.float64, device=device)).sum().backward()
    return {n: (params[n].grad * params[n]).abs().detach() for n in mask}


def at_init(criterion: str, model: nn.Module, mask: dict[str, torch.Tensor], examples: Examples, seed: int = 0):
    """Score ``model`` (its current weights, under ``mask``) by any criterion, as pruning at initialisation
    does: an after-training criterion sees the current weights as both its start and its end."""
    if criterion in WITH_MODEL:
        return WITH_MODEL[criterion](model, mask, examples)
    if criterion in NEED_TRAINING:
        raise TicketlabError(
            f"criterion {criterion} compares the weights before and after training, which are the same at "
            "initialisation; use it after training (iterative, or --one-shot), or pick another criterion"
        )
    state = {n: p.detach() for n, p in model.named_parameters() if n in mask}
    return after_training(criterion, state, state, list(mask), seed)


def after_training(
    criterion: str, init: dict[str, torch.Tensor], final: dict[str, torch.Tensor], names: list[str], seed: int = 0
) -> Scores:
    """Score ``names`` by a registered after-training ``criterion``."""
    return AFTER_TRAINING[criterion](init, final, names, seed)
