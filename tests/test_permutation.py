import pytest
import torch
from torch import nn

from ticketlab import data as D
from ticketlab.analysis.permutation import (
    Axis,
    PermutationSpec,
    permutation_spec,
    permute,
    permute_mask,
    repair,
    weight_matching,
)
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.models import create_model
from ticketlab.pruning.units import find_units

CASES = {
    "mlp": ("mlp", (1, 6, 6), {"widths": (7, 5)}),
    "conv_bn": ("conv_2", (1, 12, 12), {"width": 0.125, "norm": "batch"}),
    "resnet": ("resnet20", (1, 28, 28), {"width": 0.25}),
}


def _model(case: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """A model whose BatchNorm parameters and statistics are random too, so a wrong permutation shows."""
    name, shape, kwargs = CASES[case]
    torch.manual_seed(seed)
    model = create_model(name, shape, 4, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(), m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
    return model.eval(), shape


def _random_perms(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(n, generator=g) for name, n in spec.sizes.items()}


def _loaded(model: nn.Module, state: dict) -> nn.Module:
    import copy

    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_permutation_keeps_the_function_and_moves_the_mask_with_it(case):
    model, shape = _model(case)
    spec = permutation_spec(model, shape)
    state = model.state_dict()
    perms = _random_perms(spec, 1)
    permuted = permute(state, perms, spec)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(_loaded(model, permuted)(x), model(x), rtol=1e-5, atol=1e-5)
    # something moved: a real permutation, not the identity on every tensor
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    # masked then permuted == permuted then masked with the permuted mask
    g = torch.Generator().manual_seed(2)
    mask = {k: torch.rand(v.shape, generator=g) < 0.5 for k, v in state.items() if k.endswith("weight")}
    masked = {k: v * mask[k] if k in mask else v for k, v in state.items()}
    moved = permute_mask(mask, perms, spec)
    assert all(moved[k].dtype == torch.bool and moved[k].sum() == mask[k].sum() for k in mask)
    after = permute(masked, perms, spec)
    assert all(torch.equal(after[k], permuted[k] * moved[k] if k in moved else permuted[k]) for k in state)


def test_resnet_spec_permutes_the_residual_stream_of_every_stage():
    model, shape = _model("resnet")
    spec = permutation_spec(model, shape)
    assert {"stage0", "stage1", "stage2"} <= set(spec.sizes)
    assert spec.sizes["stage0"] == 4 and spec.sizes["stage2"] == 16
    assert Axis("fc.weight", 1) in spec.groups["stage2"] and Axis("conv.weight", 0) in spec.groups["stage0"]
    # the hidden units of each of the 9 blocks, plus 3 streams
    assert len(spec.sizes) == 9 + 3


@pytest.mark.parametrize("case", sorted(CASES))
def test_weight_matching_recovers_a_random_permutation_exactly(case):
    model, shape = _model(case)
    spec = permutation_spec(model, shape)
    a = model.state_dict()
    b = permute(a, _random_perms(spec, 3), spec)
    perms = weight_matching(a, b, spec, seed=0)
    matched = permute(b, perms, spec)
    assert all(torch.equal(matched[k], a[k]) for k in a)


def test_golden_two_units():
    # y = w2 @ relu(w1 @ x): b is a with its two hidden units swapped
    a = {"w1": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "w2": torch.tensor([[3.0, 4.0]])}
    b = {"w1": torch.tensor([[0.0, 2.0], [1.0, 0.0]]), "w2": torch.tensor([[4.0, 3.0]])}
    spec = PermutationSpec({"h": 2}, {"h": (Axis("w1", 0), Axis("w2", 1))})
    # similarity S[i, j] = <a_i, b_j>: S = [[0 + 12, 1 + 9], [4 + 16, 0 + 12]] -> swap (24+20 > 12+12... )
    perms = weight_matching(a, b, spec)
    assert perms["h"].tolist() == [1, 0]
    assert torch.equal(permute(b, perms, spec)["w1"], a["w1"]) and torch.equal(permute(b, perms, spec)["w2"], a["w2"])
    # a mask moves with its weights: b's mask kept only b's unit 0 (a's unit 1) in w2
    assert permute_mask({"w2": torch.tensor([[True, False]])}, perms, spec)["w2"].tolist() == [[False, True]]


def test_flatten_consumer_permutes_blocks_of_per_features():
    spec = PermutationSpec({"c": 2}, {"c": (Axis("fc", 1, per=3),)})
    fc = torch.arange(6.0).reshape(1, 6)
    assert permute({"fc": fc}, {"c": torch.tensor([1, 0])}, spec)["fc"].tolist() == [[3, 4, 5, 0, 1, 2]]


def test_not_a_permutation_is_refused():
    spec = PermutationSpec({"h": 2}, {"h": (Axis("w", 0),)})
    with pytest.raises(TicketlabError, match="not a permutation"):
        permute({"w": torch.zeros(2, 2)}, {"h": torch.tensor([0, 0])}, spec)


def test_repair_gives_each_unit_the_interpolated_mean_and_std():
    data = load_dataset("synthetic")
    torch.manual_seed(0)
    model = create_model("mlp", data.input_shape, data.num_classes, widths=(6, 5)).eval()
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: torch.randn_like(v) for k, v in a.items()}
    alpha = 0.3
    xs = [x for _, x, _ in D.batches(data.train, 64, 0, 0, 3)]

    def stats(state, layer):
        model.load_state_dict(state)
        outs = []
        h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: outs.append(o))
        with torch.no_grad():
            for x in xs:
                model(x)
        h.remove()
        y = torch.cat(outs).double()
        return y.mean(0), y.std(0, unbiased=False)

    repaired = repair(model, a, b, alpha, data, batches=3, batch_size=64)
    layers = [u.layer for u in find_units(model, data.input_shape)]
    assert len(layers) == 2
    for layer in layers:
        (ma, sa), (mb, sb), (m, s) = stats(a, layer), stats(b, layer), stats(repaired, layer)
        torch.testing.assert_close(m, (1 - alpha) * ma + alpha * mb, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s, (1 - alpha) * sa + alpha * sb, rtol=1e-4, atol=1e-4)
    # plain interpolation does not have those statistics: the test can fail
    _, plain_s = stats({k: 0.7 * a[k] + 0.3 * b[k] for k in a}, layers[-1])
    assert not torch.allclose(plain_s, (1 - alpha) * stats(a, layers[-1])[1] + alpha * stats(b, layers[-1])[1])
