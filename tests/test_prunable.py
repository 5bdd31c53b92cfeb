"""The one table of which tensors of which module types are prunable."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils import prune as torch_prune

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.prunable import (
    LAYERS,
    adopt,
    coverage_line,
    first_layer_name,
    is_layer_weight,
    layer_kinds,
    not_pruned,
    output_layer_name,
    prunable_names,
    to_torch_pruning,
)


def test_prunable_names_biases_and_ignore():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert prunable_names(model, prune_biases=True) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert prunable_names(model, ignore=["2"]) == ["0.weight"]
    assert output_layer_name(model.eval(), torch.randn(2, 3)) == "2.weight"
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
    assert is_layer_weight(model, "5.weight") and not is_layer_weight(model, "5.bias")
    assert not is_layer_weight(model, "3.weight")  # a norm layer's scale


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.out(self.b(torch.relu(self.a(x))))


def test_a_tied_weight_is_one_prunable_tensor_counted_once():
    model = Tied()
    names = prunable_names(model)
    assert names == ["a.weight", "out.weight"]  # before: a.weight and b.weight, then KeyError in the mask code
    mask = M.full_mask(model, names)
    assert M.size(mask) == 64 + 24
    assert not_pruned(model, names) == (8 + 8 + 3, 64 + 8 + 8 + 24 + 3)  # the shared 64 counted once


class HeadFirst(nn.Module):
    """The head is defined before the body it follows."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(20, 16), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


def test_the_output_and_first_layers_go_by_the_forward_pass_not_by_definition_order():
    model, x = HeadFirst(), torch.randn(2, 20)
    assert prunable_names(model) == ["head.weight", "body.0.weight"]
    assert output_layer_name(model, x) == "head.weight"  # before: body.0.weight, the last defined
    assert first_layer_name(model, x) == "body.0.weight"


class TiedHead(nn.Module):
    """A language-model-style head tied to the embedding, used through F.linear."""

    def __init__(self):
        super().__init__()
        self.emb, self.mix = nn.Embedding(50, 16), nn.Linear(16, 16)

    def forward(self, tokens):
        return F.linear(torch.relu(self.mix(self.emb(tokens).mean(1))), self.emb.weight)


def test_the_output_layer_is_found_through_functional_use_and_ties():
    model, x = TiedHead(), torch.randint(0, 50, (2, 5))
    names = prunable_names(model, embeddings=True)
    assert names == ["emb.weight", "mix.weight"]
    assert output_layer_name(model, x, names) == "emb.weight"
    assert prunable_names(model) == ["mix.weight"]  # embeddings only when asked


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (nn.ConvTranspose2d(2, 3, 3), ["weight"]),
        (nn.Bilinear(3, 4, 5), ["weight"]),
        (
            nn.LSTM(4, 8, num_layers=2, bidirectional=True, proj_size=3),
            [
                "weight_ih_l0",
                "weight_hh_l0",
                "weight_hr_l0",
                "weight_ih_l0_reverse",
                "weight_hh_l0_reverse",
                "weight_hr_l0_reverse",
                "weight_ih_l1",
                "weight_hh_l1",
                "weight_hr_l1",
                "weight_ih_l1_reverse",
                "weight_hh_l1_reverse",
                "weight_hr_l1_reverse",
            ],
        ),
        (nn.GRU(4, 8), ["weight_ih_l0", "weight_hh_l0"]),
        (nn.RNN(4, 8), ["weight_ih_l0", "weight_hh_l0"]),
        (nn.MultiheadAttention(8, 2), ["in_proj_weight", "out_proj.weight"]),
        (
            nn.MultiheadAttention(8, 2, kdim=4, vdim=6),
            ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"],
        ),
    ],  # fmt: skip
)
def test_every_weight_matrix_of_conv_transpose_recurrent_and_attention_layers_is_prunable(model, expected):
    assert prunable_names(model) == expected
    # every parameter is either pruned or a bias, so nothing is left out of the density silently
    assert all("bias" in n for n, _ in model.named_parameters() if n not in expected)


def test_a_raw_parameter_is_pruned_when_a_pattern_names_it():
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.kernel = nn.Linear(8, 8), nn.Parameter(torch.randn(3, 8))

        def forward(self, x):
            return F.linear(torch.relu(self.body(x)), self.kernel)

    model = Raw()
    assert prunable_names(model) == ["body.weight"]
    assert prunable_names(model, patterns=["*kernel"]) == ["body.weight", "kernel"]
    assert output_layer_name(model, torch.randn(2, 8), ["body.weight", "kernel"]) == "kernel"
    with pytest.raises(TicketlabError, match="--prunable 'w_\\*' names no parameter"):
        prunable_names(model, patterns=["w_*"])


def test_weight_norm_and_spectral_norm_are_pruned_through_their_original():
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(8, 8)), nn.ReLU(), parametrizations.spectral_norm(nn.Linear(8, 3))
    )
    names = prunable_names(model)
    assert names == ["0.parametrizations.weight.original1", "2.parametrizations.weight.original"]
    assert output_layer_name(model, torch.randn(2, 8), names) == names[1]
    mask = {n: torch.rand(p.shape) > 0.5 for n, p in model.named_parameters() if n in names}
    M.apply_mask(model, mask)
    with torch.no_grad():  # the weights the layers compute are exactly zero where the originals are pruned
        assert bool((model[0].weight[~mask[names[0]]] == 0).all())
        assert bool((model[2].weight[~mask[names[1]]] == 0).all())
    assert is_layer_weight(model, names[0]) and not is_layer_weight(model, "0.parametrizations.weight.original0")


def test_a_parametrisation_that_would_move_pruned_weights_is_refused_in_one_line():
    class Symmetric(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).T

    model = nn.Sequential(nn.Linear(8, 8))
    parametrize.register_parametrization(model[0], "weight", Symmetric())
    with pytest.raises(TicketlabError, match="0.weight is parametrised by Symmetric.*remove_parametrizations"):
        prunable_names(model)
    assert prunable_names(model, ignore=["0"]) == []


def test_a_model_pruned_with_torch_prune_is_adopted_with_its_mask_and_exported_back():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    expected = model[0].weight_mask.bool().clone()
    with pytest.raises(TicketlabError, match="adopt"):
        prunable_names(model)
    clean, masks = adopt(model)
    assert list(masks) == ["0.weight"] and torch.equal(masks["0.weight"], expected)
    assert hasattr(model[0], "weight_orig")  # the caller's model is left as it was
    assert prunable_names(clean) == ["0.weight", "2.weight"]
    assert bool((clean[0].weight[~expected] == 0).all())
    to_torch_pruning(clean, masks)  # and back: PyTorch's own pruning, the same mask
    assert torch.equal(clean[0].weight_mask.bool(), expected)
    assert torch.equal(clean(torch.ones(1, 8)), model(torch.ones(1, 8)))


def test_the_deprecated_hook_weight_norm_is_refused_with_the_fix():
    model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(4, 4)))
    with pytest.raises(TicketlabError, match="parametrizations.weight_norm"):
        prunable_names(model)


def test_the_coverage_line_says_what_is_not_pruned():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    line = coverage_line(model, prunable_names(model))
    assert "not pruned: 42 of the model's 58 weights (72.41%) in 2 tensors: 0.weight (40), 2.bias (2)" in line
    assert coverage_line(model, [n for n, _ in model.named_parameters()]) == "pruning all 58 weights of the model"
