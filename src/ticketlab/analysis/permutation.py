"""Permutation alignment: Git Re-Basin weight matching (Ainsworth et al. 2023), REPAIR (Jordan et al. 2023).

Hidden units of a network can be reordered without changing its function, as long as everything that reads a
unit is reordered with it. A :class:`PermutationSpec` says which tensors share one permutation on which axis;
:func:`weight_matching` finds the permutations that bring network b's units onto network a's (so that the
straight line between a and the permuted b crosses a lower loss barrier); :func:`permute` and
:func:`permute_mask` apply them to a state and to a mask with the same index maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ticketlab import data as D
from ticketlab.analysis.connectivity import has_batchnorm, interpolate, reestimate_bn
from ticketlab.data import Dataset
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.models.resnet import ResNet
from ticketlab.problem import State
from ticketlab.prunable import param_name
from ticketlab.pruning.units import find_units

_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
_STATISTICS = ("running_mean", "running_var")  # buffers: permuted, but not matched (they are not weights)


@dataclass(frozen=True)
class Axis:
    """One axis of one tensor permuted by a group: its index ``j`` covers entries ``j*per ... (j+1)*per - 1``
    (``per`` > 1 where a layer reads a flattened conv output, ``per`` features per channel)."""

    name: str  # state_dict key
    axis: int
    per: int = 1


@dataclass(frozen=True)
class PermutationSpec:
    """Groups of axes that share one permutation: group name -> (size, axes)."""

    sizes: dict[str, int]
    groups: dict[str, tuple[Axis, ...]]

    def axes_of(self, name: str) -> list[tuple[str, Axis]]:
        """The (group, axis) pairs that permute tensor ``name``."""
        return [(g, a) for g, axes in self.groups.items() for a in axes if a.name == name]


def permutation_spec(model: nn.Module, input_shape: tuple[int, ...]) -> PermutationSpec:
    """Which (tensor, axis) pairs of ``model``'s state_dict share one permutation of hidden units.

    Every unit layer found by :func:`ticketlab.pruning.units.find_units` is a group named after the layer: its
    weight (axis 0) and bias, its BatchNorm's weight, bias and running statistics, and each consumer's weight on
    axis 1 (in blocks of ``per`` after a flatten). For ticketlab's own :class:`~ticketlab.models.resnet.ResNet`
    with BatchNorm (or no norm) the residual stream of each stage is one more group (``stage0`` ...): the stem conv
    and its norm, each block's second conv and norm, each projection shortcut, and what reads the stream (first
    convs, the next stage's shortcut, ``fc``). Any other architecture gets its unit layers only, so layers
    feeding residual adds, attention or concatenations stay in place (alignment is then partial, never wrong).
    Raises TicketlabError when the model cannot be traced (see ``find_units``).
    """
    state = model.state_dict()
    modules = dict(model.named_modules())
    sizes: dict[str, int] = {}
    groups: dict[str, tuple[Axis, ...]] = {}
    for u in find_units(model, tuple(input_shape)):
        axes = _outputs(u.layer, u.norm, state)
        axes += [Axis(param_name(c, "weight"), 1, per) for c, per in u.consumers]
        sizes[u.layer], groups[u.layer] = u.count, tuple(axes)
    if isinstance(model, ResNet) and all(isinstance(m, (nn.BatchNorm2d, nn.Identity)) for m in _norms(model)):
        _residual_groups(model, modules, state, sizes, groups)
    return PermutationSpec(sizes, groups)


def _outputs(layer: str, norm: str | None, state: dict) -> list[Axis]:
    """A layer's outputs: weight rows, bias, and its norm's per-channel tensors (those present)."""
    names = [param_name(layer, "weight"), param_name(layer, "bias")]
    if norm is not None:
        names += [param_name(norm, t) for t in _NORM_TENSORS]
    return [Axis(n, 0) for n in names if n in state]


def _norms(model: ResNet) -> list[nn.Module]:
    out = [model.bn]
    for block in model.blocks:
        out += [block.bn1, block.bn2] + ([block.shortcut[1]] if len(block.shortcut) else [])
    return out


def _residual_groups(model: ResNet, modules: dict, state: dict, sizes: dict, groups: dict) -> None:
    """The residual stream of each stage of a ticketlab ResNet (checked by the function-preservation test)."""
    stage, axes = 0, _outputs("conv", "bn", state)
    width = model.conv.out_channels
    for i, block in enumerate(model.blocks):
        b = f"blocks.{i}"
        if len(block.shortcut):  # a projection: the stream so far ends here, a new one begins
            axes += [Axis(f"{b}.conv1.weight", 1), Axis(f"{b}.shortcut.0.weight", 1)]
            sizes[f"stage{stage}"], groups[f"stage{stage}"] = width, tuple(axes)
            stage, width = stage + 1, block.conv2.out_channels
            axes = _outputs(f"{b}.shortcut.0", f"{b}.shortcut.1", state)
        else:
            axes.append(Axis(f"{b}.conv1.weight", 1))
        axes += _outputs(f"{b}.conv2", f"{b}.bn2", state)
    axes.append(Axis("fc.weight", 1))
    sizes[f"stage{stage}"], groups[f"stage{stage}"] = width, tuple(axes)


# ---- applying permutations -------------------------------------------------------------------------------------


def _index(perm: torch.Tensor, per: int) -> torch.Tensor:
    """Unit j -> entries j*per ... (j+1)*per - 1, in the order ``perm`` gives the units."""
    return (perm.reshape(-1, 1) * per + torch.arange(per, device=perm.device)).reshape(-1)


def _take(t: torch.Tensor, axis: Axis, perm: torch.Tensor) -> torch.Tensor:
    return t.index_select(axis.axis, _index(perm.to(t.device), axis.per))


def _apply(tensors: dict[str, torch.Tensor], perms: dict[str, torch.Tensor], spec: PermutationSpec, skip=()):
    out = dict(tensors)
    for g, axes in spec.groups.items():
        if g in skip or g not in perms:
            continue
        for a in axes:
            if a.name in out:
                out[a.name] = _take(out[a.name], a, perms[g])
    return out


def permute(state: State, perms: dict[str, torch.Tensor], spec: PermutationSpec) -> State:
    """``state`` with each group's units reordered: new unit i is old unit ``perms[group][i]``.

    A network loaded with the result computes the same function (eval mode) when ``spec`` came from
    :func:`permutation_spec` of that network. Groups missing from ``perms`` stay in place.
    """
    _check(perms, spec)
    return _apply(state, perms, spec)


def permute_mask(mask: Mask, perms: dict[str, torch.Tensor], spec: PermutationSpec) -> Mask:
    """``mask`` moved with its network: ``apply(permute(state), permute_mask(mask)) == permute(apply(state, mask))``."""
    _check(perms, spec)
    return _apply(mask, perms, spec)


def _check(perms: dict[str, torch.Tensor], spec: PermutationSpec) -> None:
    for g, p in perms.items():
        if g not in spec.sizes:
            raise TicketlabError(f"permutation for unknown group {g!r}; the spec has {sorted(spec.sizes)}")
        if sorted(p.tolist()) != list(range(spec.sizes[g])):
            raise TicketlabError(f"perms[{g!r}] is not a permutation of range({spec.sizes[g]})")


def identity(spec: PermutationSpec) -> dict[str, torch.Tensor]:
    """The permutations that change nothing."""
    return {g: torch.arange(n) for g, n in spec.sizes.items()}


# ---- weight matching -------------------------------------------------------------------------------------------


def _similarity(a: State, b: State, spec: PermutationSpec, perms: dict[str, torch.Tensor], group: str) -> np.ndarray:
    """S[i, j] = sum over the group's weight tensors of <a's unit i, b's unit j>, b's other axes permuted."""
    n = spec.sizes[group]
    sim = torch.zeros(n, n, dtype=torch.float64)
    for ax in spec.groups[group]:
        if ax.name.rsplit(".", 1)[-1] in _STATISTICS or not a[ax.name].is_floating_point():
            continue
        wb = b[ax.name]
        for g, other in spec.axes_of(ax.name):
            if g != group:
                wb = _take(wb, other, perms[g])
        wa = a[ax.name].detach().double().cpu().movedim(ax.axis, 0).reshape(n, -1)
        wb = wb.detach().double().cpu().movedim(ax.axis, 0).reshape(n, -1)
        sim += wa @ wb.T
    return sim.numpy()


def weight_matching(
    a: State, b: State, spec: PermutationSpec, *, max_iter: int = 100, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The permutations that make ``b`` match ``a``: ``permute(b, result, spec)`` is b's function with its units
    in a's order. Ainsworth et al. 2023, Algorithm 1: coordinate descent over the groups in a random order; each
    step solves one linear assignment (``scipy.optimize.linear_sum_assignment``) maximising the sum over the
    group's weight tensors of <W_a, P W_b>, the other groups' current permutations applied; it stops after a pass
    in which no group improved, or after ``max_iter`` passes. BatchNorm running statistics are permuted but not
    matched. Returns int64 index tensors (CPU), one per group."""
    missing = sorted({ax.name for axes in spec.groups.values() for ax in axes} - set(a) - set(b))
    if missing:
        raise TicketlabError(f"the states lack {missing[:3]} that the permutation spec names; build the spec from "
                             "the same model")  # fmt: skip
    perms = identity(spec)
    rng = np.random.default_rng(seed)
    names = sorted(spec.sizes)
    for _ in range(max_iter):
        improved = False
        for g in rng.permutation(names):
            sim = _similarity(a, b, spec, perms, g)
            old = sim[np.arange(len(sim)), perms[g].numpy()].sum()
            _, cols = linear_sum_assignment(sim, maximize=True)
            new = sim[np.arange(len(sim)), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g] = torch.as_tensor(cols, dtype=torch.int64)
                improved = True
        if not improved:
            break
    return perms


# ---- REPAIR ----------------------------------------------------------------------------------------------------


def _channel_stats(model: nn.Module, layers: list[str], xs: list[torch.Tensor]) -> dict[str, tuple]:
    """Per layer, the mean and std of each output channel (dim 1 of a conv, the last dim of a linear layer) over
    the batches ``xs``, in eval mode."""
    sums: dict[str, list] = {}

    def hook(name):
        def record(module, _inputs, out):
            channels = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d)) else -1  # a linear layer's units: last dim
            y = out.detach().double().movedim(channels, 0)
            y = y.reshape(y.shape[0], -1)
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += y.shape[1]
            s[1] = s[1] + y.sum(1)
            s[2] = s[2] + (y * y).sum(1)

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    try:
        model.eval()
        for x in xs:
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[name] = mean, (s2 / n - mean * mean).clamp_min(0).sqrt()
    return out


@torch.no_grad()
def repair(
    model: nn.Module,
    a: State,
    b: State,
    alpha: float,
    data: Dataset,
    *,
    batches: int = 5,
    batch_size: int = 128,
    seed: int = 0,
) -> State:
    """The state ``(1 - alpha) a + alpha b`` with REPAIR (Jordan et al. 2023): each unit layer's outputs (found by
    ``find_units``; layers in graph order, earlier layers first) rescaled and shifted so that each unit's mean and
    std over ``batches`` training batches equal ``(1 - alpha)`` times a's plus ``alpha`` times b's; the correction
    is folded into the layer's weight rows and bias. Unit layers followed by BatchNorm, layers without a bias and
    layers outside units (residual streams) are left to BatchNorm re-estimation, which is REPAIR's "reset" for
    BatchNorm networks; with BatchNorm anywhere, statistics are re-estimated before each measurement. ``model``
    (its architecture) is restored after. Give b already permuted onto a."""
    units = [u for u in find_units(model, tuple(data.input_shape)) if u.norm is None]
    layers = [u.layer for u in units if getattr(model.get_submodule(u.layer), "bias", None) is not None]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    a, b = ({k: v.detach().clone() for k, v in s.items()} for s in (a, b))  # they may be the model's own tensors
    was_training = model.training
    xs = [x for _, x, _ in D.batches(data.train, batch_size, seed, 0, batches, augment=False)]

    def measure(state: State, names: list[str]) -> dict[str, tuple]:
        model.load_state_dict(state)
        if has_batchnorm(model):
            reestimate_bn(model, data.train, batch_size=batch_size, batches=batches, seed=seed)
        return _channel_stats(model, names, xs)

    try:
        ends = [measure(s, layers) for s in (a, b)]
        state = interpolate(a, b, alpha)
        for layer in layers:
            mean, std = measure(state, [layer])[layer]
            target_mean = (1 - alpha) * ends[0][layer][0] + alpha * ends[1][layer][0]
            target_std = (1 - alpha) * ends[0][layer][1] + alpha * ends[1][layer][1]
            scale = target_std / (std + 1e-8)
            shift = target_mean - scale * mean
            w, bias = param_name(layer, "weight"), param_name(layer, "bias")
            state[w] = state[w] * scale.to(state[w]).reshape(-1, *[1] * (state[w].dim() - 1))
            state[bias] = state[bias] * scale.to(state[bias]) + shift.to(state[bias])
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return state
