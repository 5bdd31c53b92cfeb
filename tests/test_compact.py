"""Compaction: an unstructured ticket's dead units removed, the smaller network computing the same function, trained
the same way, and its weights mapped back to the full shapes."""

import copy

import pytest
import torch
from torch import nn

from ticketlab.masks import apply_mask
from ticketlab.models import create_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning.collapse import effective_mask
from ticketlab.pruning.compact import compact

CASES = {
    "lenet_300_100": ("lenet_300_100", (1, 28, 28), {}, 0.02),
    "conv_2": ("conv_2", (1, 28, 28), {"width": 0.25}, 0.03),
    "conv_2_batchnorm": ("conv_2", (1, 28, 28), {"width": 0.25, "norm": "batch"}, 0.03),
}


def ticket(case: str, seed: int = 0):
    """A registry model with nonzero biases (so dead units feed constants) and a random mask at high sparsity."""
    name, shape, kwargs, density = CASES[case]
    torch.manual_seed(seed)
    model = create_model(name, shape, 10, **kwargs)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    params = dict(model.named_parameters())
    mask = {n: torch.rand(params[n].shape) < density for n in prunable_names(model)}
    return model, mask, shape


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compacted_ticket_computes_the_masked_networks_outputs_and_maps_back(case, training):
    model, mask, shape = ticket(case)
    small, small_mask, info = compact(model, mask, shape, training=training)
    assert n_params(small) < n_params(model) // 2  # at this sparsity most units are dead
    assert all(small_mask[n].shape == p.shape for n, p in small.named_parameters() if n in small_mask)
    assert sum(int(m.sum()) for m in small_mask.values()) <= sum(int(m.sum()) for m in mask.values())
    full = apply_mask(copy.deepcopy(model), mask).eval()
    x = torch.randn(32, *shape)
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), full(x), atol=1e-5, rtol=1e-4)
    # map back: full shapes, zeros where pruned, the same function
    state = info.full_state(small.state_dict())
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(not bool(state[n][~m].any()) for n, m in mask.items())
    back = copy.deepcopy(model)
    back.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(back.eval()(x), full(x), atol=1e-5, rtol=1e-4)
    # what is removed lies on no input-to-output path of kept weights
    effective = effective_mask(model, mask, torch.zeros(1, *shape))
    for layer, rows in info.rows.items():
        gone = torch.ones(effective[f"{layer}.weight"].shape[0], dtype=torch.bool)
        gone[rows] = False
        assert not bool(effective[f"{layer}.weight"][gone].any())


def mlp_with_dead_units():
    """8-6-5-3: hidden-1 unit 0 has no kept input and bias +1 (feeds relu(1) = 1), unit 1 no kept input and bias
    -1 (feeds 0), unit 2 no kept output; hidden-2 unit 4 no kept input and bias +0.5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")}
    mask["0.weight"][[0, 1]] = False
    mask["2.weight"][:, 2] = False
    mask["2.weight"][4] = False
    with torch.no_grad():
        model[0].bias[:2] = torch.tensor([1.0, -1.0])
        model[2].bias[4] = 0.5
    return model, mask


def test_hand_made_dead_units_are_removed_and_constants_folded_for_inference_only():
    model, mask = mlp_with_dead_units()
    small, _, info = compact(model, mask, (8,))
    assert info.units["0"] == {"count": 6, "kept": 3, "dead_out": 1, "constant_removed": 2, "constant_kept": 0}
    assert info.units["2"] == {"count": 5, "kept": 4, "dead_out": 0, "constant_removed": 1, "constant_kept": 0}
    assert small[0].weight.shape == (3, 8) and small[2].weight.shape == (4, 3) and small[4].weight.shape == (3, 4)
    x = torch.randn(16, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), apply_mask(copy.deepcopy(model), mask)(x), atol=1e-6)
    # for training, a unit feeding a nonzero constant stays (its bias and its readers' weights train), the unit
    # feeding relu(-1) = 0 goes (no gradient ever reaches it)
    small, _, info = compact(model, mask, (8,), training=True)
    assert info.units["0"] == {"count": 6, "kept": 4, "dead_out": 1, "constant_removed": 1, "constant_kept": 1}
    assert info.units["2"] == {"count": 5, "kept": 5, "dead_out": 0, "constant_removed": 0, "constant_kept": 1}


@pytest.mark.parametrize("case", ["lenet_300_100", "conv_2_batchnorm"])
def test_a_training_step_on_the_compacted_model_equals_one_on_the_masked_model(case):
    model, mask, shape = ticket(case)
    small, small_mask, info = compact(model, mask, shape, training=True)
    full = apply_mask(copy.deepcopy(model), mask).train()
    small.train()
    x, y = torch.randn(32, *shape), torch.randint(0, 10, (32,))
    losses = []
    for net, m in ((full, mask), (small, small_mask)):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            params = dict(net.named_parameters())
            for n, keep in m.items():
                params[n].grad.mul_(keep)
            opt.step()
            losses.append(loss.item())
    assert losses[:2] == pytest.approx(losses[2:], rel=1e-5)
    # every parameter, removed units' included (they got no gradient); the statistics of kept channels (a removed
    # channel's running statistics keep their values from compaction time: they are never read)
    state = info.full_state(small.state_dict())
    params = dict(full.named_parameters())
    for name, want in full.state_dict().items():
        got, want = (state[name], want) if name in params else (info.small(name, state[name]), info.small(name, want))
        assert torch.allclose(got, want, atol=1e-5), name


def test_map_back_refuses_a_state_that_is_not_the_small_models():
    model, mask = mlp_with_dead_units()
    _, _, info = compact(model, mask, (8,))
    with pytest.raises(Exception, match="not in the compacted model"):
        info.full_state({"9.weight": torch.zeros(1)})


def test_export_of_an_unstructured_ticket_saves_the_compacted_network(tmp_path):
    from conftest import tiny_config  # noqa: I001

    from ticketlab.data import load_dataset
    from ticketlab.export import export_ticket, load_exported
    from ticketlab.imp import run_imp
    from ticketlab.problem import registry_problem

    cfg = tiny_config(prune={"fraction": 0.7}, imp={"levels": 3, "baselines": ()})
    run = run_imp(cfg, registry_problem(cfg, load_dataset("synthetic")), tmp_path / "run")
    info = export_ticket(run.path, 3, tmp_path / "t.pt2")
    assert info["params_after"] < info["params_before"]  # 2.7% of weights: dead units went
    assert load_exported(tmp_path / "t.pt2") is not None
