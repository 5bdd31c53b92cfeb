"""Which tensors of which modules are prunable: the one table every other module reads.

A module type maps to a :class:`Rule`: the parameters pruned by default (weights, as name patterns: an LSTM's
``weight_ih_l*``), those pruned only when asked (biases), the kind of layer (conv layers are pruned at
``--conv-fraction``; embeddings only with ``--prune-embeddings``), and whether structured pruning can remove its
outputs one by one. A subclass of a listed type follows its nearest listed base. Norm layers are never pruned;
anything in ``ignore`` never is either; any other parameter is pruned when a ``patterns`` entry names it
(``"*.kernel"``, fnmatch syntax, matched against the full name).

Every kind of module is handled as a kind, not case by case:

- a tensor shared by several modules (tied weights) is one prunable tensor, under the first name
  ``named_parameters()`` gives it, counted once;
- a weight behind a parametrisation (``torch.nn.utils.parametrizations.weight_norm`` / ``spectral_norm``) is
  pruned through its original (``layer.parametrizations.weight.original1`` for weight norm), which keeps the
  weight's pruned entries exactly zero; any other parametrisation is refused in one line;
- a layer pruned with ``torch.nn.utils.prune`` is taken over by :func:`adopt`: its mask is imported;
- the first and the output layer are found from a forward pass, not from the order modules were defined in.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from ticketlab.errors import TicketlabError


@dataclass(frozen=True)
class Rule:
    """How one module type is pruned."""

    kind: str  # linear, conv (pruned at --conv-fraction), recurrent, attention, embedding (only when asked)
    weights: tuple[str, ...] = ("weight",)  # pruned by default: patterns over the module's own parameter names
    biases: tuple[str, ...] = ("bias",)  # pruned only with prune_biases
    units: bool = False  # structured pruning (pruning/units.py) can remove its outputs (rows, filters)


_RECURRENT = Rule("recurrent", ("weight_ih_l*", "weight_hh_l*", "weight_hr_l*"), ("bias_ih_l*", "bias_hh_l*"))
RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: Rule("linear", units=True),  # also MultiheadAttention's out_proj
    nn.Bilinear: Rule("linear"),
    nn.Conv1d: Rule("conv", units=True),
    nn.Conv2d: Rule("conv", units=True),
    nn.Conv3d: Rule("conv"),
    nn.ConvTranspose1d: Rule("conv"),
    nn.ConvTranspose2d: Rule("conv"),
    nn.ConvTranspose3d: Rule("conv"),
    nn.RNNBase: _RECURRENT,  # RNN, LSTM, GRU; every layer and the reverse direction (weight_ih_l0_reverse)
    nn.MultiheadAttention: Rule(
        "attention", ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"), ("in_proj_bias",)
    ),
    nn.Embedding: Rule("embedding", biases=()),
    nn.EmbeddingBag: Rule("embedding", biases=()),
}
# The layer types the registered models' init schemes (kaiming, glorot) draw: those with one `weight`.
LAYERS = tuple(t for t, r in RULES.items() if r.kind in ("linear", "conv"))
# What structured pruning can remove: the outputs of these layers (exact types), and their BatchNorms.
UNIT_LAYERS = tuple(t for t, r in RULES.items() if r.units)
UNIT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

# Norm layers: never pruned; re-initialised with the model; a path counter passes its input through them.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# The BatchNorms whose scales network slimming penalises.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

# Parametrisations that keep a weight's entry zero when its original's is: w = g * v / |v|, w = W / sigma.
_ZERO_KEEPING = ("_WeightNorm", "_SpectralNorm")


def rule(module: nn.Module) -> Rule | None:
    """The rule of ``module``'s type (or of its nearest listed base class); None when it is not prunable."""
    for t in type(module).__mro__:
        if t in RULES:
            return RULES[t]
    return None


def param_name(module_name: str, param: str) -> str:
    """``module.param``, or ``param`` for the root module."""
    return f"{module_name}.{param}" if module_name else param


def _ignored(name: str, ignore: Iterable[str]) -> bool:
    return any(name == i or name.startswith(i + ".") for i in ignore)


def canonical_names(model: nn.Module) -> dict[int, str]:
    """The name of every parameter tensor by identity: the first name ``named_parameters()`` gives it (a tied
    weight has one name)."""
    return {id(p): n for n, p in model.named_parameters()}


def _own_tensors(module: nn.Module, mod_name: str, patterns: tuple[str, ...]) -> list[nn.Parameter]:
    """The module's own parameters matching ``patterns`` (names of its attributes): the parameter itself, or, when
    the attribute is parametrised, the original that carries its zeros."""
    out = []
    attrs = list(module._parameters)
    if parametrize.is_parametrized(module):
        attrs += list(module.parametrizations)
    for attr in attrs:
        if not any(fnmatch.fnmatchcase(attr, p) for p in patterns) or getattr(module, attr, None) is None:
            continue
        out.append(_through(module, mod_name, attr))
    return out


def _through(module: nn.Module, mod_name: str, attr: str) -> nn.Parameter:
    """The parameter that prunes ``module.attr``: itself, or the original of a zero-keeping parametrisation."""
    if not parametrize.is_parametrized(module, attr):
        return module._parameters[attr]
    plist = module.parametrizations[attr]
    kinds = [type(p).__name__ for p in plist]
    shape = tuple(getattr(module, attr).shape)
    originals = [p for _, p in plist.named_parameters(recurse=False) if tuple(p.shape) == shape]
    if any(k not in _ZERO_KEEPING for k in kinds) or len(originals) != 1:
        where = param_name(mod_name, attr)
        raise TicketlabError(
            f"{where} is parametrised by {', '.join(kinds)}, which does not keep pruned weights at zero; remove it "
            f"with torch.nn.utils.parametrize.remove_parametrizations(model.{mod_name or '<root>'}, {attr!r}) "
            f"or pass ignore=[{mod_name!r}]"
        )
    return originals[0]


def prunable_names(
    model: nn.Module,
    *,
    prune_biases: bool = False,
    ignore: Iterable[str] = (),
    patterns: Iterable[str] = (),
    embeddings: bool = False,
) -> list[str]:
    """Names of the prunable parameters, in module order, each tensor once (tied weights under their first name).

    ``patterns``: more parameters to prune, by full name (fnmatch: ``"*.kernel"``); each must match something.
    ``embeddings``: prune Embedding / EmbeddingBag tables too. TicketlabError for an ``ignore`` or pattern that
    names nothing, a parametrisation that would let pruned weights move, and a deprecated hook-based weight norm.
    """
    ignore, patterns = tuple(ignore), tuple(patterns)
    canonical = canonical_names(model)
    params = dict(model.named_parameters())
    names: list[str] = []
    for mod_name, module in model.named_modules():
        r = rule(module)
        if r is None or (r.kind == "embedding" and not embeddings) or (mod_name and _ignored(mod_name, ignore)):
            continue
        _refuse_hooked(module, mod_name)
        for p in _own_tensors(module, mod_name, r.weights + (r.biases if prune_biases else ())):
            names.append(canonical[id(p)])
    for pattern in patterns:
        hits = [n for n in params if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise TicketlabError(f"--prunable {pattern!r} names no parameter of the model; parameters: {list(params)}")
        names += [canonical[id(params[n])] for n in hits]
    everything = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    unknown = [i for i in ignore if not any(n == i or n.startswith(i + ".") for n in everything)]
    if unknown:
        raise TicketlabError(f"--ignore names no parameter of the model: {unknown}; parameters: {list(params)}")
    names = [n for n in dict.fromkeys(names) if not _ignored(n, ignore)]
    return names


def check_supported(model: nn.Module) -> None:
    """TicketlabError, in one line naming the layer and the fix, for what ticketlab cannot take over: the
    deprecated hook-based weight norm, and layers pruned with torch.nn.utils.prune (see :func:`adopt`)."""
    for mod_name, module in model.named_modules():
        _refuse_hooked(module, mod_name)


def check_zero_safe(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    """TicketlabError when ``mask`` prunes every weight of one output of a weight-normed layer: w = g v / |v| is
    then 0 / 0 (NaN), whatever g is."""
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr in module.parametrizations:
            plist = module.parametrizations[attr]
            norms = [p for p in plist if type(p).__name__ == "_WeightNorm"]
            name = param_name(mod_name, f"parametrizations.{attr}.original1")
            if not norms or name not in mask:
                continue
            dim = norms[0].dim % mask[name].dim() if norms[0].dim is not None and norms[0].dim != -1 else None
            if dim is None:
                empty = int(not bool(mask[name].any()))
            else:
                empty = int((~mask[name].movedim(dim, 0).flatten(1).any(1)).sum())
            if empty:
                raise TicketlabError(
                    f"the mask prunes every weight of {empty} output(s) of the weight-normed {mod_name or 'model'} "
                    "(its weight g * v / |v| would be 0 / 0 there); keep the layer denser (layer_fractions, "
                    "keep_dense) or remove weight norm first (torch.nn.utils.parametrize.remove_parametrizations)"
                )


def _refuse_hooked(module: nn.Module, mod_name: str) -> None:
    """torch.nn.utils.weight_norm (the deprecated, hook-based one) recomputes ``weight`` from weight_g and
    weight_v before each forward; nothing pruned on ``weight`` would stay pruned."""
    for hook in module._forward_pre_hooks.values():
        if type(hook).__name__ == "WeightNorm":
            raise TicketlabError(
                f"{mod_name or 'the model'} uses the deprecated torch.nn.utils.weight_norm; use "
                "torch.nn.utils.parametrizations.weight_norm instead (ticketlab prunes through it), or "
                "torch.nn.utils.remove_weight_norm"
            )
        if isinstance(hook, torch_prune.BasePruningMethod):
            raise TicketlabError(
                f"{mod_name or 'the model'} is pruned with torch.nn.utils.prune; take it over with "
                "ticketlab.prunable.adopt(model) (find_ticket does), which imports its mask"
            )


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The kind (``"conv"``, ``"linear"``, ``"recurrent"``...) of every parameter of a prunable layer (parametrised
    originals included), by module type, not by name; tensors named only by pattern have no kind."""
    kinds: dict[str, str] = {}
    canonical = canonical_names(model)
    for mod_name, module in model.named_modules():
        r = rule(module)
        if r is not None:
            for p in _own_tensors(module, mod_name, ("*",)):
                kinds.setdefault(canonical[id(p)], r.kind)
    return kinds


def owner_name(model: nn.Module, name: str) -> str:
    """The module a prunable tensor is pruned for: ``a.parametrizations.weight.original1`` belongs to ``a``."""
    head, sep, _ = name.partition(".parametrizations.")
    if sep:
        return head
    if name.startswith("parametrizations."):
        return ""
    return name.rpartition(".")[0]


@torch.no_grad()
def forward_order(model: nn.Module, names: list[str], example: Any) -> list[str]:
    """``names`` in the order their modules finish their forward pass on ``example`` (a batch of inputs); a tensor
    whose module is never called as a module (used functionally by its parent, as MultiheadAttention uses
    out_proj) takes its nearest called ancestor's place; ties keep module order."""
    finished: dict[str, int] = {}

    def hook(name: str):
        def done(module: nn.Module, inputs: Any, output: Any) -> None:
            finished.setdefault(name, len(finished))

        return done

    hooks = [module.register_forward_hook(hook(mod_name)) for mod_name, module in model.named_modules()]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    def place(name: str) -> int:
        owner = owner_name(model, name)
        while owner not in finished and owner:
            owner = owner.rpartition(".")[0]
        return finished.get(owner, len(finished))

    return sorted(names, key=lambda n: (place(n), names.index(n)))


def output_layer_name(
    model: nn.Module, example: Any, names: list[str] | None = None, logits: Callable[[Any], Any] | None = None
) -> str | None:
    """The output layer: of the prunable weights ``names`` (default: :func:`prunable_names`; biases aside), the one
    nearest the network's output in the autograd graph of a forward pass on ``example`` (a batch of inputs), so a
    head defined first, a functional ``F.linear`` or an embedding tied to the output are found; when no weight
    takes part in the graph, the last in forward order. ``logits`` takes the scores from the model's output."""
    names = prunable_names(model) if names is None else names
    weights = [n for n in names if not n.rpartition(".")[2].startswith("bias")]
    if not weights:
        return None
    by_id = {id(p): n for n, p in model.named_parameters() if n in weights}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(example)
            if logits is not None:
                out = logits(out)
            found = _nearest_leaf(out, by_id) if torch.is_tensor(out) and out.grad_fn is not None else None
    finally:
        model.train(was_training)
    return found or forward_order(model, weights, example)[-1]


def _nearest_leaf(out: torch.Tensor, by_id: dict[int, str]) -> str | None:
    """Breadth-first from ``out``'s grad_fn: the first leaf (AccumulateGrad) that is one of ``by_id``."""
    frontier, seen = [out.grad_fn], set()
    while frontier:
        nxt = []
        for fn in frontier:
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            var = getattr(fn, "variable", None)
            if var is not None and id(var) in by_id:
                return by_id[id(var)]
            nxt += [f for f, _ in fn.next_functions]
        frontier = nxt
    return None


def first_layer_name(model: nn.Module, example: Any, names: list[str] | None = None) -> str:
    """The first layer: the prunable weight (of ``names``, default all) whose module finishes its forward first."""
    names = prunable_names(model) if names is None else names
    return forward_order(model, [n for n in names if not n.rpartition(".")[2].startswith("bias")] or names, example)[0]


def is_layer_weight(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` is a weight (not a bias) of a prunable layer, as pruned (a parametrised weight
    through its original)."""
    owner = owner_name(model, name)
    module = model.get_submodule(owner) if owner else model
    r = rule(module)
    if r is None:
        return False
    canonical = canonical_names(model)
    return name in {canonical[id(p)] for p in _own_tensors(module, owner, r.weights)}


def not_pruned(model: nn.Module, names: Iterable[str]) -> tuple[int, int]:
    """(weights not pruned, all weights) of ``model``: every parameter element outside ``names``, tied tensors
    counted once."""
    names = set(names)
    total = sum(p.numel() for p in model.parameters())
    kept_out = sum(p.numel() for n, p in model.named_parameters() if n not in names)
    return kept_out, total


def density_all(model: nn.Module, mask: dict[str, torch.Tensor]) -> float:
    """Fraction of all the model's weights left: the mask's kept weights and every tensor it does not cover."""
    out, total = not_pruned(model, mask)
    return (out + sum(int(m.sum()) for m in mask.values())) / max(total, 1)


def coverage_line(model: nn.Module, names: Iterable[str]) -> str:
    """One line saying what is not pruned: the count and share of all weights, and the largest tensors left."""
    names = list(names)
    left = [(n, p.numel()) for n, p in model.named_parameters() if n not in set(names)]
    out, total = not_pruned(model, names)
    if not left:
        return f"pruning all {total:,} weights of the model"
    left.sort(key=lambda t: -t[1])
    shown = ", ".join(f"{n} ({k:,})" for n, k in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
    tensors = f"{len(left)} tensor{'s' if len(left) > 1 else ''}"
    return (
        f"not pruned: {out:,} of the model's {total:,} weights ({out / total:.2%}) in {tensors}: {shown}; "
        "density is reported over the pruned tensors and, as density_all, over all weights"
    )


def adopt(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Take over a model pruned with ``torch.nn.utils.prune``: a copy with the pruning made permanent
    (``weight = weight_orig * weight_mask``) and the imported masks (bool, by parameter name), which become the
    starting mask. A model without such pruning is returned as it is, with no masks. The model is not changed."""
    pruned = [
        (mod_name, module, hook)
        for mod_name, module in model.named_modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, torch_prune.BasePruningMethod)
    ]
    if not pruned:
        return model, {}
    # The pruned attribute (weight = orig * mask) is a computed tensor, which deepcopy refuses: copy without it.
    held = [(module, hook._tensor_name, module.__dict__.pop(hook._tensor_name, None)) for _, module, hook in pruned]
    try:
        clone = copy.deepcopy(model)
    finally:
        for module, attr, value in held:
            if value is not None:
                module.__dict__[attr] = value
    masks = {}
    for mod_name, _, hook in pruned:
        target = clone.get_submodule(mod_name) if mod_name else clone
        attr = hook._tensor_name
        mask = getattr(target, attr + "_mask").detach().clone()
        setattr(target, attr, hook.apply_mask(target))
        torch_prune.remove(target, attr)
        masks[param_name(mod_name, attr)] = mask != 0
    return clone, masks


def to_torch_pruning(model: nn.Module, mask: dict[str, torch.Tensor]) -> nn.Module:
    """Attach ``mask`` to ``model`` as ``torch.nn.utils.prune`` masks (``custom_from_mask``), in place: each masked
    tensor becomes ``<name>_orig`` and ``<name>_mask``, as if pruned by PyTorch itself; a tied tensor is masked in
    every module that holds it (which keeps sharing one ``_orig``). Returns the model."""
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        for held in holders[id(params[name])]:
            owner, _, attr = held.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            torch_prune.custom_from_mask(module, attr, m.to(params[name].device))
    return model
