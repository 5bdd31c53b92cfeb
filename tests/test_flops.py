"""Compute accounting: forward FLOPs per example counted by hand for each layer kind, masks counting kept weights."""

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.flops import forward_flops, job_flops, training_flops
from ticketlab.models import create_model


def test_lenet_300_100_forward_flops_are_twice_its_weights_and_a_mask_counts_kept_weights():
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    x = torch.zeros(4, 1, 28, 28)
    assert forward_flops(model, x) == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    mask = {
        "fc.0.weight": torch.zeros(300, 784, dtype=torch.bool),
        "fc.1.weight": torch.ones(100, 300, dtype=torch.bool),
    }
    mask["fc.0.weight"][:, :10] = True
    assert forward_flops(model, x, mask) == 2 * (300 * 10 + 300 * 100 + 100 * 10)


def test_conv_counts_output_positions_and_transposed_conv_input_positions():
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)  # 8x8 -> 4x4
    assert forward_flops(conv, torch.zeros(2, 3, 8, 8)) == 2 * (8 * 3 * 9) * 16
    grouped = nn.Conv1d(4, 8, 3, groups=2)  # 10 -> 8 positions; each output sees 2 input channels
    assert forward_flops(grouped, torch.zeros(1, 4, 10)) == 2 * (8 * 2 * 3) * 8
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # every weight once per input position
    assert forward_flops(up, torch.zeros(1, 4, 5, 5)) == 2 * (4 * 2 * 4) * 25
    mask = {"weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool)}
    mask["weight"][0, 0, 0, 0] = True
    assert forward_flops(conv, torch.zeros(2, 3, 8, 8), mask) == 2 * 16


def test_recurrent_attention_and_embedding_layers():
    lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
    per_step = 4 * 7 * 5 + 4 * 7 * 7 + 4 * 7 * 7 + 4 * 7 * 7  # layer 0 (ih, hh), layer 1 (ih, hh)
    assert forward_flops(lstm, torch.zeros(3, 11, 5)) == 2 * per_step * 11
    gru = nn.GRU(5, 7)  # sequence first: the batch is the second dimension
    assert forward_flops(gru, torch.zeros(11, 3, 5), batch_size=3) == 2 * (3 * 7 * 5 + 3 * 7 * 7) * 11

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, tokens):
            h = self.embed(tokens)
            return self.attn(h, h, h)[0]

    model = Attend()
    tokens = torch.zeros(2, 9, dtype=torch.long)
    assert forward_flops(model, tokens) == 2 * 4 * 16 * 16 * 9  # q, k, v and output projections, 9 tokens
    mask = {"attn.in_proj_weight": torch.zeros(48, 16, dtype=torch.bool)}
    mask["attn.in_proj_weight"][16:32] = True  # only k kept
    assert forward_flops(model, tokens, mask) == 2 * 2 * 16 * 16 * 9
    assert model.training  # modes restored


def test_training_flops_follow_three_forwards_per_example_trained():
    assert training_flops(10, 100, 7) == 3 * 10 * 100 + 10 * 7
    model = create_model("mlp", (40,), 10, widths=(16, 8))
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")}
    got = job_flops(model, mask, torch.zeros(1, 40), examples_trained=500, examples_evaluated=100)
    dense = 2 * (40 * 16 + 16 * 8 + 8 * 10)
    assert got == {"train_flops": 0, "dense_flops": 3 * dense * 500 + dense * 100}
    with pytest.raises(TicketlabError, match="examples_trained"):
        job_flops(model, mask, torch.zeros(1, 40), examples_trained=-1, examples_evaluated=0)
    with pytest.raises(TicketlabError):
        forward_flops(model, torch.zeros(1, 40), {"nope.weight": torch.ones(1, dtype=torch.bool)})
