"""Evaluation gives the same figures however the forward passes are cut."""

import pytest
import torch

from ticketlab.data import Split
from ticketlab.models import create_model, initialize
from ticketlab.training import objectives
from ticketlab.training.objectives import evaluate


def image_split(n: int) -> Split:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return Split(x, torch.randint(0, 10, (n,), generator=g), torch.full((1, 1, 1), 1 / 64), torch.full((1, 1, 1), -2.0))


@pytest.mark.parametrize("model", ["lenet_300_100", "lenet5"])
def test_evaluation_in_pieces_gives_the_bits_of_one_pass_per_chunk(model, monkeypatch):
    net = initialize(create_model(model, (1, 28, 28), 10), "kaiming_normal", 0)
    split = image_split(1300)
    monkeypatch.setattr(objectives, "CPU_PIECE", 10**9)  # one forward pass per chunk
    whole = [evaluate(net, split, chunk=chunk) for chunk in (1300, 700)]
    monkeypatch.setattr(objectives, "CPU_PIECE", 256)  # 1300 rows: 6 pieces of 216-217; 700: 3 of 233-234
    pieces = [evaluate(net, split, chunk=chunk) for chunk in (1300, 700)]
    assert pieces == whole
    # and every example counted once: accuracy is the share of argmax hits over all 1300
    with torch.no_grad():
        hits = (net.eval()(split.inputs(slice(None))).argmax(-1) == split.y).sum().item()
    assert pieces[0][1] == hits / 1300
