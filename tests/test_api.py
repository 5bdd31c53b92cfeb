import pytest
import torch
from torch import nn

from ticketlab import TicketlabError, find_ticket
from ticketlab.data import load_dataset

OPTS = dict(levels=2, fraction=0.5, steps="60it", eval_every="20it", batch_size=50, lr=1e-2, baselines=())


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))


def test_find_ticket_on_a_user_module(synthetic, tmp_path):
    model = _net()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = (synthetic.train.x, synthetic.train.y), (synthetic.test.x, synthetic.test.y)
    search = find_ticket(model, train, test, out=tmp_path, device="cpu", **OPTS)
    ticket = search.ticket
    assert ticket.level == 2
    # 50% per level on both layers (no separate output rate here): 25% left, exact per layer
    for m in ticket.mask.values():
        assert int(m.sum()) == m.numel() - round(0.5 * m.numel()) - round(0.5 * (m.numel() - round(0.5 * m.numel())))
    # rewound to step 0: the ticket's weights are the user's own initial weights, masked
    assert torch.equal(ticket.state["0.weight"], theta0["0.weight"] * ticket.mask["0.weight"])
    assert torch.equal(ticket.state["0.bias"], theta0["0.bias"])
    fresh = ticket.load_into(_net())
    assert bool((fresh[0].weight[~ticket.mask["0.weight"]] == 0).all())
    assert torch.equal(model.state_dict()["0.weight"], theta0["0.weight"])  # the user's model is not touched
    assert [r["level"] for r in search.rows] == [0, 1, 2]
    assert search.at(1).density > ticket.density


def test_dataloader_input_gives_the_same_ticket(synthetic, tmp_path):
    tensors = find_ticket(
        _net(),
        (synthetic.train.x, synthetic.train.y),
        (synthetic.test.x, synthetic.test.y),
        device="cpu",
        out=tmp_path / "a",
        **OPTS,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(synthetic.train.x, synthetic.train.y), 64)
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(synthetic.test.x, synthetic.test.y), 64)
    loaded = find_ticket(_net(), loader, test, device="cpu", out=tmp_path / "b", **OPTS)
    for name in tensors.ticket.mask:
        assert torch.equal(tensors.ticket.mask[name], loaded.ticket.mask[name])


def test_user_errors(synthetic):
    with pytest.raises(TicketlabError, match="unknown option 'levles'"):
        find_ticket(_net(), (synthetic.train.x, synthetic.train.y), (synthetic.test.x, synthetic.test.y), levles=3)
    with pytest.raises(TicketlabError, match="cannot take the training inputs"):
        find_ticket(nn.Linear(7, 2), (synthetic.train.x, synthetic.train.y), (synthetic.test.x, synthetic.test.y))


def test_val_size_splits_the_training_data_and_other_data_is_refused_on_resume(synthetic, tmp_path):
    train, test = (synthetic.train.x, synthetic.train.y), (synthetic.test.x, synthetic.test.y)
    search = find_ticket(_net(), train, test, out=tmp_path, device="cpu", val_size=300, **OPTS)
    metrics = (search.run_dir / "replicate_0" / "level_1" / "ticket" / "metrics.jsonl").read_text()
    assert '"val_loss"' in metrics  # early stopping uses the held-out split
    shuffled = (synthetic.test.x, synthetic.test.y.flip(0))
    with pytest.raises(TicketlabError, match="holds a different experiment"):
        find_ticket(_net(), train, shuffled, out=tmp_path, device="cpu", val_size=300, **OPTS)
    with pytest.raises(TicketlabError, match="does not apply"):
        find_ticket(_net(), train, test, init="kaiming_normal")


@pytest.mark.parametrize(
    "train, message",
    [
        (lambda x, y: (x, torch.nn.functional.one_hot(y)), r"shape \(N,\), not \(2000, 10\).*argmax"),
        (lambda x, y: (x, y.float() + 0.5), "fractional"),
        (lambda x, y: (x, y - 1), "must be >= 0"),
        (lambda x, y: (x, y + 10), "at least 20 classes"),
        (lambda x, y: (x[:0], y[:0]), "no examples"),
        (lambda x, y: (x, y[:10]), "x has 2000 examples but y has 10"),
        (lambda x, y: ("x", "y"), "cannot read str as a tensor; pass tensors or NumPy arrays"),
        (lambda x, y: 5, "expected .x, y. tensors or arrays"),
    ],
)
def test_bad_data_is_refused_in_one_line(synthetic, train, message):
    with pytest.raises(TicketlabError, match=message):
        find_ticket(_net(), train(synthetic.train.x, synthetic.train.y), (synthetic.test.x, synthetic.test.y))


def test_numpy_arrays_are_the_same_data_as_tensors_and_model_is_not_an_option(synthetic, tmp_path):
    arrays = (synthetic.train.x.numpy(), synthetic.train.y.numpy())
    test = (synthetic.test.x.numpy().astype("float64"), synthetic.test.y.numpy().astype("int32"))
    a = find_ticket(_net(), arrays, test, out=tmp_path / "a", device="cpu", **OPTS)
    b = find_ticket(
        _net(),
        (synthetic.train.x, synthetic.train.y),
        (synthetic.test.x, synthetic.test.y),
        out=tmp_path / "b",
        device="cpu",
        **OPTS,
    )
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in a.rows]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"} for r in b.rows]
    with pytest.raises(TicketlabError, match="does not apply"):
        find_ticket(_net(), arrays, test, model="mlp")
