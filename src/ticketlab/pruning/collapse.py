"""Layer collapse: a mask that empties a layer, or leaves no path from the input to the outputs.

SNIP at extreme sparsity, or a global threshold over layers of very different scales, can do either; the
network then cannot learn, whatever its density says. Checked on every new mask (``--on-collapse``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ticketlab.masks import Mask
from ticketlab.prunable import NORM_LAYERS, is_layer_weight, rule


@torch.no_grad()
def dead_outputs(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """How many of the network's outputs no path from the input reaches through kept weights, and of how many.

    The network is made to count paths: kept weights become 1, pruned ones 0, other weights of prunable layers
    1, biases 0, and norm layers pass their input through; fed an all-ones input, an output is 0 exactly when
    every path to it crosses a pruned weight. Each layer's output is rescaled by its maximum, which keeps the
    zeros and keeps deep networks' path counts from overflowing.
    """
    net = copy.deepcopy(model).eval().double()
    params = dict(net.named_parameters())
    hooks = []
    for module in net.modules():
        r = rule(module)
        if r is not None:
            for name in r.weights:
                getattr(module, name).fill_(1.0)
            for name in r.biases:
                if getattr(module, name, None) is not None:
                    getattr(module, name).zero_()
            hooks.append(module.register_forward_hook(lambda m, i, out: out / out.abs().max().clamp_min(1e-300)))
        elif isinstance(module, NORM_LAYERS):
            hooks.append(module.register_forward_hook(lambda m, i, out: i[0]))
    for name, m in mask.items():
        if is_layer_weight(net, name):
            params[name].copy_(m.to(params[name].dtype))
    device = next(iter(params.values())).device
    out = net(torch.ones(1, *input_shape, dtype=torch.float64, device=device))
    for h in hooks:
        h.remove()
    return int((out.flatten() == 0).sum()), out.numel()


def collapse(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> list[str]:
    """Layer collapse: layers with no weight left, and whether no path from the input reaches any output.
    (Some outputs cut off while others are reached is not collapse: it happens at extreme sparsity by design.)"""
    layers = [n for n in mask if is_layer_weight(model, n)]
    problems = [f"{n} has no weight left" for n in layers if mask[n].numel() and not bool(mask[n].any())]
    dead, outputs = dead_outputs(model, mask, input_shape)
    if dead == outputs:
        problems.append("no path from the input reaches any output")
    return problems
