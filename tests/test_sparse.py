"""Sparse kernels: a CSR Linear computing, and training, exactly what the masked dense Linear does."""

import copy

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.masks import apply_mask
from ticketlab.models import create_model
from ticketlab.sparse import SparseLinear, break_even, densify, sparsify


def masked_linear(out=30, inp=50, density=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(inp, out)
    keep = torch.rand(out, inp, generator=g) < density
    keep[3] = False  # a row with nothing kept
    with torch.no_grad():
        layer.weight.mul_(keep)
    return layer, keep


@pytest.mark.parametrize("lead", [(7,), (2, 5)])
def test_sparse_linear_forward_and_gradients_equal_the_masked_dense_layer(lead):
    dense, keep = masked_linear()
    sparse = SparseLinear(dense, keep)
    assert sparse.values.numel() == int(keep.sum())
    x = torch.randn(*lead, 50, requires_grad=True)
    xs = x.detach().clone().requires_grad_(True)
    y, ys = dense(x), sparse(xs)
    assert torch.allclose(ys, y, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    ys.backward(g)
    assert torch.allclose(xs.grad, x.grad, atol=1e-5)
    assert torch.allclose(sparse.bias.grad, dense.bias.grad, atol=1e-5)
    assert torch.allclose(sparse.values.grad, dense.weight.grad[keep], atol=1e-5)  # the kept weights' gradient
    assert torch.equal(sparse.dense_weight(), dense.weight.detach())


def test_training_a_sparsified_model_matches_masked_training_and_densify_restores_it():
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    mask = {n: torch.rand(p.shape) < 0.05 for n, p in model.named_parameters() if n.endswith("weight")}
    apply_mask(model, mask)
    fast = copy.deepcopy(model)
    assert sparsify(fast, mask, always=True) == ["fc.0", "fc.1", "fc.2"]
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for net, m in ((model, mask), (fast, None)):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            for n, p in net.named_parameters():
                if m is not None and n in m:
                    p.grad.mul_(m[n])
            opt.step()
    assert densify(fast) == ["fc.0", "fc.1", "fc.2"]
    for (n, a), b in zip(model.state_dict().items(), fast.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), n


def test_sparsify_follows_the_break_even_table():
    model = nn.Sequential(nn.Linear(784, 300), nn.Linear(300, 100))
    mask = {"0.weight": torch.rand(300, 784) < 0.01, "1.weight": torch.rand(100, 300) < 0.9}
    table = {(300, 784): 0.05, (100, 300): 0.05}
    assert break_even(1000, 1000, {(300, 784): 0.05, (4096, 4096): 0.2}) == 0.05  # nearest by weight count
    assert sparsify(model, mask, table=table) == ["0"]
    assert isinstance(model[0], SparseLinear) and type(model[1]) is nn.Linear
    with pytest.raises(TicketlabError, match="shape"):
        SparseLinear(nn.Linear(3, 2), torch.ones(3, 2, dtype=torch.bool))


class _Look:
    """An observer that never reads the network mid-training (like the progress bar), noting what it is shown."""

    def __init__(self):
        self.seen = []

    def on_begin(self, model, start, end):
        pass

    def wants_model(self, step):
        return False

    def on_step(self, step, m):
        self.seen.append((type(m.fc[0]).__name__, m.fc[0].out_features))

    def on_eval(self, step, row):
        pass

    def on_end(self, m, result):
        self.seen.append((type(m.fc[0]).__name__, m.fc[0].out_features))


def _ticket():
    from conftest import tiny_config

    from ticketlab.data import load_dataset
    from ticketlab.problem import registry_problem

    cfg = tiny_config(model={"widths": (300, 100)}, train={"steps": "30it", "lr": 5e-3})
    data = load_dataset("synthetic")
    model = registry_problem(cfg, data).init_model(0)
    g = torch.Generator().manual_seed(1)
    mask = {  # the first layer at 0.8% (below its break-even; most of its units are left without inputs)
        "fc.0.weight": torch.rand(300, 20, generator=g) < 0.008,
        "fc.1.weight": torch.rand(100, 300, generator=g) < 0.5,
        "fc.2.weight": torch.rand(10, 100, generator=g) < 0.5,
    }
    return cfg, data, model, mask


def _same_training(cfg, data, model, mask, look):
    from ticketlab.training import train

    fast, dense = copy.deepcopy(model), copy.deepcopy(model)
    first = fast.fc[0]
    a = train(fast, data, cfg.train, mask=mask, data_seed=0, observers=[look])
    b = train(dense, data, cfg.train, mask=mask, data_seed=0, kernels="off")
    assert fast.fc[0] is first  # the very module, with its state-dict keys and full shapes
    assert fast.state_dict().keys() == dense.state_dict().keys()
    for (name, p), q in zip(fast.named_parameters(), dense.parameters()):
        assert p.shape == q.shape and torch.allclose(p, q, rtol=1e-4, atol=1e-5), name
    assert bool((fast.fc[0].weight[~mask["fc.0.weight"]] == 0).all())
    assert a.final_test_acc == pytest.approx(b.final_test_acc, abs=0.01)


def test_training_swaps_sparse_layers_in_and_back_and_ends_where_masked_dense_training_ends(monkeypatch):
    from ticketlab import training

    cfg, data, model, mask = _ticket()
    assert break_even(300, 20) >= 0.008 and break_even(100, 300) < 0.5
    monkeypatch.setattr(training, "compacted", lambda *a: None)  # the kernels alone
    look = _Look()
    _same_training(cfg, data, model, mask, look)
    assert look.seen[0] == ("SparseLinear", 300) and look.seen[-1] == ("Linear", 300)


def test_training_drops_dead_units_and_ends_where_masked_dense_training_ends():
    cfg, data, model, mask = _ticket()
    alive_rows = int(mask["fc.0.weight"].any(1).sum())
    look = _Look()
    _same_training(cfg, data, model, mask, look)
    # trained as a smaller network: the first layer's units without inputs (ReLU of a bias that may be > 0 keep
    # feeding a constant, so only those with bias <= 0 go), back to full size after
    assert alive_rows <= look.seen[0][1] < 300 and look.seen[-1] == ("Linear", 300)
