"""Linear mode connectivity: test error along the straight line between two networks of the same architecture.

Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis": train two copies of a network
from the same weights with different SGD noise and evaluate the error of ``(1 - alpha) * a + alpha * b``; the
*instability* is the largest error on the path minus the mean of the two end errors, and a network is *stable* when it
is under 2 points (:data:`STABLE`). Paul et al. (2023), "Unmasking the Lottery Ticket Hypothesis", measure the *error
barrier* against the straight line between the end errors instead (:func:`barrier`).

With BatchNorm the running statistics of an interpolated network describe neither end (Jordan et al. 2023, REPAIR),
so :func:`path_errors` re-estimates them at every point from training batches (:func:`reestimate_bn`). All errors
here are fractions in [0, 1], not percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ticketlab import data as D
from ticketlab.data import Dataset, Split
from ticketlab.errors import TicketlabError
from ticketlab.training.objectives import CLASSIFICATION, Objective, evaluate

State = dict[str, torch.Tensor]

STABLE = 0.02  # a network is stable when its instability is under 2 points of test error (Frankle et al. 2020)

_BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d and SyncBatchNorm share it


def interpolate(a: State, b: State, alpha: float) -> State:
    """The state ``(1 - alpha) * a + alpha * b``, entry by entry (a new dict of new tensors).

    Floating tensors are interpolated; integer buffers (BatchNorm's ``num_batches_tracked``) are taken from ``a``.
    At ``alpha == 0`` and ``alpha == 1`` the result is a copy of ``a`` / ``b`` bit for bit, every buffer included.
    Raises :class:`TicketlabError` when the two states differ in keys or in a tensor's shape.
    """
    if a.keys() != b.keys():
        diff = sorted(set(a) ^ set(b))
        raise TicketlabError(
            f"interpolate: the two states have different entries ({', '.join(diff[:5])}); "
            "give two states of the same architecture"
        )
    for name, t in a.items():
        if t.shape != b[name].shape:
            raise TicketlabError(
                f"interpolate: {name} has shape {tuple(t.shape)} in one state and "
                f"{tuple(b[name].shape)} in the other; give two states of the same architecture"
            )
    if alpha == 0:
        return {k: v.clone() for k, v in a.items()}
    if alpha == 1:
        return {k: v.clone() for k, v in b.items()}
    return {
        k: (1 - alpha) * v + alpha * b[k].to(v.device, v.dtype) if v.is_floating_point() else v.clone()
        for k, v in a.items()
    }


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds any BatchNorm layer (1d, 2d, 3d or synchronised)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


@torch.no_grad()
def reestimate_bn(model: nn.Module, split: Split, *, batch_size: int, batches: int, seed: int) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them from ``batches`` training batches.

    The statistics are the cumulative average (momentum None) of the per-batch mean and unbiased variance over the
    batches ``ticketlab.data.batches(split, batch_size, seed, 0, batches, augment=False)``, in train mode, without
    gradients. Only buffers change (parameters stay bit for bit); each layer's momentum and the model's mode are
    restored after. A model without BatchNorm is left as it is.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return
    if batches < 1:
        raise TicketlabError(f"reestimate_bn: batches is {batches}; give at least 1")
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for _, x, _ in D.batches(split, batch_size, seed, 0, batches, augment=False):
            model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def path_errors(
    model: nn.Module,
    a: State,
    b: State,
    data: Dataset,
    *,
    points: int = 30,
    bn_batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    objective: Objective | None = None,
) -> list[dict[str, float]]:
    """Test error and loss of ``model`` at ``points`` evenly spaced states on the line from ``a`` to ``b``.

    One row per ``alpha`` in ``linspace(0, 1, points)``: ``{"alpha", "test_error", "test_loss"}`` (error a fraction,
    loss the objective's mean on ``data.test``). At each point the model holds ``interpolate(a, b, alpha)``; with
    BatchNorm its statistics are re-estimated there (ends included, so every point is measured the same way) from
    ``bn_batches`` training batches of ``batch_size`` drawn with ``seed``. The model's own state is restored after.
    Raises :class:`TicketlabError` for fewer than 2 points or states that do not fit each other.
    """
    if points < 2:
        raise TicketlabError(f"path_errors: points is {points}; give at least 2 (the two ends)")
    objective = objective or data.objective or CLASSIFICATION
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    norm = has_batchnorm(model)
    rows = []
    try:
        for alpha in np.linspace(0.0, 1.0, points).tolist():
            model.load_state_dict(interpolate(a, b, alpha))
            if norm:
                reestimate_bn(model, data.train, batch_size=batch_size, batches=bn_batches, seed=seed)
            loss, acc = evaluate(model, data.test, objective)
            rows.append({"alpha": alpha, "test_error": 1.0 - acc, "test_loss": loss})
    finally:
        model.load_state_dict(saved)
    return rows


def instability(errors: Sequence[float]) -> float:
    """Largest error on the path minus the mean of the two end errors (Frankle et al. 2020); ``errors`` in path
    order, ends first and last. Raises :class:`TicketlabError` when empty."""
    if len(errors) == 0:
        raise TicketlabError("instability: no errors given; give the errors along the path, ends included")
    return float(max(errors) - (errors[0] + errors[-1]) / 2)


def barrier(errors: Sequence[float], alphas: Sequence[float]) -> float:
    """Error barrier (Paul et al. 2023): ``max_i(e_i - ((1 - a_i) e_0 + a_i e_1))``, the largest rise of the error
    above the straight line between the end errors ``e_0 = errors[0]`` and ``e_1 = errors[-1]``.
    Raises :class:`TicketlabError` when the lists are empty or of different lengths."""
    if len(errors) == 0 or len(errors) != len(alphas):
        raise TicketlabError(f"barrier: {len(errors)} errors and {len(alphas)} alphas; give one alpha per error")
    e0, e1 = errors[0], errors[-1]
    return float(max(e - ((1 - t) * e0 + t * e1) for e, t in zip(errors, alphas)))
