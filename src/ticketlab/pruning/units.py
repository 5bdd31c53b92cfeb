"""Structured pruning: whole neurons of linear layers and whole filters of conv layers, as units.

A *unit* is one output of a Linear/Conv layer (a row of its weight, a filter). Removing it is only exact when
everything that reads it sees a zero and nothing else mixes it with other units, so ``find_units`` traces the
model with torch.fx and follows each layer's output through ops that keep channels apart and map 0 to 0
(ReLU, dropout, BatchNorm with gamma = beta = 0, pooling, channel-major flatten, spatial means) to the
Linear/Conv layers that consume it. Layers whose output reaches anything else (a residual add, a concat, the
network output, a sigmoid, which maps 0 to 0.5) are not unit layers. Pruning a unit zeroes its weights, bias
and BatchNorm affine parameters in the mask, so it composes with unstructured masks;
:func:`ticketlab.export.export` then builds a physically smaller copy of the model that computes the same function.
Units are scored by the unit criteria of :mod:`ticketlab.scores`.
"""

from __future__ import annotations

import builtins
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.prunable import BATCH_NORMS, UNIT_LAYERS, UNIT_NORMS, param_name

# Ops a unit's output may pass through: they act on each channel alone and map 0 to 0, so a pruned unit stays 0.
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Hardtanh,
    nn.Hardswish, nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.relu_, torch.tanh, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
    F.silu, F.mish, F.tanh, F.hardtanh, F.hardswish, F.softsign, F.dropout, F.dropout1d, F.dropout2d,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "tanh_", "contiguous", "clone"}
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_REDUCTIONS = {"mean", "sum", "amax"}  # over dims other than the units' (global pooling); 0 stays 0
_REDUCTION_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_RESHAPES = {"view", "reshape", "flatten"}


@dataclass(frozen=True)
class Unit:
    """A layer whose outputs can be pruned one by one, and the layers that read them."""

    layer: str  # module name of the Linear/Conv layer whose outputs are the units
    count: int  # its out features / out channels
    norm: str | None  # module name of the BatchNorm applied to its output, if any
    consumers: tuple[tuple[str, int], ...]  # (module name, input features per unit) of each layer reading it


# ---- finding units -------------------------------------------------------------------------------------------


def _traced(model: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """An eval-mode copy of the model traced by torch.fx, every node annotated with its output shape."""
    copied = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(copied)
    except Exception as e:
        raise TicketlabError(
            f"structured pruning needs a model that torch.fx can trace, and {type(model).__name__} cannot be "
            f"({type(e).__name__}: {e}). Unstructured pruning still works; for structured pruning, avoid "
            "data-dependent Python control flow in forward"
        ) from e
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input(model, 1, input_shape))
    except Exception as e:
        raise TicketlabError(f"the model does not run on examples of shape {tuple(input_shape)}: {e}") from e
    return gm


def example_input(model: nn.Module, batch: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of shape (batch, *input_shape) on the model's device, in its floating point type."""
    param = next(model.parameters(), None)
    example = torch.zeros(batch, *input_shape, device=param.device if param is not None else None)
    return example.to(param.dtype) if param is not None and param.is_floating_point() else example


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape``, ``len(x)``: they read the shape, not the values."""
    return (
        (node.op == "call_method" and node.target in ("size", "dim"))
        or (node.op == "call_function" and node.target is builtins.len)
        or (node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"))
    )


def _only_input(user: fx.Node, src: fx.Node) -> bool:
    """``src`` is the one tensor ``user`` reads, as its first argument (other inputs may be sizes)."""
    others = [n for n in user.all_input_nodes if n is not src]
    return (
        bool(user.args)
        and user.args[0] is src
        and list(user.all_input_nodes).count(src) == 1
        and all(_shape(n) is None for n in others)
    )


def _reshaped(before: tuple[int, ...], after: tuple[int, ...], axis: int, per: int) -> tuple[int, int] | None:
    """Units at ``axis`` still separable after a row-major reshape: unchanged, or the units' dim merged with
    the dims after it (a channel-major flatten: unit j owns a contiguous block of features)."""
    if after == before:
        return axis, per
    for end in range(axis + 1, len(before)):
        if after == before[:axis] + (math.prod(before[axis : end + 1]),) + before[end + 1 :]:
            return axis, per * math.prod(before[axis + 1 : end + 1])
    return None


def _reduced(user: fx.Node, ndim: int, axis: int, per: int) -> tuple[int, int] | None:
    """``x.mean((2, 3))`` and the like: fine when they reduce other dims than the units'."""
    dims = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim")
    keepdim = user.args[2] if len(user.args) > 2 else user.kwargs.get("keepdim", False)
    if dims is None or isinstance(keepdim, fx.Node):
        return None
    dims = dims if isinstance(dims, (tuple, list)) else [dims]
    if not dims or not all(isinstance(d, int) for d in dims):
        return None  # () reduces every dim
    dims = {d % ndim for d in dims}
    if axis in dims:
        return None
    return (axis, per) if keepdim else (axis - sum(d < axis for d in dims), per)


def _through(user: fx.Node, src: fx.Node, axis: int, per: int, modules: dict) -> tuple[int, int] | None:
    """Where the units lie in ``user``'s output, given they lie at ``axis`` (``per`` features each) in ``src``;
    None when ``user`` mixes them, maps 0 elsewhere, or is not known."""
    before, after = _shape(src), _shape(user)
    if after is None or not _only_input(user, src):
        return None
    mod = modules.get(user.target) if user.op == "call_module" else None
    fn = user.target if user.op == "call_function" else None
    method = user.target if user.op == "call_method" else None
    if isinstance(mod, _ELEMENTWISE_MODULES) or fn in _ELEMENTWISE_FUNCTIONS or method in _ELEMENTWISE_METHODS:
        return (axis, per) if after == before else None
    if isinstance(mod, _POOL_MODULES) or fn in _POOL_FUNCTIONS:
        ok = axis == 1 and per == 1 and len(after) == len(before) >= 3 and after[:2] == before[:2]
        return (1, 1) if ok else None
    if method in _REDUCTIONS or fn in _REDUCTION_FUNCTIONS:
        return _reduced(user, len(before), axis, per)
    if isinstance(mod, nn.Flatten) or method in _RESHAPES or fn in (torch.flatten, torch.reshape):
        return _reshaped(before, after, axis, per)
    return None


def _consumer(mod: nn.Module, shape: tuple[int, ...], axis: int, per: int, count: int) -> bool:
    """A Linear reading the units on its last dim, or an ungrouped conv reading them as its input channels."""
    if type(mod) is nn.Linear:
        return axis == len(shape) - 1 and mod.in_features == count * per
    if type(mod) in (nn.Conv1d, nn.Conv2d):
        dims = 3 if type(mod) is nn.Conv1d else 4
        return mod.groups == 1 and axis == 1 and per == 1 and len(shape) == dims and mod.in_channels == count
    return False


def _follow(node: fx.Node, count: int, modules: dict, calls: dict[str, int]) -> Unit | None:
    """Walk every path from a layer's output to the layers consuming it; None if any path goes elsewhere."""
    norm, consumers = None, {}
    todo = [(node, 1 if isinstance(modules[node.target], (nn.Conv1d, nn.Conv2d)) else len(_shape(node)) - 1, 1)]
    while todo:
        src, axis, per = todo.pop()
        for user in src.users:
            if _is_shape_query(user):
                continue
            mod = modules.get(user.target) if user.op == "call_module" else None
            if type(mod) in UNIT_LAYERS + UNIT_NORMS and calls[user.target] > 1:
                return None  # a layer called twice: slicing it would break its other call
            if mod is not None and _only_input(user, src) and _consumer(mod, _shape(src), axis, per, count):
                consumers[user.target] = per
                continue
            if type(mod) in UNIT_NORMS and norm is None and axis == 1 and per == 1 and mod.num_features == count:
                if _shape(user) == _shape(src) and _only_input(user, src):
                    norm = user.target
                    todo.append((user, axis, per))
                    continue
            step = _through(user, src, axis, per, modules)
            if step is None:
                return None
            todo.append((user, *step))
    if not consumers:
        return None
    return Unit(node.target, count, norm, tuple(consumers.items()))


def find_units(model: nn.Module, input_shape: tuple[int, ...]) -> list[Unit]:
    """The layers whose outputs can be pruned one by one (in graph order), with their BatchNorm and consumers.

    The output layer is never one (its outputs reach the graph output), nor is a layer feeding a residual add.
    Traces an eval-mode copy with torch.fx on zeros of shape (1, *input_shape); the model is left untouched.
    """
    gm = _traced(model, tuple(input_shape))
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    units = []
    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if type(mod) not in UNIT_LAYERS or calls[node.target] > 1 or getattr(mod, "groups", 1) != 1:
            continue
        if _shape(node) is None:
            continue
        count = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        unit = _follow(node, count, modules, calls)
        if unit is not None:
            units.append(unit)
    return units


# ---- masks over units ----------------------------------------------------------------------------------------


def unit_params(units: list[Unit], model: nn.Module) -> dict[str, list[str]]:
    """Per unit layer, the parameters a unit owns: weight, bias, and the affine BatchNorm parameters.

    Zeroing all of them makes the unit's output exactly 0 (BatchNorm in eval mode outputs beta = 0 for gamma = 0).
    """
    modules = dict(model.named_modules())
    out = {}
    for u in units:
        names = [param_name(u.layer, "weight")]
        if modules[u.layer].bias is not None:
            names.append(param_name(u.layer, "bias"))
        if u.norm is not None and modules[u.norm].affine:
            names += [param_name(u.norm, "weight"), param_name(u.norm, "bias")]
        out[u.layer] = names
    return out


def masked_param(model: nn.Module, mask: Mask, name: str) -> torch.Tensor:
    """A detached copy of parameter ``name`` with ``mask`` applied (as it is, if the mask omits it)."""
    p = dict(model.named_parameters())[name].detach()
    return p * mask[name].to(p.device, p.dtype) if name in mask else p


def alive_units(units: list[Unit], mask: Mask) -> dict[str, torch.Tensor]:
    """Per unit layer, which units are alive: those with at least one weight kept (all, if the mask omits it)."""
    out = {}
    for u in units:
        m = mask.get(param_name(u.layer, "weight"))
        out[u.layer] = torch.ones(u.count, dtype=torch.bool) if m is None else m.reshape(u.count, -1).any(1)
    return out


def expand(units: list[Unit], alive: dict[str, torch.Tensor], model: nn.Module, mask: Mask) -> Mask:
    """``mask`` with every dead unit's parameters pruned (weights, bias, BatchNorm scale and shift), and the
    weights that read it (its consumers' input columns), which would only ever multiply a zero.

    Entries for a unit's companions are added where missing; existing entries are AND-ed, so structured masks
    compose with unstructured ones and nothing pruned is ever revived.
    """
    params = dict(model.named_parameters())
    owned = unit_params(units, model)
    out = dict(mask)
    for u in units:
        if u.layer not in alive:
            continue
        keep = alive[u.layer].to(torch.bool)
        if tuple(keep.shape) != (u.count,):
            raise TicketlabError(f"alive units of {u.layer!r} have shape {tuple(keep.shape)}, expected ({u.count},)")
        for name in owned[u.layer]:
            p = params[name]
            kept = keep.to(p.device).reshape(-1, *[1] * (p.dim() - 1)).expand(p.shape)
            out[name] = out[name].to(p.device) & kept if name in out else kept.clone()
        for consumer, per in u.consumers:
            name = param_name(consumer, "weight")
            if name in out:  # unit j feeds input columns j*per ... (j+1)*per - 1
                w = out[name]
                columns = keep.to(w.device).repeat_interleave(per).reshape(1, -1, *[1] * (w.dim() - 2))
                out[name] = w & columns
    return out


@torch.no_grad()
def silent_units(model: nn.Module, units: list[Unit], mask: Mask) -> dict[str, torch.Tensor]:
    """Per unit layer, the units whose output is exactly zero for every input (in eval mode): no weight, a zero
    bias, and a BatchNorm that maps zero to zero. Only these can be removed without changing the function
    (a unit whose weights are pruned but whose bias is not still feeds a constant forward)."""
    modules = dict(model.named_modules())
    out = {}
    for u in units:
        silent = (masked_param(model, mask, param_name(u.layer, "weight")).reshape(u.count, -1) == 0).all(1)
        if getattr(modules[u.layer], "bias", None) is not None:
            silent &= masked_param(model, mask, param_name(u.layer, "bias")) == 0
        if u.norm is not None:
            bn = modules[u.norm]
            if bn.running_mean is None:
                silent &= False  # batch statistics even in eval mode: zero in does not give zero out
            else:
                zero = -bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
                if bn.affine:
                    gamma = masked_param(model, mask, param_name(u.norm, "weight"))
                    zero = zero * gamma + masked_param(model, mask, param_name(u.norm, "bias"))
                silent &= zero == 0
        out[u.layer] = silent.cpu()
    return out


@torch.no_grad()
def add_slimming_grad(model: nn.Module, lam: float) -> None:
    """Network slimming (Liu et al. 2017): the subgradient of ``lam * sum |gamma|`` over every BatchNorm scale,
    added to the gradients after ``loss.backward()`` so that unimportant channels shrink towards 0."""
    if lam == 0:
        return
    for m in model.modules():
        if isinstance(m, BATCH_NORMS) and m.weight is not None and m.weight.grad is not None:
            m.weight.grad.add_(torch.sign(m.weight), alpha=lam)
