import copy
import math

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.masks import apply_mask, prunable_names
from ticketlab.models import create_model
from ticketlab.structure import (
    Unit,
    add_slimming_grad,
    alive_units,
    expand,
    export,
    find_units,
    load_exported,
    save_exported,
    silent_units,
    unit_params,
    unit_scores,
)


def tiny(norm: bool = False) -> nn.Sequential:
    """Linear 3 -> 2 (two units of three weights), optionally BatchNorm, ReLU, Linear 2 -> 1."""
    layers = [nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1)]
    model = nn.Sequential(*(layers if norm else [layers[0], layers[2], layers[3]]))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 2.0], [0.0, 3.0, -4.0]]))
    return model


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm (statistics, scale, shift), so that a dead channel's removal is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


# ---- scores, alive units, masks --------------------------------------------------------------------------------


def test_unit_scores_golden():
    model = tiny(norm=True)
    units = find_units(model, (3,))
    mask = {"0.weight": torch.tensor([[True, True, False], [True, True, True]])}
    l1 = unit_scores(model, units, "l1", mask)["0"]
    l2 = unit_scores(model, units, "l2", mask)["0"]
    assert torch.equal(l1, torch.tensor([3.0, 7.0]))  # |1| + |-2| (the 2 is pruned); |3| + |-4|
    assert torch.allclose(l2, torch.tensor([math.sqrt(5.0), 5.0]))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([-0.5, 2.0]))
    assert torch.equal(unit_scores(model, units, "bn", mask)["0"], torch.tensor([0.5, 2.0]))
    with pytest.raises(TicketlabError, match="no BatchNorm"):
        unit_scores(tiny(), find_units(tiny(), (3,)), "bn", {})
    with pytest.raises(TicketlabError, match="unknown unit score"):
        unit_scores(model, units, "taylor", mask)


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


# ---- export ----------------------------------------------------------------------------------------------------


def structured_ticket(model: nn.Module, shape: tuple[int, ...], seed: int = 0):
    """Units with 25-50% of each layer alive, plus 30% of the remaining weights pruned at random."""
    g = torch.Generator().manual_seed(seed)
    units = find_units(model, shape)
    params = dict(model.named_parameters())
    mask = {n: torch.rand(params[n].shape, generator=g) > 0.3 for n in prunable_names(model)}
    alive = {}
    for u in units:
        keep = torch.zeros(u.count, dtype=torch.bool)
        keep[torch.randperm(u.count, generator=g)[: max(1, math.ceil(0.4 * u.count))]] = True
        alive[u.layer] = keep
    return units, expand(units, alive, model, mask)


def expected_params(model: nn.Module, units: list[Unit], alive: dict[str, torch.Tensor]) -> int:
    """Parameters left once each dead unit's row / filter, bias, BatchNorm entries and consumer inputs are gone."""
    rows = {u.layer: int(alive[u.layer].sum()) for u in units}
    cols = {c: int(alive[u.layer].sum()) * per for u in units for c, per in u.consumers}
    norms = {u.norm: rows[u.layer] for u in units if u.norm}
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out, inp = rows.get(name, m.weight.shape[0]), cols.get(name, m.weight.shape[1])
            total += out * inp * m.weight[0, 0].numel() + (out if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * norms.get(name, m.num_features)
    return total


CASES = {
    "mlp": ("mlp", (40,), {"widths": (16, 12)}),
    "conv_2": ("conv_2", (1, 28, 28), {"width": 0.125}),
    "vgg11": ("vgg11", (3, 32, 32), {"width": 0.125}),
    "resnet20": ("resnet20", (3, 32, 32), {"width": 0.25}),
    "mnist1d_cnn": ("mnist1d_cnn", (40,), {"channels": 8}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_removes_dead_units_and_computes_the_same_function(case):
    name, shape, kwargs = CASES[case]
    model = randomise_batchnorm(create_model(name, shape, 10, **kwargs))
    units, mask = structured_ticket(model, shape)
    alive = alive_units(units, mask)
    assert all(0.25 <= float(a.float().mean()) <= 0.5 for a in alive.values())
    small = export(model, mask, shape)
    assert type(small) is type(model) and small.training == model.training  # the user's class, in its mode
    small.eval()
    masked = apply_mask(copy.deepcopy(model), mask).eval()
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5)
    modules = dict(small.named_modules())
    assert [modules[u.layer].weight.shape[0] for u in units] == [int(a.sum()) for a in alive.values()]
    assert n_params(small) == expected_params(model, units, alive) < n_params(model)


def test_export_golden_parameter_counts():
    mlp = create_model("mlp", (40,), 10, widths=(8, 6))
    units = find_units(mlp, (40,))
    mask = expand(units, {"fc.0": torch.arange(8) < 3, "fc.1": torch.arange(6) < 2}, mlp, {})
    assert n_params(export(mlp, mask, (40,))) == (40 * 3 + 3) + (3 * 2 + 2) + (2 * 10 + 10)
    conv = create_model("conv_2", (1, 28, 28), 10, width=0.125)  # conv 8, conv 8, pool, fc 32, 32, 10
    units = find_units(conv, (1, 28, 28))
    keep = {"features.0": 3, "features.3": 2, "fc.0": 10, "fc.1": 8}
    mask = expand(units, {u.layer: torch.arange(u.count) < keep[u.layer] for u in units}, conv, {})
    # 3x3 filters; after the pool each filter owns 14 x 14 inputs of fc.0
    expected = (3 * 1 * 9 + 3) + (2 * 3 * 9 + 2) + (10 * 2 * 196 + 10) + (8 * 10 + 8) + (10 * 8 + 10)
    assert n_params(export(conv, mask, (1, 28, 28))) == expected


def test_export_of_a_layer_with_no_units_left_is_a_user_error():
    model = create_model("mlp", (40,), 10, widths=(8, 6))
    units = find_units(model, (40,))
    mask = expand(units, {"fc.1": torch.zeros(6, dtype=torch.bool)}, model, {})
    with pytest.raises(TicketlabError, match="fc.1 has no units left; the network is disconnected"):
        export(model, mask, (40,))


@pytest.mark.parametrize("case", ["mlp", "mnist1d_cnn"])
def test_saved_export_loads_with_the_same_outputs_for_any_batch_size(case, tmp_path):
    name, shape, kwargs = CASES[case]
    model = create_model(name, shape, 10, **kwargs)
    units, mask = structured_ticket(model, shape)
    small = export(model, mask, shape).train()
    save_exported(small, tmp_path / "ticket.pt2", shape)
    assert small.training  # saving exports in eval mode but leaves the model's mode alone
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.pt2"]  # no temporary file left behind
    loaded = load_exported(tmp_path / "ticket.pt2")
    small.eval()
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            assert torch.allclose(loaded(x), small(x), atol=1e-6)
    with pytest.raises(TicketlabError, match="no exported model"):
        load_exported(tmp_path / "missing.pt2")


def test_a_unit_with_no_weights_but_a_live_bias_is_not_silent_and_export_keeps_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.5, 0.0, -0.2]))
    units = find_units(model, (4,))
    # rows 0 and 1 pruned as weights (unstructured), their biases kept: unit 0 still feeds relu(0.5) forward
    mask = {"0.weight": torch.tensor([[False] * 4, [False] * 4, [True] * 4]), "2.weight": torch.ones(2, 3) > 0}
    assert silent_units(model, units, mask)["0"].tolist() == [False, True, False]  # unit 1: bias 0
    small = export(model, mask, (4,))
    assert small[0].out_features == 2 and small[2].in_features == 2
    x = torch.randn(5, 4)
    masked = apply_mask(copy.deepcopy(model), mask)
    assert torch.allclose(small(x), masked(x), atol=1e-6)
