"""Strong lottery tickets (LITERATURE.md section 8): a mask learned over frozen random weights, no weight trained.

:class:`Supermask` wraps any ``nn.Module``: every weight stays at theta_0 (frozen, bit for bit), and each prunable
weight gets a learned score. The forward pass calls the wrapped network through
``torch.func.functional_call`` with the masked weights, so the network's own ``forward`` is never edited.

- ``zhou`` (Zhou et al. 2019, "Deconstructing lottery tickets"): sigmoid(score) is each weight's keep
  probability; every training step samples a Bernoulli mask, and the gradient passes straight through the sample
  to the probability. Evaluated with a sampled mask (one fixed draw) or the expected one (weights times their
  probabilities). Optional dynamic weight rescaling: each layer's kept weights times (its size / kept count).
- ``edge-popup`` (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural network?"): each layer keeps
  exactly the fraction k of its weights with the highest |score|; the gradient of the mask passes straight
  through to every score (``pruning.topk.straight_through_topk``). The weights may be the signed constant
  sign(w) * sqrt(2 / fan_in) / sqrt(k) (:func:`ticketlab.models.signed_constant`).
- ``biprop`` (Diffenderfer & Kailkhura 2021, multi-prize tickets): edge-popup over binarised weights,
  sign(w) * alpha with one gain alpha per layer, the mean |w| of the kept weights; optionally binary activations
  (every prunable layer but the first reads sign(input), the gradient passing straight through where |input| <= 1).

Biases and normalisation parameters stay frozen at theta_0 too (the papers' setting); BatchNorm statistics are
still updated by training-mode forward passes, as in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ticketlab import masks as M
from ticketlab.config import TrainConfig
from ticketlab.data import Dataset, Split
from ticketlab.errors import TicketlabError
from ticketlab.models import signed_constant
from ticketlab.prunable import first_layer_name, prunable_names
from ticketlab.pruning.topk import random_mask, straight_through_topk
from ticketlab.training import Observer, TrainResult, train
from ticketlab.training.objectives import CLASSIFICATION, Objective, evaluate

METHODS = ("zhou", "edge-popup", "biprop")
EVALUATIONS = ("sampled", "expected")
WEIGHTS = ("init", "signed-constant")


def kept_count(numel: int, k: float) -> int:
    """Weights a layer of ``numel`` keeps at fraction ``k`` (edge-popup's top-k%): round(k * numel), at least 1."""
    return max(1, min(numel, round(k * numel)))


class _BinaryActivation(torch.autograd.Function):
    """sign(x) forward; the gradient passes straight through where |x| <= 1 (the hard-tanh estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def binary_activation(x: torch.Tensor) -> torch.Tensor:
    """sign(x), with the straight-through (hard-tanh) gradient: d/dx = 1 where |x| <= 1, else 0."""
    return _BinaryActivation.apply(x)


def _binarise_first_arg(_module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the module's first input binarised, if it is a floating-point tensor."""
    if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
        return (binary_activation(args[0]), *args[1:])
    return args


class Supermask(nn.Module):
    """``model`` with its weights frozen and a learned mask over ``names`` (its prunable weights).

    ``method``: "zhou", "edge-popup" or "biprop". ``k``: edge-popup and biprop keep exactly round(k * size) weights
    of each layer; zhou starts every keep probability at k. ``rescale``: zhou's dynamic weight rescaling.
    ``binary_activations`` (biprop): the inputs of every prunable layer but ``first`` (the first layer's weight
    name) are binarised. ``seed``: the scores' initialisation and zhou's evaluation draw. The only parameters are
    the scores (``scores``, one per name, the weight's shape); the wrapped network's tensors have
    ``requires_grad`` off. Raises TicketlabError for an unknown method, k outside (0, 1], no names, a repeated name
    or a name that is not a floating-point parameter of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        method: str,
        *,
        k: float = 0.5,
        rescale: bool = False,
        binary_activations: bool = False,
        first: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if method not in METHODS:
            raise TicketlabError(f"--method {method!r}: use one of {', '.join(METHODS)}")
        if not (isinstance(k, (int, float)) and 0.0 < k <= 1.0):
            raise TicketlabError(f"--k {k}: give the fraction of weights kept, in (0, 1], e.g. 0.5")
        if rescale and method != "zhou":
            raise TicketlabError("--rescale is zhou's dynamic weight rescaling; drop it for edge-popup and biprop")
        if binary_activations and method != "biprop":
            raise TicketlabError("--binary-activations is a biprop option; use --method biprop")
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params or not params[n].is_floating_point()]
        if not names:
            raise TicketlabError("supermask: the model has no prunable weights (linear, conv, recurrent, attention)")
        if missing:
            raise TicketlabError(f"supermask: {missing} are not float parameters of the model; give prunable weights")
        if len(set(names)) < len(names):
            raise TicketlabError(f"supermask: names {list(names)} repeat a weight; give each once")
        self.net = model
        for p in model.parameters():
            p.requires_grad_(False)
        self.names, self.method, self.k, self.rescale = list(names), method, float(k), rescale
        self.binary_activations, self.first, self.seed = binary_activations, first, seed
        self.evaluation = "sampled"  # zhou, in eval mode: "sampled" (one fixed draw) or "expected"
        self.fixed: M.Mask | None = None  # a mask used instead of the scores' (see :meth:`using`)
        g = torch.Generator().manual_seed(seed)
        self.scores = nn.ParameterList(
            [nn.Parameter(self._initial_scores(params[n], g).to(params[n].device)) for n in self.names]
        )

    def _initial_scores(self, w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """zhou: logit(k) everywhere (each weight kept with probability k); edge-popup and biprop: Kaiming uniform
        with a = sqrt(5), PyTorch's Linear default, as Ramanujan et al.'s code initialises its scores."""
        if self.method == "zhou":
            k = min(self.k, 1 - 1e-6)
            return torch.full(w.shape, math.log(k / (1 - k)), dtype=w.dtype)
        s = torch.empty(w.shape, dtype=w.dtype)
        if s.dim() < 2:  # a 1-d prunable tensor (a bias): uniform with the same fan-in rule as its layer's default
            return s.uniform_(-1.0, 1.0, generator=g)
        return nn.init.kaiming_uniform_(s, a=math.sqrt(5), generator=g)

    # ------------------------------------------------------------------------------------------ the masks

    def _frozen(self) -> dict[str, torch.Tensor]:
        params = dict(self.net.named_parameters())
        return {n: params[n] for n in self.names}

    def _soft_masks(self) -> list[torch.Tensor]:
        """The mask each layer multiplies its weights by this pass (floats, differentiable in the scores)."""
        if self.fixed is not None:
            return [self.fixed[n].to(s.dtype) for n, s in zip(self.names, self.scores)]
        if self.method != "zhou":
            return [straight_through_topk(s.abs(), kept_count(s.numel(), self.k)) for s in self.scores]
        probs = [torch.sigmoid(s) for s in self.scores]
        if self.training:  # one Bernoulli draw per step; the gradient passes straight through the sample
            return [p + (torch.bernoulli(p.detach()) - p).detach() for p in probs]
        if self.evaluation == "expected":
            return probs
        g = torch.Generator(device=probs[0].device).manual_seed(self.seed + 1)  # the same draw at every evaluation
        return [torch.bernoulli(p.detach(), generator=g) for p in probs]

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """What the network computes with, by name: the masked (rescaled, binarised) frozen weights."""
        out = {}
        for name, w, m in zip(self.names, self._frozen().values(), self._soft_masks()):
            if self.method == "biprop":
                kept = m.sum().clamp_min(1.0)
                alpha = (w.abs() * m).sum() / kept  # the per-layer gain: mean |w| of the kept weights
                out[name] = torch.sign(w) * alpha * m
            elif self.rescale:
                out[name] = w * m * (m.numel() / m.detach().sum().clamp_min(1.0))
            else:
                out[name] = w * m
        return out

    def mask(self) -> M.Mask:
        """The current subnetwork as a boolean mask by name: edge-popup and biprop's top-k; zhou's fixed evaluation
        draw (sigmoid(score) > 0.5 is not what it evaluates)."""
        with torch.no_grad():
            if self.method != "zhou":
                return {
                    n: straight_through_topk(s.abs(), kept_count(s.numel(), self.k)).bool()
                    for n, s in zip(self.names, self.scores)
                }
            mode, was = self.evaluation, self.training
            self.evaluation, self.training = "sampled", False
            try:
                return {n: m.bool() for n, m in zip(self.names, self._soft_masks())}
            finally:
                self.evaluation, self.training = mode, was

    @contextmanager
    def using(self, mask: M.Mask) -> Iterator[Supermask]:
        """While inside, the network computes with ``mask`` (e.g. a random one) instead of the scores' mask, on the
        same frozen weights and with the same rescaling or binarisation."""
        self.fixed = mask
        try:
            yield self
        finally:
            self.fixed = None

    def binarised(self) -> dict[str, torch.Tensor]:
        """biprop's binarised weights sign(w) * alpha, by name (two values per layer), at the current mask."""
        with torch.no_grad():
            mask = self.mask()
            out = {}
            for n, w in self._frozen().items():
                alpha = (w.abs() * mask[n]).sum() / mask[n].sum().clamp_min(1)
                out[n] = torch.sign(w) * alpha
            return out

    # ------------------------------------------------------------------------------------------ forward

    @contextmanager
    def _binary_inputs(self) -> Iterator[None]:
        """While inside, every prunable layer but the first reads sign(its input) (straight-through gradient)."""
        if not self.binary_activations:
            yield
            return
        modules = dict(self.net.named_modules())
        # the first layer's module reads the real input even when it owns other masked tensors (its bias, an LSTM's
        # weight_hh); integer inputs (an embedding's token ids) are not activations and pass as they are
        first = self.first.rpartition(".")[0] if self.first is not None else None
        owners = {n.rpartition(".")[0] for n in self.names} - {first}
        handles = [modules[o].register_forward_pre_hook(_binarise_first_arg) for o in sorted(owners)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._binary_inputs():
            return functional_call(self.net, self.effective_weights(), args, kwargs, strict=False)


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of ``model``'s parameters (the weights a supermask must leave bit for bit as they were)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def check_frozen(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """AssertionError when any parameter of ``model`` differs from ``before`` in a single bit."""
    for n, p in model.named_parameters():
        if not torch.equal(p.detach(), before[n]):
            raise AssertionError(f"supermask training changed the frozen weight {n}")


def expected_accuracy(sm: Supermask, split: Split, objective: Objective = CLASSIFICATION) -> float | None:
    """zhou: the accuracy on ``split`` with the expected mask (each weight times its keep probability); None for
    the other methods, whose mask is deterministic."""
    if sm.method != "zhou":
        return None
    mode, sm.evaluation = sm.evaluation, "expected"
    try:
        return evaluate(sm, split, objective)[1]
    finally:
        sm.evaluation = mode


def random_like(mask: M.Mask, seed: int) -> M.Mask:
    """A random mask keeping as many weights as ``mask`` in each layer (the same per-layer density)."""
    return random_mask(mask, seed, [(n,) for n in mask])


@dataclass
class SupermaskResult:
    """What :func:`learn_supermask` found: the wrapped network (scores trained, weights frozen), its training
    record, the learned mask and its density, and the test accuracy with the learned mask (zhou: one fixed sampled
    draw; ``test_acc_expected`` with the expected mask, None for the other methods) and with a random mask of the
    same per-layer density on the same weights (``random_test_acc``)."""

    supermask: Supermask
    result: TrainResult
    mask: M.Mask
    density: float
    test_acc: float
    test_acc_expected: float | None
    random_test_acc: float


def learn_supermask(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    method: str,
    k: float = 0.5,
    names: list[str] | None = None,
    weights: str = "init",
    rescale: bool = False,
    binary_activations: bool = False,
    seed: int = 0,
    data_seed: int = 0,
    observers: list[Observer] | tuple[Observer, ...] = (),
    objective: Objective | None = None,
) -> SupermaskResult:
    """Learn a supermask over ``model``'s current weights (theta_0) on ``data`` with the training config ``cfg``
    (optimizer, LR, schedule and length apply to the scores), and evaluate it beside a random mask.

    ``names``: the weights to mask (default: every prunable weight, :func:`ticketlab.prunable.prunable_names`).
    ``weights``: "init" keeps ``model``'s weights; "signed-constant" first replaces them in place by
    sign(w) * sqrt(2 / fan_in) / sqrt(k) (:func:`ticketlab.models.signed_constant`). The weights are then frozen:
    AssertionError if training changed any bit of them. ``seed``: scores and evaluation draw; ``data_seed``: data
    order. Raises TicketlabError for bad options (see :class:`Supermask`).
    """
    if weights not in WEIGHTS:
        raise TicketlabError(f"--weights {weights!r}: use one of {', '.join(WEIGHTS)}")
    names = prunable_names(model) if names is None else list(names)
    example = data.train.inputs(slice(0, 1))
    first = first_layer_name(model, example, names) if binary_activations and names else None
    sm = Supermask(  # validates the options before any weight is replaced
        model, names, method, k=k, rescale=rescale, binary_activations=binary_activations, first=first, seed=seed
    )
    if weights == "signed-constant":
        signed_constant(model, names, k)
    before = frozen_state(model)
    objective = objective or data.objective or CLASSIFICATION
    result = train(sm, data, cfg, mask={}, data_seed=data_seed, observers=observers, objective=objective, kernels="off")
    check_frozen(model, before)
    mask = sm.mask()
    expected = expected_accuracy(sm, data.test, objective)
    with sm.using(random_like(mask, seed + 2)):
        random_acc = evaluate(sm, data.test, objective)[1]
    return SupermaskResult(sm, result, mask, M.density(mask), result.final_test_acc, expected, random_acc)
