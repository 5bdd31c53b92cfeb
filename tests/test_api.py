import gc
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from ticketlab import TicketlabError, find_ticket
from ticketlab.data import Dataset, load_dataset
from ticketlab.models import create_model, initialize
from ticketlab.problem import user_problem
from ticketlab.store import load_tensors
from ticketlab.user_data import tensors_from

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
        (lambda x, y: (x, torch.nn.functional.one_hot(y)), r"^train: y has shape \(2000, 10\).*y.argmax\(1\)$"),
        (lambda x, y: (x, y.float() + 0.5), "^train: y must hold class ids; it has fractional values"),
        (lambda x, y: (x, y - 1), r"^train: labels must be class ids in \[0, 10\) .*; y has -1"),
        (
            lambda x, y: (x, y + 10),
            r"^train: labels must be class ids in \[0, 10\) .*y has 19. Give the model at least",
        ),
        (lambda x, y: (x, y.float() / 10), r"^train: y must hold class ids; it has fractional values .* truncated"),
        (
            lambda x, y: (x, y[:, None]),
            r"^train: y has shape \(2000, 1\); pass one class id per example, y.view\(-1\)$",
        ),
        (lambda x, y: (x[:0], y[:0]), "no examples"),
        (lambda x, y: (x, y[:10]), "x has 2000 examples but y has 10"),
        (lambda x, y: ("x", "y"), "cannot read str as a tensor; pass tensors or NumPy arrays"),
        (lambda x, y: 5, "^train: expected .x, y. tensors or NumPy arrays, .*; got int$"),
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


# ---- inputs 5, 8, 9, 10, 11 of issue 11: the caller's model, data and outputs ----------------------------------

TINY = dict(levels=1, fraction=0.5, steps="4it", eval_every="4it", batch_size=20, lr=1e-2, baselines=(), device="cpu")
G = torch.Generator().manual_seed(0)
XS = torch.randn(200, 8, generator=G)
YS = XS[:, :3].argmax(1)
TRAIN, TEST = (XS[:160], YS[:160]), (XS[160:], YS[160:])


def _small():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


class WithHidden(nn.Module):
    def __init__(self, output="tuple"):
        super().__init__()
        self.body, self.head, self.output = nn.Linear(8, 16), nn.Linear(16, 3), output

    def forward(self, x):
        h = torch.relu(self.body(x))
        if self.output == "tuple":
            return self.head(h), h
        return {"logits" if self.output == "dict" else "scores": self.head(h), "hidden": h}


def test_input_5_a_float_model_given_integer_inputs_is_told_to_convert_them():
    # before: integer inputs were cast to float32 (uint8 kept raw, unscaled); now they stay integer, and a model
    # that needs floats says so at the shape check
    images = (torch.randint(0, 256, (160, 8), dtype=torch.uint8), YS[:160])
    with pytest.raises(TicketlabError, match=r"cannot take the training inputs .*integer .*x.float\(\) / 255"):
        find_ticket(_small(), images, (images[0][:40], images[1][:40]), **TINY)


def test_input_5_integer_token_ids_train_an_embedding_model():
    ids = torch.randint(0, 50, (200, 6), generator=G)
    labels = ids[:, 0] % 3
    search = find_ticket(Tokens(), (ids[:160], labels[:160]), (ids[160:], labels[160:]), **TINY)
    assert [r["level"] for r in search.rows] == [0, 1]


def test_input_8_lazy_modules_are_materialised_and_the_callers_model_is_left_lazy():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3))  # before: "uninitialized parameter"
    search = find_ticket(model, TRAIN, TEST, **TINY)
    assert search.ticket.mask["0.weight"].shape == (16, 8)
    assert isinstance(model[0], nn.LazyLinear)  # the caller's model is not touched
    search.ticket.load_into(model)  # and takes the ticket
    assert torch.equal(model[0].weight, search.ticket.state["0.weight"])


@pytest.mark.parametrize("output", ["tuple", "dict"])
def test_input_9_a_model_returning_logits_and_hidden_runs_imp(output):
    search = find_ticket(WithHidden(output), TRAIN, TEST, **{**TINY, "criterion": "snip"})
    assert [r["level"] for r in search.rows] == [0, 1]


def test_input_9_outputs_are_read_by_the_rule_or_output_fn_before_training():
    # (logits, hidden): the labels are checked against the width of the logits, 3
    with pytest.raises(TicketlabError, match=r"^train: labels must be class ids in \[0, 3\) .*y has 3"):
        find_ticket(WithHidden("tuple"), (TRAIN[0], TRAIN[1] + 1), TEST, **TINY)
    with pytest.raises(TicketlabError, match="cannot find the class scores .*'hidden', 'scores'.* pass output_fn"):
        find_ticket(WithHidden("scores"), TRAIN, TEST, **TINY)
    with pytest.raises(TicketlabError, match=r"class scores of shape \(N, classes\); for 2 examples it gave \(3,\)"):
        find_ticket(WithHidden("scores"), TRAIN, TEST, output_fn=lambda out: out["scores"][0], **TINY)


def test_input_9_test_inputs_of_another_width_and_batchnorm_with_batch_size_1_are_refused():
    with pytest.raises(
        TicketlabError, match=r"^test: examples have shape \(5,\) but the training examples have \(8,\)$"
    ):
        find_ticket(_small(), TRAIN, (TEST[0][:, :5], TEST[1]), **TINY)
    bn = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(TicketlabError, match="^batch_size 1 cannot train the BatchNorm layer '1', .*batch_size >= 2$"):
        find_ticket(bn, TRAIN, TEST, **{**TINY, "batch_size": 1})


def test_input_9_numpy_data_and_dict_dataloaders_give_the_tensors_ticket(tmp_path):
    class Dicts(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input": self.x[i], "label": self.y[i]}

    loader = lambda x, y: torch.utils.data.DataLoader(Dicts(x, y), batch_size=32)  # noqa: E731
    a = find_ticket(_small_seeded(), TRAIN, TEST, out=tmp_path / "a", **TINY)
    b = find_ticket(_small_seeded(), loader(*TRAIN), loader(*TEST), out=tmp_path / "b", **TINY)
    c = find_ticket(_small_seeded(), tuple(t.numpy() for t in TRAIN), tuple(t.numpy() for t in TEST), **TINY)
    for other in (b, c):
        assert all(torch.equal(a.ticket.mask[n], other.ticket.mask[n]) for n in a.ticket.mask)


def _small_seeded():
    torch.manual_seed(0)
    return _small()


def _user_init(seed):
    model = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 3))  # 2048 weights: std to within 0.01
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model


def test_input_10_a_factory_gives_replicates_and_reinit_the_users_init():
    opts = {**TINY, "replicates": 2, "baselines": ("reinit",)}
    search = find_ticket(_user_init, TRAIN, TEST, **opts)
    rep0, rep1 = (search.run.ticket(0, r).state["0.weight"] for r in (0, 1))
    reinit = load_tensors(search.run.job(1, 1, "reinit").init)["0.weight"]
    assert not torch.equal(rep0, rep1)
    # the user's normal(0, 0.5) init in both: before, 0.5 / std was 2.4 (PyTorch's default init re-drawn)
    for weights in (rep1, reinit[reinit != 0]):
        assert abs(float(weights.std()) - 0.5) < 0.03
    # an instance: PyTorch's default init, kaiming-uniform with a = sqrt(5): std 1 / sqrt(3 * 8)
    instance = find_ticket(_user_init(0), TRAIN, TEST, **opts).run.ticket(0, 1).state["0.weight"]
    assert abs(float(instance.std()) - 1 / math.sqrt(24)) < 0.02


def test_input_10_the_factory_must_return_a_module_and_be_deterministic():
    with pytest.raises(TicketlabError, match="^model must be an nn.Module or a factory .seed -> nn.Module., not int$"):
        find_ticket(5, TRAIN, TEST, **TINY)
    with pytest.raises(TicketlabError, match="^the model factory must return an nn.Module; it returned str$"):
        find_ticket(lambda seed: "net", TRAIN, TEST, **TINY)
    draws = iter(range(100))
    with pytest.raises(TicketlabError, match="gave different weights for the same seed"):
        find_ticket(lambda seed: torch.manual_seed(next(draws)) and _small(), TRAIN, TEST, **TINY)


class Raw(nn.Module):
    """A parameter no reset_parameters re-draws, used through F.linear."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(3, 16))

    def forward(self, h):
        return nn.functional.linear(h, self.kernel)


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.proj = parametrizations.weight_norm(nn.Linear(16, 16))
        self.raw = Raw()

    def forward(self, x):
        h = self.embed(x)[:, None]
        h = self.lstm(self.attn(h, h, h)[0])[0][:, 0]
        return self.raw(self.proj(self.norm(h)))


def test_input_10_an_instance_re_draws_every_parameter_and_names_what_nothing_re_draws():
    torch.manual_seed(0)
    model = Zoo()
    with torch.no_grad():
        for p in model.parameters():  # the user's own values everywhere, LayerNorm and biases included
            p.add_(torch.randn_like(p))
    split = tensors_from(TRAIN)
    data = Dataset("d", split, split, None, 3)
    warnings = []
    problem = user_problem(model, data, seed=0, warn=warnings.append)
    first, second = problem.init_model(0), problem.init_model(1)
    problem.fresh_model(7)
    a, b = dict(first.named_parameters()), dict(second.named_parameters())
    assert {n for n in a if torch.equal(a[n], b[n])} == {"raw.kernel"}
    # MultiheadAttention's packed projection (its own _reset_parameters) and the weight-normed layer's originals
    assert not torch.equal(a["attn.in_proj_weight"], b["attn.in_proj_weight"])
    assert not torch.equal(a["proj.parametrizations.weight.original1"], b["proj.parametrizations.weight.original1"])
    assert len(warnings) == 1  # once per run, however many re-draws
    assert (
        "leaves 1 parameter(s) as they are" in warnings[0] and "reset_parameters re-draws: raw.kernel;" in warnings[0]
    )


def test_registered_models_default_init_draws_as_before():
    model = create_model("mlp", (20,), 10, widths=(32, 16))
    expected = create_model("mlp", (20,), 10, widths=(32, 16))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        for m in expected.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    initialize(model, "default", 3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected.parameters()))


def test_input_11_no_output_no_leftovers_and_no_such_level(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    search = find_ticket(_small(), TRAIN, TEST, **TINY)  # progress=False: before, a line per job on stderr
    assert capfd.readouterr() == ("", "")
    assert search.run_dir.parent == tmp_path and search.run_dir.exists()
    with pytest.raises(TicketlabError, match="^no such level 7: this run has levels 0..1$"):
        search.at(7)  # before: "has not finished"
    assert search.at(1).density == 0.5
    del search
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # before: a ticketlab-* directory per call
