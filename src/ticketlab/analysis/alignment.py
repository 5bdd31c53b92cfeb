"""What tickets share: sign preservation, mask overlap, gradient and trajectory alignment (LITERATURE.md section 9).

Pure functions on weights (``State``: name -> tensor) and masks (:data:`ticketlab.masks.Mask`), plus two that
measure gradients of a model on the training batches it would see (:func:`mean_abs_gradients`,
:func:`gradient_at`). Every measure is a share in [0, 1]:

- sign preservation rho (Zhou et al. 2019): the share of kept, nonzero-at-start weights whose final sign is the
  start sign;
- Jaccard index |a & b| / |a | b| of two masks, overall and per layer;
- gradient alignment: the Jaccard index of the mask with the early gradient support (the same number of weights,
  the largest mean |grad| over the first iterations);
- trajectory alignment: ||g * m||^2 / ||g||^2, the share of the gradient's energy at the rewind point inside the mask.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.config import TrainConfig
from ticketlab.data import Dataset, batches
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.seeds import derive_seed
from ticketlab.training.objectives import CLASSIFICATION

State = dict[str, torch.Tensor]

__all__ = [
    "gradient_alignment",
    "gradient_at",
    "gradient_support",
    "jaccard",
    "jaccard_per_layer",
    "mean_abs_gradients",
    "sign_preservation",
    "trajectory_alignment",
    "trajectory_alignment_per_layer",
]


def _same_tensors(a: dict, b: dict, what: str) -> None:
    missing = sorted(set(a) - set(b))
    if missing:
        raise TicketlabError(f"{what}: {missing} are missing from the second one; compare masks of the same model")


def sign_preservation(start: State, final: State, mask: Mask | None = None) -> float:
    """rho (Zhou et al. 2019): of the weights kept by ``mask`` (True) and nonzero in ``start``, the share whose sign
    in ``final`` equals the sign in ``start`` (a weight that ends at exactly 0 has lost its sign). Over the mask's
    tensors; ``mask=None``: every weight of every tensor of ``start``. nan when no weight is counted."""
    names = list(start) if mask is None else list(mask)
    _same_tensors(dict.fromkeys(names), start, "sign_preservation: the mask names tensors the start weights lack")
    _same_tensors(dict.fromkeys(names), final, "sign_preservation: the start names tensors the final weights lack")
    same = total = 0
    for n in names:
        s = start[n]
        f = final[n].to(s.device)
        counted = s != 0
        if mask is not None:
            counted &= mask[n].to(s.device, torch.bool)
        total += int(counted.sum())
        same += int((counted & (torch.sign(f) == torch.sign(s))).sum())
    return same / total if total else math.nan


def jaccard_per_layer(a: Mask, b: Mask) -> dict[str, float]:
    """|a & b| / |a | b| per tensor of ``a`` (1.0 where both keep nothing); TicketlabError when ``b`` lacks one."""
    _same_tensors(a, b, "jaccard: the first mask's tensors")
    out = {}
    for n, m in a.items():
        x, y = m.bool(), b[n].to(m.device).bool()
        union = int((x | y).sum())
        out[n] = int((x & y).sum()) / union if union else 1.0
    return out


def jaccard(a: Mask, b: Mask) -> float:
    """|a & b| / |a | b| over all of ``a``'s tensors together (1.0 when both keep nothing)."""
    _same_tensors(a, b, "jaccard: the first mask's tensors")
    inter = sum(int((m.bool() & b[n].to(m.device).bool()).sum()) for n, m in a.items())
    union = sum(int((m.bool() | b[n].to(m.device).bool()).sum()) for n, m in a.items())
    return inter / union if union else 1.0


def gradient_support(grads: State, count: int) -> Mask:
    """The ``count`` weights with the largest values of ``grads`` (mean |grad| per weight), globally over its
    tensors: a mask shaped like ``grads``. Ties go to the weight that comes first (tensors in ``grads``'s order,
    then row-major), so the support is deterministic. TicketlabError unless 0 <= count <= the number of weights."""
    sizes = [g.numel() for g in grads.values()]
    if not 0 <= count <= sum(sizes):
        raise TicketlabError(f"gradient_support: count {count} must be between 0 and {sum(sizes)} (the weights given)")
    if not grads:
        return {}
    device = next(iter(grads.values())).device
    flat = torch.cat([g.detach().reshape(-1).to(device, torch.float64) for g in grads.values()])
    order = torch.argsort(-flat, stable=True)  # stable: equal values keep their order
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order[:count]] = True
    parts = torch.split(chosen, sizes)
    return {n: p.reshape(g.shape) for (n, g), p in zip(grads.items(), parts)}


def gradient_alignment(mean_abs_grad: State, mask: Mask) -> float:
    """Jaccard index of ``mask`` with the gradient support of the same size (:func:`gradient_support` over the
    mask's tensors, keeping as many weights as the mask keeps)."""
    _same_tensors(mask, mean_abs_grad, "gradient_alignment: the mask's tensors")
    support = gradient_support({n: mean_abs_grad[n] for n in mask}, M.count(mask))
    return jaccard(mask, support)


def trajectory_alignment_per_layer(grad: State, mask: Mask) -> dict[str, float]:
    """||g * m||^2 / ||g||^2 per tensor of ``mask`` (nan where the gradient is zero)."""
    _same_tensors(mask, grad, "trajectory_alignment: the mask's tensors")
    out = {}
    for n, m in mask.items():
        g = grad[n].detach().to(torch.float64)
        energy = float((g * g).sum())
        inside = float((g * g * m.to(g.device, torch.float64)).sum())
        out[n] = inside / energy if energy else math.nan
    return out


def trajectory_alignment(grad: State, mask: Mask) -> float:
    """||g * m||^2 / ||g||^2 over all of ``mask``'s tensors: the share of the gradient's energy (the gradient at the
    rewind point, say) on the weights the mask keeps. 1 for a full mask; nan when the gradient is zero."""
    _same_tensors(mask, grad, "trajectory_alignment: the mask's tensors")
    energy = inside = 0.0
    for n, m in mask.items():
        g = grad[n].detach().to(torch.float64)
        energy += float((g * g).sum())
        inside += float((g * g * m.to(g.device, torch.float64)).sum())
    return inside / energy if energy else math.nan


def _gradients(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    mask: Mask,
    data_seed: int,
    start: int,
    iterations: int,
    absolute: bool,
) -> State:
    """Mean gradient (or mean |gradient|) of the loss over the training batches ``start <= it < start +
    iterations``, at the model's weights (masked), for the mask's tensors; pruned weights' gradients are 0."""
    if iterations < 1:
        raise TicketlabError(f"iterations must be at least 1 (got {iterations}); use e.g. --grad-iterations 20")
    M.check_mask(model, mask)
    net = M.apply_mask(copy.deepcopy(model), mask).train()  # as training sees it (BatchNorm on batch statistics)
    params = dict(net.named_parameters())
    chosen = [params[n] for n in mask]
    keep = [mask[n].to(p.device, p.dtype) for n, p in zip(mask, chosen)]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in chosen]
    objective = data.objective or CLASSIFICATION
    device = data.train.x.device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout draws seeded per batch; the caller's RNG left as it was
        for it, x, y in batches(data.train, cfg.batch_size, data_seed, start, start + iterations, augment=data.augment):
            torch.manual_seed(derive_seed(data_seed, it, "analysis"))
            loss = objective.loss(net(x), y)
            grads = torch.autograd.grad(loss, chosen, allow_unused=True)
            for acc, g, m in zip(total, grads, keep):
                if g is not None:
                    g = (g * m).to(torch.float64)
                    acc += g.abs() if absolute else g
    return {n: (acc / iterations).to(p.dtype) for n, acc, p in zip(mask, total, chosen)}


def mean_abs_gradients(
    model: nn.Module, data: Dataset, cfg: TrainConfig, *, mask: Mask, data_seed: int, start: int, iterations: int
) -> State:
    """Mean |grad| of the loss per weight of the mask's tensors, over the ``iterations`` training batches from
    iteration ``start`` (the batches training with ``data_seed`` and ``cfg.batch_size`` sees there, via
    :func:`ticketlab.data.batches`), all at the model's current weights with the mask applied: no optimizer
    step, the model itself untouched (a copy in train mode). Pruned weights get 0. Shapes as the parameters."""
    return _gradients(model, data, cfg, mask, data_seed, start, iterations, absolute=True)


def gradient_at(
    model: nn.Module, data: Dataset, cfg: TrainConfig, *, mask: Mask, data_seed: int, start: int, iterations: int = 5
) -> State:
    """The mean (signed) gradient of the loss per weight of the mask's tensors over ``iterations`` training batches
    from iteration ``start``, at the model's current weights (as :func:`mean_abs_gradients`): the gradient at a
    point such as the rewind point theta_k, averaged over a few batches to tame the minibatch noise."""
    return _gradients(model, data, cfg, mask, data_seed, start, iterations, absolute=False)
