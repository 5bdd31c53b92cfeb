"""Which tensors of which modules are prunable: the one table every other module reads.

A module type maps to a :class:`Rule`: the parameters pruned by default (weights), those pruned only when asked
(biases), the kind of layer (whose per-level rate ``--conv-fraction`` sets), and whether structured pruning can
remove its outputs one by one. Norm layers are never pruned; anything in ``ignore`` never is either. A subclass
of a listed type follows its nearest listed base.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ticketlab.errors import TicketlabError


@dataclass(frozen=True)
class Rule:
    """How one module type is pruned."""

    kind: str  # "linear" or "conv": conv layers are pruned at --conv-fraction
    weights: tuple[str, ...] = ("weight",)  # pruned by default
    biases: tuple[str, ...] = ("bias",)  # pruned only with prune_biases
    units: bool = False  # structured pruning (pruning/units.py) can remove its outputs (rows, filters)


RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: Rule("linear", units=True),
    nn.Conv1d: Rule("conv", units=True),
    nn.Conv2d: Rule("conv", units=True),
    nn.Conv3d: Rule("conv"),
}
LAYERS = tuple(RULES)  # the prunable module types
# What structured pruning can remove: the outputs of these layers (exact types), and their BatchNorms.
UNIT_LAYERS = tuple(t for t, r in RULES.items() if r.units)
UNIT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

# Norm layers: never pruned; re-initialised with the model; a path counter passes its input through them.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# The BatchNorms whose scales network slimming penalises.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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


def prunable_names(model: nn.Module, *, prune_biases: bool = False, ignore: Iterable[str] = ()) -> list[str]:
    """Names of the prunable parameters, in module order."""
    ignore = tuple(ignore)
    names = []
    for mod_name, module in model.named_modules():
        r = rule(module)
        if r is None:
            continue
        for pname in r.weights + (r.biases if prune_biases else ()):
            name = param_name(mod_name, pname)
            if getattr(module, pname, None) is not None and not _ignored(name, ignore):
                names.append(name)
    all_params = dict(model.named_parameters())
    unknown = [i for i in ignore if i not in all_params and not any(n.startswith(i + ".") for n in all_params)]
    if unknown:
        raise TicketlabError(f"--ignore names no parameter of the model: {unknown}; parameters: {list(all_params)}")
    return names


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The kind (``"conv"`` or ``"linear"``) of every parameter of a prunable layer, by module type, not by name."""
    kinds = {}
    for mod_name, module in model.named_modules():
        r = rule(module)
        if r is not None:
            for pname, _ in module.named_parameters(recurse=False):
                kinds[param_name(mod_name, pname)] = r.kind
    return kinds


def output_layer_name(model: nn.Module) -> str | None:
    """The output layer's weight: the first weight of the last prunable layer in module order."""
    last = None
    for mod_name, module in model.named_modules():
        r = rule(module)
        if r is not None:
            last = param_name(mod_name, r.weights[0])
    return last


def is_layer_weight(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` is a weight (not a bias) of a prunable layer."""
    module_name, _, pname = name.rpartition(".")
    r = rule(model.get_submodule(module_name) if module_name else model)
    return r is not None and pname in r.weights
