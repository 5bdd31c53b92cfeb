"""Export: a structured ticket as a physically smaller model computing the same function, saved and loaded."""

import copy
import math

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.export import export, load_exported, save_exported
from ticketlab.masks import apply_mask
from ticketlab.models import create_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning import Unit, alive_units, expand, find_units, silent_units


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
