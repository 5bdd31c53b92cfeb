"""Density by component of a sequence model: embedding, attention, recurrent, conv, mlp and output tensors.

Yu et al. (2020) find embeddings the most prunable part of a language model; a per-layer table hides that in a
Transformer's dozens of tensors, so the HTML report adds this table (one line per component) for models that have
an embedding, attention or recurrent component.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ticketlab.prunable import output_layer_name, owner_name, rule

COMPONENTS = ("embedding", "attention", "recurrent", "conv", "mlp", "output")


def components(model: nn.Module, names: Iterable[str], example: Any = None) -> dict[str, str]:
    """The component of each prunable tensor in ``names``: "attention" (anything inside an
    ``nn.MultiheadAttention``: in_proj and out_proj), "embedding", "recurrent" (``nn.RNNBase``), "conv", "mlp" (any
    other layer), or "output" for the output layer's tensors (found by :func:`output_layer_name` on ``example``, a
    batch of inputs; without one, no tensor is "output"). A bias belongs to its layer's component."""
    names = list(names)
    out_layer = output_layer_name(model, example, names) if example is not None else None
    out_owner = owner_name(model, out_layer) if out_layer is not None else None
    kinds = {}
    for name in names:
        owner = owner_name(model, name)
        if name == out_layer or (owner == out_owner and owner is not None):
            kinds[name] = "output"
            continue
        parts = owner.split(".") if owner else []
        chain = [model.get_submodule(".".join(parts[:i])) for i in range(len(parts) + 1)]
        r = rule(chain[-1])
        if any(isinstance(m, nn.MultiheadAttention) for m in chain):
            kinds[name] = "attention"
        elif r is not None and r.kind in ("embedding", "recurrent", "conv"):
            kinds[name] = r.kind
        else:
            kinds[name] = "mlp"
    return kinds


def shows_components(kinds: Iterable[str]) -> bool:
    """Whether a per-component table says more than the per-layer one: the model has a sequence component
    (embedding, attention, recurrent), not only conv, mlp and output layers."""
    return bool(set(kinds) & {"embedding", "attention", "recurrent"})


def component_table(model: nn.Module, mask: dict[str, torch.Tensor], example: Any) -> str:
    """A text table of ``mask`` (name -> bool tensor) by component (see :func:`components`): tensors, weights,
    weights kept and density, one line per component present, then the total."""
    kinds = components(model, list(mask), example)
    lines = [f"{'component':<10}  {'tensors':>7}  {'weights':>10}  {'kept':>10}  density"]
    for kind in COMPONENTS:
        members = [n for n in mask if kinds[n] == kind]
        if members:
            size = sum(mask[n].numel() for n in members)
            kept = sum(int(mask[n].sum()) for n in members)
            lines.append(f"{kind:<10}  {len(members):>7}  {size:>10}  {kept:>10}  {kept / max(size, 1):8.4%}")
    size, kept = sum(m.numel() for m in mask.values()), sum(int(m.sum()) for m in mask.values())
    lines.append(f"{'total':<10}  {len(mask):>7}  {size:>10}  {kept:>10}  {kept / max(size, 1):8.4%}")
    return "\n".join(lines)
