"""Compaction: an unstructured ticket's dead neurons and filters removed, so it runs as a smaller dense network.

A unit (one output of a Linear/Conv layer, see :mod:`.units`) is dead in a masked network when
- **dead out**: no kept weight reads it on the way to an output (its readers are pruned, or are dead out themselves):
  removing it changes nothing, in inference or in training (it gets no gradient and reaches nothing);
- **constant**: no kept weight feeds it from the input (its row is pruned, or it reads only constant units): its
  output is ``act(norm(bias))``, the same for every input.

``compact(model, mask, input_shape)`` removes both for **inference**: a constant unit's output, measured on the
eval-mode network, is added to the biases of the layers reading it (a Linear reader always; a conv reader only
when the value is 0, or uniform and the conv unpadded, since zero padding makes its contribution vary over
positions; otherwise the unit is kept). A kept weight equal to 0 counts as pruned.

With ``training=True`` only what is exact for **training** goes: dead-out units, and constant units that feed
exactly 0 with no gradient reaching their parameters (a ReLU unit with bias <= 0 and no BatchNorm: it stays dead
however it trains). A constant unit feeding a nonzero value is kept: folded, its bias and its readers' weights
would become one bias and train differently; so is one under BatchNorm (in training mode it feeds beta, which
trains, and the running statistics move what it feeds in eval mode). Then a step on the compacted model equals a
step on the full masked one (same loss, same updates of the weights kept), except where dropout draws masks of
other shapes (the same in distribution, not the same draws). A removed channel's BatchNorm running statistics
keep their values from compaction time when mapped back (nothing reads them); its parameters get no gradient
in the full model either (weight decay alone would shrink them there).

:meth:`Compaction.full_state` maps trained small weights back to the full shapes, so run directories keep them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.prunable import param_name
from ticketlab.pruning.units import Unit, example_input, find_units

TOLERANCE = 1e-6  # relative: a "constant" measured on two random inputs, a "uniform" conv contribution


@dataclass
class Compaction:
    """What :func:`compact` removed, and how to map the small network's weights back to the full shapes."""

    training: bool  # compacted exactly for training (else for inference only)
    rows: dict[str, torch.Tensor]  # unit layer -> indices of the units kept (its weight rows, bias, norm entries)
    cols: dict[str, torch.Tensor]  # reading layer -> indices of the input features / channels kept
    norms: dict[str, str]  # norm module -> the unit layer whose outputs it normalises
    fold: dict[str, torch.Tensor]  # reading layer -> constant added to its bias (full length), by folded units
    base: dict[str, torch.Tensor]  # the full masked model's state: what removed entries keep when mapped back
    units: dict[str, dict[str, int]] = field(default_factory=dict)  # per unit layer: count, kept, dead_out, ...
    params_before: int = 0
    params_after: int = 0

    def index(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """(rows, cols) that entry ``name`` of the full state keeps (None: all); None when it is not sliced."""
        module, _, attr = name.rpartition(".")
        if module in self.norms:
            return None if attr == "num_batches_tracked" else (self.rows[self.norms[module]], None)
        rows, cols = self.rows.get(module), self.cols.get(module) if attr == "weight" else None
        return None if rows is None and cols is None else (rows, cols)

    def small(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Entry ``name`` of the full state, cut to the small network's shape."""
        at = self.index(name)
        if at is None:
            return t
        rows, cols = at
        t = t if rows is None else t[rows.to(t.device)]
        return t if cols is None else t[:, cols.to(t.device)]

    def full_state(self, small_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full network's state dict from the small one's: kept entries from ``small_state``, folded constants
        taken back out of the biases, removed entries as they were when compacted (pruned weights: 0). Loaded
        into the full model (with the mask applied) it computes what the small network computes."""
        full = {k: v.detach().clone() for k, v in self.base.items()}
        for name, v in small_state.items():
            if name not in full:
                raise TicketlabError(f"{name!r} is not in the compacted model's full state; pass the small model's")
            v = v.detach().to(full[name].device, full[name].dtype)
            module, _, attr = name.rpartition(".")
            if attr == "bias" and module in self.fold:
                fold = self.fold[module].to(v.device, v.dtype)
                v = v - (fold if module not in self.rows else fold[self.rows[module].to(v.device)])
            at = self.index(name)
            if at is None:
                full[name] = v.clone()
                continue
            rows, cols = at
            rows = torch.arange(full[name].shape[0]) if rows is None else rows
            if cols is None:
                full[name][rows.to(v.device)] = v
            else:
                full[name][rows.to(v.device)[:, None], cols.to(v.device)[None, :]] = v
        return full

    def summary(self) -> str:
        """One line: parameters before and after, units removed by kind."""
        total = {
            k: sum(u[k] for u in self.units.values())
            for k in ("count", "dead_out", "constant_removed", "constant_kept")
        }
        mode = "training" if self.training else "inference"
        return (
            f"compacted for {mode}: {self.params_before:,} -> {self.params_after:,} parameters; "
            f"{total['count'] - sum(u['kept'] for u in self.units.values())} of {total['count']} units removed "
            f"({total['dead_out']} dead out, {total['constant_removed']} constant removed), "
            f"{total['constant_kept']} constant units kept"
        )


def compact(
    model: nn.Module, mask: M.Mask, input_shape: tuple[int, ...], *, training: bool = False
) -> tuple[nn.Module, M.Mask, Compaction]:
    """A smaller dense copy of the masked network without its dead units, its mask, and the map back.

    ``model``: any network :func:`~ticketlab.pruning.find_units` can trace (layers outside unit chains are kept
    whole); ``mask``: parameter name -> bool tensor (unstructured or structured); ``input_shape``: one example's
    shape. ``training``: remove only what is exact for training (see the module docstring). Returns ``(small,
    small_mask, compaction)``: ``small`` is the model's own class with smaller Linear/Conv/BatchNorm modules (in
    eval mode, and for ``training`` in train mode too, it computes what the masked model computes, to float
    rounding); ``small_mask`` is ``mask`` cut to it (same names). ``model`` is left untouched. Raises
    TicketlabError when the mask does not fit the model or the model cannot be traced.
    """
    M.check_mask(model, mask)
    units = find_units(model, tuple(input_shape))
    net = M.apply_mask(copy.deepcopy(model), mask)
    modules = dict(net.named_modules())
    params = dict(net.named_parameters())

    def links(layer: str) -> torch.Tensor:  # (out, in): some kept weight joins output i to input feature j
        w = params[param_name(layer, "weight")].detach()
        kept = mask.get(param_name(layer, "weight"), torch.ones_like(w, dtype=torch.bool)).to(w.device)
        if not training:
            kept = kept & (w != 0)
        return kept.reshape(w.shape[0], w.shape[1], -1).any(2).cpu()

    reader_of = {c: (u, per) for u in units for c, per in u.consumers}
    # from the input: a unit is not constant when a kept weight joins it to a non-constant input (graph order)
    fed: dict[str, torch.Tensor] = {}
    for u in units:
        joined = links(u.layer)
        if u.layer in reader_of:
            src, per = reader_of[u.layer]
            joined = joined & fed[src.layer].repeat_interleave(per)
        fed[u.layer] = joined.any(1)
    # to the output: a unit is read when a kept weight joins it to a reader output that is read (reverse order)
    read: dict[str, torch.Tensor] = {}
    for u in reversed(units):
        hit = torch.zeros(u.count, dtype=torch.bool)
        for c, per in u.consumers:
            rows = read.get(c, torch.ones(links(c).shape[0], dtype=torch.bool))
            hit |= (links(c) & rows[:, None]).reshape(-1, u.count, per).any(2).any(0)
        read[u.layer] = hit

    values = _constants(net, units, input_shape)
    constant = {u.layer: read[u.layer] & ~fed[u.layer] for u in units}
    if training:  # feeding 0 in both modes and staying so; under BatchNorm the running statistics move it
        flat = _flat_zeros(net, units, constant, input_shape)
        movable = {u.layer: flat[u.layer] & _zero(u, modules, values) & (u.norm is None) for u in units}
    else:
        movable = {u.layer: constant[u.layer] & _foldable(u, modules, values) for u in units}
    remove = {u.layer: ~read[u.layer] | movable[u.layer] for u in units}
    for u in units:
        if bool(remove[u.layer].all()):  # keep one unit, unfolded, rather than a layer of none
            remove[u.layer][0] = False
            movable[u.layer][0] = False

    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    fold: dict[str, torch.Tensor] = {}
    for u in units:
        gone = movable[u.layer] & remove[u.layer] & read[u.layer]
        for c, per in u.consumers:
            add = _contribution(modules[c], u, gone, values[c], per)
            if add is not None:
                fold[c] = fold.get(c, 0) + add
    rows = {u.layer: (~remove[u.layer]).nonzero().flatten() for u in units if bool(remove[u.layer].any())}
    cols = {
        c: (rows[u.layer][:, None] * per + torch.arange(per)).flatten()
        for u in units
        if u.layer in rows
        for c, per in u.consumers
    }
    norms = {u.norm: u.layer for u in units if u.norm is not None and u.layer in rows}
    with torch.no_grad():
        for c, add in fold.items():
            modules[c].bias.add_(add.to(modules[c].bias.device, modules[c].bias.dtype))
    info = Compaction(training, rows, cols, norms, fold, base)
    info.units = {
        u.layer: {
            "count": u.count,
            "kept": int((~remove[u.layer]).sum()),
            "dead_out": int((~read[u.layer]).sum()),
            "constant_removed": int((movable[u.layer] & remove[u.layer] & read[u.layer]).sum()),
            "constant_kept": int((constant[u.layer] & ~remove[u.layer]).sum()),
        }
        for u in units
    }
    small = net
    for name in rows.keys() | cols.keys():
        keep_rows, keep_cols = rows.get(name), cols.get(name)
        replace_module(small, name, slim_layer(modules[name], keep_rows, keep_cols))
    for norm, layer in norms.items():
        replace_module(small, norm, slim_norm(modules[norm], rows[layer]))
    small_mask = {n: info.small(n, m) for n, m in mask.items()}
    info.params_before = sum(p.numel() for p in model.parameters())
    info.params_after = sum(p.numel() for p in small.parameters())
    return small, small_mask, info


# ------------------------------------------------------------------------------------------- what is constant


def _inputs_of(net: nn.Module, names: set[str], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The network's output on ``x`` and the input each module of ``names`` received (graphs kept)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, args[0]))
        for n, m in net.named_modules()
        if n in names
    ]
    try:
        out = net(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def _random_input(net: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = example_input(net, 2, tuple(input_shape))
    return torch.randn(x.shape, generator=g).to(x.device, x.dtype)


@torch.no_grad()
def _constants(net: nn.Module, units: list[Unit], input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per reading layer, what its input holds in eval mode (one example's), measured on a random input; NaN
    where it differs between two random examples (not constant)."""
    readers = {c for u in units for c, _ in u.consumers}
    training = {m: m.training for m in net.modules()}
    try:
        _, seen = _inputs_of(net.eval(), readers, _random_input(net, input_shape))
    finally:
        for m, t in training.items():
            m.training = t
    out = {}
    for c, x in seen.items():
        a, b = x[0], x[1]
        same = (a - b).abs() <= TOLERANCE * torch.maximum(a.abs(), b.abs()).clamp_min(1.0)
        out[c] = torch.where(same, a, torch.full_like(a, float("nan")))
    return out


def _columns(m: nn.Module, x: torch.Tensor, unit: int, per: int) -> torch.Tensor:
    """Unit ``unit``'s part of reader ``m``'s (one-example) input: ``per`` features of a Linear's (at every
    position), a channel of a conv's."""
    return x[..., unit * per : (unit + 1) * per] if isinstance(m, nn.Linear) else x[unit]


def _foldable(u: Unit, modules: dict[str, nn.Module], values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which units' constant outputs every reader can take into its bias."""
    ok = torch.ones(u.count, dtype=torch.bool)
    for c, per in u.consumers:
        m, x = modules[c], values[c]
        for j in range(u.count):
            v = _columns(m, x, j, per)
            if bool(v.isnan().any()):
                ok[j] = False
            elif not bool(v.any()):
                continue  # feeds 0: nothing to fold
            elif isinstance(m, nn.Linear):  # one vector per example (not per position of a sequence)
                ok[j] &= x.dim() == 1 and m.bias is not None
            else:  # a conv reader: exact only for a uniform map and no padding
                unpadded = all(p == 0 for p in m.padding) if isinstance(m.padding, tuple) else False
                ok[j] &= unpadded and m.bias is not None and bool((v == v.flatten()[0]).all())
    return ok


def _zero(u: Unit, modules: dict[str, nn.Module], values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which units feed exactly 0 to every reader (in eval mode)."""
    ok = torch.ones(u.count, dtype=torch.bool)
    for c, per in u.consumers:
        for j in range(u.count):
            ok[j] &= not bool(_columns(modules[c], values[c], j, per).ne(0).any())  # NaN (not constant) counts
    return ok


def _contribution(m: nn.Module, u: Unit, gone: torch.Tensor, x: torch.Tensor, per: int) -> torch.Tensor | None:
    """What the units ``gone`` (of ``u``) add to each output of reader ``m``: a per-output constant (full length)."""
    if not bool(gone.any()):
        return None
    w = m.weight.detach()
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            cols = (gone.nonzero().flatten()[:, None] * per + torch.arange(per)).flatten().to(w.device)
            v = torch.nan_to_num(x[..., cols])
            return w[:, cols] @ v if bool(v.any()) else None
        idx = gone.nonzero().flatten().to(w.device)
        v = torch.nan_to_num(x[idx].reshape(len(idx), -1)[:, 0])  # uniform maps (checked by _foldable)
        return w[:, idx].flatten(2).sum(2) @ v if bool(v.any()) else None


def _flat_zeros(
    net: nn.Module, units: list[Unit], constant: dict[str, torch.Tensor], input_shape: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """Of the constant units, those that feed exactly 0 in train mode and pass no gradient to their own
    parameters (checked with one backward pass of a random combination of what they feed, on a copy)."""
    net = copy.deepcopy(net).train()
    modules = dict(net.named_modules())
    readers = {c for u in units for c, _ in u.consumers}
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        _, seen = _inputs_of(net, readers, _random_input(net, input_shape))
    zero = {u.layer: constant[u.layer].clone() for u in units}
    total = None
    for u in units:
        for c, per in u.consumers:
            x = seen[c]
            for j in constant[u.layer].nonzero().flatten().tolist():
                part = x[:, j] if x.dim() > 2 else x[:, j * per : (j + 1) * per]
                if bool(part.any()):
                    zero[u.layer][j] = False
                term = (part * torch.randn(part.shape, generator=g).to(part.device, part.dtype)).sum()
                total = term if total is None else total + term
    if total is None or not total.requires_grad:
        return zero
    owned = {u.layer: _owned(u, modules) for u in units}
    flat = [p for ps in owned.values() for p in ps]
    grads = dict(zip(map(id, flat), torch.autograd.grad(total, flat, allow_unused=True)))
    for u in units:
        for p in owned[u.layer]:
            gr = grads[id(p)]
            if gr is not None:
                zero[u.layer] &= (gr.reshape(u.count, -1) == 0).all(1).cpu()
    return zero


def _owned(u: Unit, modules: dict[str, nn.Module]) -> list[torch.Tensor]:
    """A unit layer's parameters indexed by unit: weight, bias, and its norm's scale and shift."""
    out = [modules[u.layer].weight]
    if modules[u.layer].bias is not None:
        out.append(modules[u.layer].bias)
    if u.norm is not None and getattr(modules[u.norm], "affine", False):
        out += [modules[u.norm].weight, modules[u.norm].bias]
    return [p for p in out if p.requires_grad]


# ------------------------------------------------------------------------------------------- smaller modules


def slim_layer(m: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> nn.Module:
    """A new Linear/Conv with the same hyperparameters and only the kept outputs (rows) and inputs (columns)."""
    w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
    if out_keep is not None:
        out_keep = out_keep.to(w.device)
        w, b = w[out_keep], None if b is None else b[out_keep]
    if in_keep is not None:
        w = w[:, in_keep.to(w.device)]
    kw = {"bias": b is not None, "device": w.device, "dtype": w.dtype}
    if type(m) is nn.Linear:
        new = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], **kw)  # skip_init: the global RNG is untouched
    else:
        new = nn.utils.skip_init(
            type(m), w.shape[1], w.shape[0], m.kernel_size, stride=m.stride, padding=m.padding,
            dilation=m.dilation, padding_mode=m.padding_mode, **kw,
        )  # fmt: skip
    new.weight.data.copy_(w)
    new.weight.requires_grad_(m.weight.requires_grad)
    if b is not None:
        new.bias.data.copy_(b)
        new.bias.requires_grad_(m.bias.requires_grad)
    return new.train(m.training)


def slim_norm(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A new BatchNorm with only the kept channels' statistics, scale and shift."""
    kw = {"eps": m.eps, "momentum": m.momentum, "affine": m.affine, "track_running_stats": m.track_running_stats}
    ref = m.weight if m.affine else m.running_mean
    if ref is not None:
        kw |= {"device": ref.device, "dtype": ref.dtype}
    new = nn.utils.skip_init(type(m), len(keep), **kw)
    keep = keep.to(ref.device) if ref is not None else keep
    for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        getattr(new, name).data.copy_(t.detach() if name == "num_batches_tracked" else t.detach()[keep])
        getattr(new, name).requires_grad_(t.requires_grad)
    return new.train(m.training)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of submodule ``name`` of ``model``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
