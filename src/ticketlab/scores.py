"""Scores: which weights to keep. A criterion returns one score per weight (or per unit), higher meaning keep.

Turning scores into a mask (how many to keep, per layer or globally, never reviving a pruned weight) is
:func:`ticketlab.pruning.prune`'s job, shared by every criterion. Every criterion is one function registered
by :func:`criterion`, under its own name, with what it reads (``needs``):

- ``"ends"``: the weights a level started from (``start``: theta_0, or theta_k with rewinding) and those it
  ended with (``end``) -- the criteria of Zhou et al. 2019 ("Deconstructing lottery tickets");
- ``"model"``: the network itself and, for SNIP and GraSP, a few training batches -- the pruning-at-initialisation
  scores SNIP, GraSP and SynFlow. They score a copy of the model in eval mode, so the model's weights and its
  norm layers' statistics are left as they were;
- ``"units"``: the network's neurons and filters (:mod:`ticketlab.pruning.units`), one score per unit, for
  structured pruning (``--units``).

:func:`score` is the one dispatch; :func:`get` and :func:`names` read the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.prunable import param_name
from ticketlab.pruning.units import Unit, masked_param
from ticketlab.training.objectives import CLASSIFICATION, Objective

Scores = dict[str, torch.Tensor]
NEEDS = ("ends", "model", "units")


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its function and what it needs."""

    name: str
    fn: Callable[..., Scores | torch.Tensor]
    needs: str  # one of NEEDS
    rounds: int = 1  # prune-and-rescore rounds by default (SynFlow's iterative schedule: 100)
    at_init_default: bool = False  # `ticketlab criteria` scores it at initialisation unless told otherwise
    needs_training: bool = False  # compares w_0 with w_T: at initialisation (w_T = w_0) it says nothing


_REGISTRY: dict[str, Criterion] = {}


def criterion(*, needs: str, rounds: int = 1, at_init_default: bool = False, needs_training: bool = False):
    """Register the decorated function as a criterion under its own name. Its signature follows ``needs``:
    ``"ends"``: ``fn(start, end, names, seed) -> Scores``; ``"model"``: ``fn(model, mask, examples) -> Scores``;
    ``"units"``: ``fn(model, unit, mask) -> Tensor`` (one score per unit)."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, not {needs!r}")

    def register(fn):
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"criterion {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = Criterion(fn.__name__, fn, needs, rounds, at_init_default, needs_training)
        return fn

    return register


def names(*, units: bool = False) -> list[str]:
    """The registered criteria in registration order: those that score weights, or with ``units`` those that
    score neurons and filters."""
    return [n for n, c in _REGISTRY.items() if (c.needs == "units") == units]


def get(name: str, *, units: bool = False, at_init: bool = False) -> Criterion:
    """The criterion ``name`` (a unit criterion with ``units``). With ``at_init``, refuse one that compares the
    weights before and after training, which are the same at initialisation."""
    c = _REGISTRY.get(name)
    if c is None or (c.needs == "units") != units:
        what = "unit score" if units else "criterion"
        raise TicketlabError(f"unknown {what} {name!r}; known: {', '.join(names(units=units))}")
    if at_init and c.needs_training:
        raise TicketlabError(
            f"criterion {name} compares the weights before and after training, which are the same at "
            "initialisation, so it cannot prune at init; use it after training (iterative, or one-shot), "
            "or pick another criterion"
        )
    return c


def _rank(t: torch.Tensor) -> torch.Tensor:
    """Each entry's rank within its tensor, scaled to [0, 1] (ties broken by position, deterministically)."""
    flat = t.flatten().float()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device)
    return (ranks / max(flat.numel() - 1, 1)).view_as(t)


def _excluded(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` where ``keep``, else -inf: such weights go first, and stay only if nothing else is left."""
    return torch.where(keep, scores, torch.full_like(scores, float("-inf")))


@criterion(needs="ends")
def large_final(init, final, names, seed) -> Scores:
    """|w_T|: the LTH's magnitude criterion."""
    return {n: final[n].abs().float() for n in names}


@criterion(needs="ends")
def small_final(init, final, names, seed) -> Scores:
    """-|w_T|: keep the smallest final weights."""
    return {n: -final[n].abs().float() for n in names}


@criterion(needs="ends")
def large_init(init, final, names, seed) -> Scores:
    """|w_0|: keep the largest initial weights."""
    return {n: init[n].abs().float() for n in names}


@criterion(needs="ends")
def small_init(init, final, names, seed) -> Scores:
    """-|w_0|: keep the smallest initial weights."""
    return {n: -init[n].abs().float() for n in names}


@criterion(needs="ends")
def large_init_large_final(init, final, names, seed) -> Scores:
    """Large at both ends: the lower of the two within-layer ranks of |w_0| and |w_T|."""
    return {n: torch.minimum(_rank(init[n].abs()), _rank(final[n].abs())) for n in names}


@criterion(needs="ends")
def small_init_small_final(init, final, names, seed) -> Scores:
    """Small at both ends: the lower of the two within-layer ranks of -|w_0| and -|w_T|."""
    return {n: torch.minimum(_rank(-init[n].abs()), _rank(-final[n].abs())) for n in names}


@criterion(needs="ends", needs_training=True)
def magnitude_increase(init, final, names, seed) -> Scores:
    """|w_T| - |w_0|: keep the weights that grew most."""
    return {n: (final[n].abs() - init[n].abs()).float() for n in names}


@criterion(needs="ends", needs_training=True)
def movement(init, final, names, seed) -> Scores:
    """|w_T - w_0|: keep the weights that moved most."""
    return {n: (final[n] - init[n]).abs().float() for n in names}


@criterion(needs="ends", needs_training=True)
def large_final_same_sign(init, final, names, seed) -> Scores:
    """|w_T| among weights whose sign did not change; the others are excluded."""
    return {n: _excluded(torch.sign(final[n]) == torch.sign(init[n]), final[n].abs().float()) for n in names}


@criterion(needs="ends", needs_training=True)
def large_final_diff_sign(init, final, names, seed) -> Scores:
    """|w_T| among weights whose sign flipped; the others are excluded."""
    return {n: _excluded(torch.sign(final[n]) != torch.sign(init[n]), final[n].abs().float()) for n in names}


@criterion(needs="ends")
def random(init, final, names, seed) -> Scores:
    """Uniform random scores, seeded: random pruning of the surviving weights."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(final[n].shape, generator=g).to(final[n].device) for n in names}


@dataclass(frozen=True)
class Examples:
    """What a data-driven score may read: ``batches()`` yields a few (inputs, labels) training batches;
    ``input_shape`` (without the batch dimension) is all that SynFlow needs; ``objective`` reads the model's output
    (its loss and class scores; None: classification)."""

    input_shape: tuple[int, ...]
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    objective: Objective | None = None
    tokens: bool = False  # the inputs are integer ids (read by embeddings), not values

    def loss(self, output, target: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch from the model's ``output`` and its labels ``target`` (B,)."""
        return (self.objective or CLASSIFICATION).loss(output, target)


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


@criterion(needs="model", at_init_default=True)
def snip(model: nn.Module, mask: dict[str, torch.Tensor], examples: Examples) -> Scores:
    """|g * w| (Lee et al. 2019): the loss's sensitivity to removing each weight, summed over the batches."""
    net = _scoring_copy(model, mask)
    params = dict(net.named_parameters())
    for x, y in examples.batches():
        examples.loss(net(x), y).backward()
    return {n: (params[n].grad * params[n]).abs().detach() for n in mask}


@criterion(needs="model", at_init_default=True)
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
        grads = torch.autograd.grad(examples.loss(net(x), y), weights)
        g = [a + b * mask[n].to(b.device) for a, b, n in zip(g, grads, names)]
    hg = [torch.zeros_like(w) for w in weights]
    # H g = d(g . grad)/dw, one batch at a time (a Hessian-vector product); attention in its plain-math kernel,
    # since the fused ones have no second derivative
    with sdpa_kernel(SDPBackend.MATH):
        for x, y in examples.batches():
            grads = torch.autograd.grad(examples.loss(net(x), y), weights, create_graph=True)
            dot = sum((a.detach() * b).sum() for a, b in zip(g, grads))
            hg = [a + b for a, b in zip(hg, torch.autograd.grad(dot, weights))]
    return {n: (w * h).detach() for n, w, h in zip(names, weights, hg)}


@criterion(needs="model", rounds=100, at_init_default=True)
def synflow(model: nn.Module, mask: dict[str, torch.Tensor], examples: Examples) -> Scores:
    """|w * dR/dw| (Tanaka et al. 2020), R the sum of the outputs of the network with every parameter and
    statistic replaced by its absolute value, fed an all-ones input: the synaptic flow through each weight.
    Reads no data; in double precision, since R grows exponentially with depth (1e68 on a ResNet-56). Token
    inputs: an all-ones input is every token at once, so each embedding emits the sum of its table's rows."""
    net = _scoring_copy(model, mask, torch.float64)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    params = dict(net.named_parameters())
    device = next(iter(params.values())).device
    dtype = torch.long if examples.tokens else torch.float64
    hooks = [
        m.register_forward_hook(lambda m, i, out: m.weight.sum(0).expand_as(out))
        for m in net.modules()
        if examples.tokens and isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    ]
    output = net(torch.ones(1, *examples.input_shape, dtype=dtype, device=device))
    for h in hooks:
        h.remove()
    (examples.objective or CLASSIFICATION).logits(output).sum().backward()
    return {n: (params[n].grad * params[n]).abs().detach() for n in mask}


# ---- units: one score per neuron / filter, for structured pruning ----------------------------------------------


@criterion(needs="units")
def l1(model: nn.Module, unit: Unit, mask: Mask) -> torch.Tensor:
    """The L1 norm of each filter / row (Li et al. 2016, "Pruning filters for efficient convnets")."""
    return masked_param(model, mask, param_name(unit.layer, "weight")).reshape(unit.count, -1).abs().sum(1)


@criterion(needs="units")
def l2(model: nn.Module, unit: Unit, mask: Mask) -> torch.Tensor:
    """The L2 norm of each filter / row."""
    return masked_param(model, mask, param_name(unit.layer, "weight")).reshape(unit.count, -1).norm(dim=1)


@criterion(needs="units")
def bn(model: nn.Module, unit: Unit, mask: Mask) -> torch.Tensor:
    """|gamma| of the BatchNorm after the layer (network slimming, Liu et al. 2017)."""
    if unit.norm is None or not dict(model.named_modules())[unit.norm].affine:
        raise TicketlabError(
            f"layer {unit.layer!r} has no BatchNorm with a scale to rank its units by; rank them by a norm of "
            "their weights instead"
        )
    return masked_param(model, mask, param_name(unit.norm, "weight")).abs()


# ---- the one dispatch ---------------------------------------------------------------------------------------


def score(
    name: str,
    *,
    mask: Mask,
    model: nn.Module | None = None,
    examples: Examples | None = None,
    start: dict[str, torch.Tensor] | None = None,
    end: dict[str, torch.Tensor] | None = None,
    units: list[Unit] | None = None,
    seed: int = 0,
) -> Scores:
    """Score the parameters of ``mask`` by criterion ``name``, or with ``units``, each unit layer's units
    (keyed by layer name) by unit criterion ``name``; the network's scores are taken under ``mask``.

    Each criterion reads what it needs: ``start`` and ``end`` weights (``ends``; when not given, the model's
    current weights are both, as pruning at initialisation sees them), ``model`` and ``examples`` (``model``),
    ``model`` and ``units`` (``units``); ``seed`` seeds the random criterion.
    """
    c = get(name, units=units is not None)
    if c.needs == "units":
        return {u.layer: c.fn(model, u, mask).float() for u in units}
    if c.needs == "model":
        if model is None or examples is None:
            raise TypeError(f"criterion {name} scores the network: pass model= and examples=")
        return c.fn(model, mask, examples)
    if start is None and end is None and model is not None:
        get(name, at_init=True)
        start = end = {n: p.detach() for n, p in model.named_parameters() if n in mask}
    if start is None or end is None:
        raise TypeError(f"criterion {name} scores weights: pass start= and end=, or model=")
    return c.fn(start, end, list(mask), seed)
