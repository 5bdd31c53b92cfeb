"""Structured units: which layers' neurons and filters can be removed (torch.fx), and masks over them."""

import copy

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.pruning import Unit, add_slimming_grad, alive_units, expand, find_units, unit_params


def tiny(norm: bool = False) -> nn.Sequential:
    """Linear 3 -> 2 (two units of three weights), optionally BatchNorm, ReLU, Linear 2 -> 1."""
    layers = [nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1)]
    model = nn.Sequential(*(layers if norm else [layers[0], layers[2], layers[3]]))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 2.0], [0.0, 3.0, -4.0]]))
    return model


# ---- find_units ------------------------------------------------------------------------------------------------


def test_mlp_hidden_layers_are_units_and_the_output_layer_is_not():
    units = find_units(create_model("mlp", (40,), 10, widths=(8, 6)), (40,))
    assert units == [Unit("fc.0", 8, None, (("fc.1", 1),)), Unit("fc.1", 6, None, (("fc.2", 1),))]


def test_conv_flatten_linear_consumer_reads_h_times_w_features_per_filter():
    units = find_units(create_model("conv_2", (3, 32, 32), 10, width=0.125), (3, 32, 32))
    # conv 8 -> conv 8 -> 2x2 max-pool -> flatten: each filter owns 16 x 16 inputs of fc.0
    assert units == [
        Unit("features.0", 8, None, (("features.3", 1),)),
        Unit("features.3", 8, None, (("fc.0", 256),)),
        Unit("fc.0", 32, None, (("fc.1", 1),)),
        Unit("fc.1", 32, None, (("fc.2", 1),)),
    ]


def test_vgg_units_record_their_batchnorm_and_tracing_leaves_the_model_alone():
    model = create_model("vgg11", (3, 32, 32), 10, width=0.125).train()
    before = copy.deepcopy(model.state_dict())
    units = find_units(model, (3, 32, 32))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [u.layer for u in units] == convs  # every conv, the last one through the global average pool
    assert [u.norm for u in units] == [f"features.{int(c.split('.')[1]) + 1}" for c in convs]
    assert units[-1].consumers == (("fc", 1),)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resnet_only_block_first_convs_are_units():
    units = find_units(create_model("resnet20", (3, 32, 32), 10, width=0.25), (3, 32, 32))
    assert [(u.layer, u.norm, u.consumers) for u in units] == [
        (f"blocks.{i}.conv1", f"blocks.{i}.bn1", ((f"blocks.{i}.conv2", 1),)) for i in range(9)
    ]


def test_conv1d_model_units_reach_the_output_layer_through_a_flatten():
    units = find_units(create_model("mnist1d_cnn", (40,), 10, channels=6), (40,))
    # lengths 40 -> 19 -> 10 -> 5 after three stride-2 convs
    assert [(u.layer, u.consumers) for u in units] == [
        ("conv.0", (("conv.1", 1),)),
        ("conv.1", (("conv.2", 1),)),
        ("conv.2", (("fc", 5),)),
    ]


class _Two(nn.Module):
    """Linear a, then ``between``, then Linear b."""

    def __init__(self, between):
        super().__init__()
        self.a, self.b, self.between = nn.Linear(4, 4), nn.Linear(4, 2), between

    def forward(self, x):
        return self.b(self.between(self.a(x), x))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if x.sum() > 0:
            h = h * 2
        return self.b(h)


@pytest.mark.parametrize(
    "between, shape, unit",
    [
        (lambda h, x: torch.tanh(h), (4,), True),
        (lambda h, x: nn.functional.leaky_relu(h).flatten(1), (4,), True),
        (lambda h, x: torch.sigmoid(h), (4,), False),  # sigmoid(0) = 0.5: a pruned unit would still feed b
        (lambda h, x: torch.relu(h) + x, (4,), False),  # a residual add mixes it with the input
        (lambda h, x: torch.cat([h, x], 1)[:, :4], (4,), False),
        (lambda h, x: h.mean(1), (3, 4), True),  # (B, 3, 4): a mean over the 3 rows keeps the units apart
        (lambda h, x: h.mean(2), (4, 4), False),  # (B, 4, 4): a mean over the units mixes them
    ],
)
def test_a_layer_is_a_unit_layer_only_if_its_units_reach_a_consumer_zero_and_unmixed(between, shape, unit):
    assert find_units(_Two(between), shape) == ([Unit("a", 4, None, (("b", 1),))] if unit else [])


def test_groupnorm_mixes_channels():
    grouped = find_units(create_model("conv_4", (3, 32, 32), 10, width=0.125, norm="group"), (3, 32, 32))
    assert [u.layer for u in grouped] == ["fc.0", "fc.1"]  # GroupNorm mixes the channels of a group


def test_untraceable_model_is_a_user_error():
    with pytest.raises(TicketlabError, match="torch.fx.*Unstructured pruning still works"):
        find_units(_Branchy(), (4,))


# ---- alive units, masks ----------------------------------------------------------------------------------------


def test_unit_params_are_weight_bias_and_batchnorm_affine():
    model = tiny(norm=True)
    assert unit_params(find_units(model, (3,)), model) == {"0": ["0.weight", "0.bias", "1.weight", "1.bias"]}


def test_expand_composes_with_unstructured_mask_and_never_revives():
    model = tiny(norm=True)
    units = find_units(model, (3,))
    mask = {"0.weight": torch.tensor([[True, False, True], [False, False, False]]), "3.weight": torch.ones(1, 2) > 0}
    alive = alive_units(units, mask)
    assert torch.equal(alive["0"], torch.tensor([True, False]))  # unit 1 has no weight left
    assert torch.equal(alive_units(units, {})["0"], torch.tensor([True, True]))  # unmasked: all alive
    full = expand(units, {"0": torch.tensor([True, True])}, model, mask)  # "alive" cannot revive unit 1's weights
    assert torch.equal(full["0.weight"], mask["0.weight"])
    full = expand(units, {"0": torch.tensor([False, True])}, model, mask)  # kill unit 0 instead
    assert not full["0.weight"].any()
    for companion in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(full[companion], torch.tensor([False, True]))
    # the consumer's column that read unit 0 goes too (it would only multiply zero); nothing else changes
    assert torch.equal(full["3.weight"], torch.tensor([[False, True]]))
    assert torch.equal(mask["0.weight"][0], torch.tensor([True, False, True]))  # the input mask is not modified


def test_add_slimming_grad_golden():
    model = tiny(norm=True)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0]))
    model[1].weight.grad = torch.tensor([0.1, 0.1])
    model[0].weight.grad = torch.zeros(2, 3)
    add_slimming_grad(model, 0.01)
    assert torch.allclose(model[1].weight.grad, torch.tensor([0.11, 0.09]))
    assert torch.equal(model[0].weight.grad, torch.zeros(2, 3))  # only BatchNorm scales are penalised
    add_slimming_grad(model, 0.0)
    assert torch.allclose(model[1].weight.grad, torch.tensor([0.11, 0.09]))
    model[1].weight.grad = None
    add_slimming_grad(model, 0.01)  # no gradient yet: nothing to add to
    assert model[1].weight.grad is None
