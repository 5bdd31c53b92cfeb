"""The one table of which tensors of which module types are prunable."""

import pytest
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.prunable import LAYERS, is_layer_weight, layer_kinds, output_layer_name, prunable_names


def test_prunable_names_biases_and_ignore():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert prunable_names(model, prune_biases=True) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert prunable_names(model, ignore=["2"]) == ["0.weight"]
    assert output_layer_name(model) == "2.weight"
    with pytest.raises(TicketlabError, match="--ignore names no parameter"):
        prunable_names(model, ignore=["3"])


class _MyLinear(nn.Linear):
    """A user's subclass: pruned as its base class is."""


def test_every_conv_and_linear_is_prunable_norms_never_and_kinds_go_by_module_type():
    model = nn.Sequential(
        nn.Conv3d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv1d(2, 2, 1), nn.GroupNorm(1, 2), nn.LayerNorm(2), _MyLinear(2, 2)
    )
    assert {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d} <= set(LAYERS)
    assert prunable_names(model) == ["0.weight", "1.weight", "2.weight", "5.weight"]
    assert layer_kinds(model) == {
        "0.weight": "conv", "0.bias": "conv", "1.weight": "conv", "1.bias": "conv",
        "2.weight": "conv", "2.bias": "conv", "5.weight": "linear", "5.bias": "linear",
    }  # fmt: skip
    assert output_layer_name(model) == "5.weight"
    assert is_layer_weight(model, "5.weight") and not is_layer_weight(model, "5.bias")
    assert not is_layer_weight(model, "3.weight")  # a norm layer's scale
