"""Layer collapse and effective density by structure, not signs, over a zoo of module kinds."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, prune

from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.pruning import collapse, dead_outputs
from ticketlab.pruning.collapse import effective_density, effective_mask

NO_PATH = "no path from the input reaches any output"


class Head(nn.Module):
    """``body`` then a Linear output layer ``fc`` over the mean of the sequence (or the last step)."""

    def __init__(self, body: nn.Module, width: int, reduce: str = "mean"):
        super().__init__()
        self.body, self.fc, self.reduce = body, nn.Linear(width, 3), reduce

    def forward(self, x):
        h = self.body(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(h[:, -1] if self.reduce == "last" else h.mean(1))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.fc = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.attn(x, x, x)[0].mean(1))


class Embedded(nn.Module):
    """input 6 of issue 11: Embedding(50, 16) over int64 token ids, then a Linear output layer."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(50, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.emb(x).mean(1))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.fc(F.relu(self.b(F.relu(self.a(x)))))


class Raw(nn.Module):
    """A raw Parameter used through F.linear (named by pattern, e.g. ``*.kernel``)."""

    def __init__(self):
        super().__init__()
        self.kernel, self.fc = nn.Parameter(torch.randn(5, 6)), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(F.relu(F.linear(x, self.kernel)))


def seq(*layers):
    return nn.Sequential(*layers)


# kind -> (model, example, masked names, names whose pruning cuts every path, {name: rows pruned} for a cut)
ZOO = {
    "mlp": lambda: (seq(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(1, 6), ["0.weight", "2.weight"]),
    "conv1d": lambda: (
        seq(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(16, 3)),
        torch.randn(1, 2, 10),
        ["0.weight", "4.weight"],
    ),
    "conv2d": lambda: (
        seq(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
            nn.Conv2d(4, 4, 3),
            nn.GELU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ),
        torch.randn(1, 3, 9, 9),
        ["0.weight", "4.weight", "8.weight"],
    ),
    "conv3d": lambda: (
        seq(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)),
        torch.randn(1, 1, 4, 4, 4),
        ["0.weight", "3.weight"],
    ),
    "conv_transpose2d": lambda: (
        seq(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(2, 2, 2, stride=2),
            nn.ReLU(),
            nn.Conv2d(2, 2, 3),
            nn.Flatten(),
            nn.Linear(72, 3),
        ),
        torch.randn(1, 1, 4, 4),
        ["0.weight", "2.weight", "4.weight", "6.weight"],
    ),
    "lstm": lambda: (
        Head(nn.LSTM(4, 6, batch_first=True), 6, "last"),
        torch.randn(1, 5, 4),
        ["body.weight_ih_l0", "body.weight_hh_l0", "fc.weight"],
    ),
    "gru": lambda: (
        Head(nn.GRU(4, 6, batch_first=True), 6, "last"),
        torch.randn(1, 5, 4),
        ["body.weight_ih_l0", "body.weight_hh_l0", "fc.weight"],
    ),
    "bidirectional_lstm": lambda: (
        Head(nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True), 12),
        torch.randn(1, 5, 4),
        [f"body.weight_{k}_l{i}{r}" for i in (0, 1) for r in ("", "_reverse") for k in ("ih", "hh")] + ["fc.weight"],
    ),
    "multihead_attention": lambda: (Attention(), torch.randn(1, 5, 8), ["attn.in_proj_weight", "attn.out_proj.weight"]),
    "transformer_encoder_layer": lambda: (
        Head(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True), 8),
        torch.randn(1, 5, 8),
        [f"body.{n}" for n in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight")]
        + ["body.linear2.weight", "fc.weight"],
    ),
    "embedding": lambda: (Embedded(), torch.randint(0, 50, (1, 7)), ["emb.weight", "fc.weight"]),
    "tied": lambda: (Tied(), torch.randn(1, 4), ["a.weight", "fc.weight"]),
    "raw_parameter": lambda: (Raw(), torch.randn(1, 6), ["kernel", "fc.weight"]),
    "weight_norm": lambda: (
        seq(parametrizations.weight_norm(nn.Linear(6, 5)), nn.ReLU(), nn.Linear(5, 3)),
        torch.randn(1, 6),
        ["0.parametrizations.weight.original1", "2.weight"],
    ),
}
# what cuts every path without emptying the output layer: the input's weights (or the values of attention)
INPUT_CUT = {
    "mlp": ["0.weight"],
    "conv1d": ["0.weight"],
    "conv2d": ["0.weight"],
    "conv3d": ["0.weight"],
    "conv_transpose2d": ["2.weight"],
    "lstm": ["body.weight_ih_l0"],
    "gru": ["body.weight_ih_l0"],
    "bidirectional_lstm": ["body.weight_ih_l0", "body.weight_ih_l0_reverse"],
    "embedding": ["emb.weight"],
    "tied": ["a.weight"],  # both of its uses
    "raw_parameter": ["kernel"],
    "weight_norm": ["0.parametrizations.weight.original1"],
}


def build(kind):
    torch.manual_seed(0)
    model, example, names = ZOO[kind]()
    return model, example, M.full_mask(model, names)


@pytest.mark.parametrize("kind", ZOO)
def test_nothing_pruned_every_weight_is_effective_whatever_the_signs(kind):
    model, example, mask = build(kind)
    with torch.no_grad():  # every weight negative: a counter through signed weights sees nothing reach the outputs
        for p in model.parameters():
            p.copy_(-p.abs())
    assert collapse(model, mask, example) == []
    effective = effective_mask(model, mask, example)
    assert {n: int(m.sum()) for n, m in effective.items()} == {n: m.numel() for n, m in mask.items()}
    assert effective_density(model, mask, example) == 1.0
    assert dead_outputs(model, mask, example) == (0, 3)


@pytest.mark.parametrize("kind", ZOO)
def test_an_emptied_output_layer_is_collapse(kind):
    model, example, mask = build(kind)
    last = list(mask)[-1]
    mask[last] = torch.zeros_like(mask[last])
    assert collapse(model, mask, example) == [f"{last} has no weight left", NO_PATH]
    assert effective_density(model, mask, example) == 0.0


@pytest.mark.parametrize("kind", INPUT_CUT)
def test_cutting_the_input_off_is_collapse(kind):
    model, example, mask = build(kind)
    for n in INPUT_CUT[kind]:
        mask[n] = torch.zeros_like(mask[n])
    assert collapse(model, mask, example) == [f"{n} has no weight left" for n in INPUT_CUT[kind]] + [NO_PATH]
    assert dead_outputs(model, mask, example) == (3, 3) and effective_density(model, mask, example) == 0.0


def test_attention_without_its_values_is_cut_though_no_layer_is_empty():
    model, example, mask = build("multihead_attention")
    mask["attn.in_proj_weight"][16:] = False  # the value rows of the packed projection
    assert collapse(model, mask, example) == [NO_PATH]
    # queries and keys alone reach nothing either: every kept weight is ineffective
    assert effective_density(model, mask, example) == 0.0
    model, example, mask = build("multihead_attention")
    mask["attn.in_proj_weight"][:16] = False  # no queries nor keys: uniform attention still carries the values
    assert collapse(model, mask, example) == []
    assert effective_density(model, mask, example) == M.density(mask)


def test_an_embedding_model_with_a_negative_row_and_nothing_pruned_does_not_collapse():
    model, example, mask = build("embedding")
    with torch.no_grad():
        model.emb.weight[1] = -model.emb.weight[1].abs()  # the all-ones input of the old check read only token 1
    assert collapse(model, mask, example) == [] and effective_density(model, mask, example) == 1.0
    # an integer example stays integer: int32 tokens run the embedding as well
    assert collapse(model, mask, example.int()) == []


def test_a_hidden_unit_cut_off_makes_its_kept_weights_ineffective():
    model = seq(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    mask = M.full_mask(model, ["0.weight", "2.weight"])
    mask["0.weight"][0] = False  # unit 0 has no input left: its 2 kept outgoing weights do nothing
    mask["2.weight"][:, 1] = False  # unit 1 has no output left: its 3 kept incoming weights do nothing
    effective = effective_mask(model, mask, torch.randn(1, 3))
    assert effective["0.weight"].tolist() == [[False] * 3, [False] * 3, [True] * 3, [True] * 3]
    assert effective["2.weight"].tolist() == [[False, False, True, True]] * 2
    assert M.count(mask) == 15 and M.count(effective) == 10
    assert effective_density(model, mask, torch.randn(1, 3)) == 10 / 20
    assert collapse(model, mask, torch.randn(1, 3)) == []


def test_a_filter_cut_off_makes_the_next_convolutions_reading_it_ineffective():
    model = seq(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    mask = M.full_mask(model, ["0.weight", "2.weight", "4.weight"])
    mask["0.weight"][0] = False  # filter 0 reads nothing: the 2 x 3 x 3 weights of conv 2 reading it do nothing
    effective = effective_mask(model, mask, torch.randn(1, 2, 6, 6))
    assert M.count(mask) == 54 - 18 + 54 + 16 and M.count(effective) == M.count(mask) - 18
    assert not bool(effective["2.weight"][:, 0].any()) and bool(effective["2.weight"][:, 1:].all())


def test_the_users_model_weights_and_batchnorm_statistics_are_untouched():
    model, example, mask = build("conv2d")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask["0.weight"][0] = False
    effective_density(model, mask, example), collapse(model, mask, example)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training


def test_a_torch_pruned_layer_is_copied_and_counted_through_its_mask():
    model = seq(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.5)  # its `weight` is computed: deepcopy refuses it
    mask = {"0.weight_orig": model[0].weight_mask.bool(), **M.full_mask(model, ["2.weight"])}
    assert collapse(model, mask, torch.randn(1, 6)) == []
    rows_alive = int(mask["0.weight_orig"].any(1).sum())
    assert M.count(effective_mask(model, mask, torch.randn(1, 6))) == 15 + 3 * rows_alive


class Casting(nn.Module):
    """Takes uint8 images and casts them to float32 itself."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.float() / 255)


def test_a_model_casting_its_integer_input_to_float32_is_counted_in_float32():
    model = Casting()
    mask = M.full_mask(model, ["fc.weight"])
    mask["fc.weight"][:, 0] = False
    example = torch.randint(0, 256, (1, 4), dtype=torch.uint8)
    assert collapse(model, mask, example) == [] and effective_density(model, mask, example) == 9 / 12
    mask["fc.weight"][:] = False
    assert collapse(model, mask, example) == ["fc.weight has no weight left", NO_PATH]


def test_a_mask_naming_what_the_model_lacks_is_refused():
    model, example, mask = build("mlp")
    with pytest.raises(TicketlabError, match="'nope.weight'"):
        collapse(model, {"nope.weight": torch.ones(2, dtype=torch.bool)}, example)
    with pytest.raises(TicketlabError, match="cannot run the model on all-ones inputs shaped like the example"):
        collapse(model, mask, torch.randn(1, 7))  # the model takes 6 features
