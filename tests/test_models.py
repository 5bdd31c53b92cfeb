import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks import output_layer_name, prunable_names
from ticketlab.models import INIT_SCHEMES, create_model, initialize, model_names

SHAPES = {"mnist1d": (40,), "image": (1, 28, 28)}


@pytest.mark.parametrize("name", sorted(model_names()))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_model_forward_prunable_set_and_seeded_init(name, shape):
    input_shape = SHAPES[shape]
    model = create_model(name, input_shape, 7)
    assert model(torch.randn(5, *input_shape)).shape == (5, 7)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    assert names and all(n.endswith("weight") and params[n].dim() >= 2 for n in names)
    assert output_layer_name(model) == names[-1] and params[names[-1]].shape[0] == 7
    for scheme in INIT_SCHEMES:
        a = initialize(create_model(name, input_shape, 7), scheme, seed=3).state_dict()
        b = initialize(create_model(name, input_shape, 7), scheme, seed=3).state_dict()
        c = initialize(create_model(name, input_shape, 7), scheme, seed=4).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_glorot_normal_has_the_glorot_variance():
    model = initialize(create_model("lenet_300_100", (1, 28, 28), 10), "glorot_normal", 0)
    w = model.fc[0].weight.detach()
    assert abs(float(w.std()) - (2 / (784 + 300)) ** 0.5) < 1e-3
    assert float(model.fc[0].bias.detach().abs().max()) == 0.0


def test_widths_and_errors():
    assert [layer.out_features for layer in create_model("mlp", (40,), 10, widths=(64, 32, 16)).fc] == [64, 32, 16, 10]
    assert (
        sum(
            p.numel()
            for n, p in create_model("lenet_300_100", (1, 28, 28), 10).named_parameters()
            if n.endswith("weight")
        )
        == 266_200
    )
    with pytest.raises(TicketlabError, match="unknown model"):
        create_model("vgg99", (40,), 10)
    with pytest.raises(TicketlabError, match="takes no argument"):
        create_model("mnist1d_cnn", (40,), 10, widths=(3,))
