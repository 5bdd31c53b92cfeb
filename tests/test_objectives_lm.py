"""Sequence objectives: next-token loss by hand, the last-token read, perplexity rows, and AdamW."""

import math

import pytest
import torch
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data import Split, prepare
from ticketlab.training import make_optimizer, objectives, train
from ticketlab.training.objectives import CLASSIFICATION, LANGUAGE_MODEL, LAST_TOKEN, evaluate


def test_language_model_loss_is_the_mean_token_cross_entropy_by_hand():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 1.0]]])  # (B=1, T=3, V=3)
    target = torch.tensor([[0, 2, 2]])

    def nll(row, t):  # -log softmax(row)[t], written out
        return -(row[t] - math.log(sum(math.exp(v) for v in row)))

    rows = logits[0].tolist()
    by_hand = [nll(r, t) for r, t in zip(rows, target[0].tolist())]
    assert LANGUAGE_MODEL.loss(logits, target).item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    total, correct, n = LANGUAGE_MODEL.sums(logits, target)
    assert total.item() == pytest.approx(sum(by_hand), rel=1e-6)
    assert (correct.item(), n) == (1, 3)  # argmaxes 0, 0 (a tie goes to the first), 1: only the first is right


def test_last_token_reads_the_last_position_and_passes_class_scores_through():
    out = torch.randn(4, 5, 7)
    target = torch.randint(0, 7, (4,))
    assert torch.equal(LAST_TOKEN.logits(out), out[:, -1])
    assert LAST_TOKEN.loss(out, target).item() == pytest.approx(CLASSIFICATION.loss(out[:, -1], target).item())
    out[:, :-1] = 100.0  # nothing before the last position counts
    assert LAST_TOKEN.sums(out, target)[1].item() == (out[:, -1].argmax(-1) == target).sum().item()
    flat = torch.randn(4, 7)
    assert torch.equal(LAST_TOKEN.logits(flat), flat)


class TinyLM(nn.Module):
    """(B, T) int64 tokens -> (B, T, V) scores: an embedding and a linear read-out per position."""

    def __init__(self, vocab: int = 5):
        super().__init__()
        self.embed, self.out = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, x):
        return self.out(self.embed(x))


def token_data(n=120, t=6, vocab=5, val_size=0):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, vocab, (n + 40, t + 1), generator=g)
    train, test = Split(seq[:n, :-1], seq[:n, 1:]), Split(seq[n:, :-1], seq[n:, 1:])
    return prepare("toy", train, test, vocab, val_size=val_size, objective=LANGUAGE_MODEL, vocab=vocab)


def test_evaluate_gives_per_token_figures_in_pieces_as_in_one_pass(monkeypatch):
    torch.manual_seed(0)
    net, data = TinyLM(), token_data()
    assert data.train.x.dtype == torch.int64 and data.vocab == 5
    whole = evaluate(net, data.train, LANGUAGE_MODEL)
    monkeypatch.setattr(objectives, "CPU_PIECE", 16)  # 120 rows: 8 pieces, their (b, T, V) scores concatenated
    pieces = evaluate(net, data.train, LANGUAGE_MODEL)
    assert pieces[0] == pytest.approx(whole[0], rel=1e-6) and pieces[1] == whole[1]
    with torch.no_grad():
        out = net(data.train.x)
    assert whole[0] == pytest.approx(LANGUAGE_MODEL.loss(out, data.train.y).item(), rel=1e-6)
    assert whole[1] == (out.argmax(-1) == data.train.y).sum().item() / (120 * 6)  # a share of all tokens


def test_perplexity_columns_only_for_language_models():
    cfg = TrainConfig(batch_size=20, steps="12it", eval_every="6it", lr=1e-2)
    torch.manual_seed(0)
    lm = train(TinyLM(), token_data(val_size=20), cfg, mask={}, data_seed=0, kernels="off")
    for row in lm.metrics:
        assert row["test_ppl"] == pytest.approx(math.exp(row["test_loss"]))
        assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))
    # early stopping reads the objective's (per-token) validation loss
    assert lm.early_stop_step == min(lm.metrics, key=lambda r: r["val_loss"])["step"]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 4, generator=g), torch.randint(0, 3, (80,), generator=g)
    plain = prepare("plain", Split(x[:60], y[:60]), Split(x[60:], y[60:]), 3)
    rows = train(nn.Linear(4, 3), plain, cfg, mask={}, data_seed=0, kernels="off").metrics
    assert not any(k.endswith("_ppl") for r in rows for k in r)


def test_adamw_decays_weights_decoupled_from_the_adaptive_step():
    def step(optimizer: str) -> float:
        p = nn.Parameter(torch.tensor([4.0]))
        opt = make_optimizer([p], TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5))
        p.grad = torch.zeros(1)
        opt.step()
        return p.item()

    assert step("adamw") == pytest.approx(4.0 * (1 - 0.1 * 0.5))  # p <- p (1 - lr wd); zero gradient, no step
    assert step("adam") == pytest.approx(4.0 - 0.1, rel=1e-5)  # L2 in the gradient: a normalised step of lr
    p = nn.Parameter(torch.zeros(2))
    assert isinstance(make_optimizer([p], TrainConfig(optimizer="adamw")), torch.optim.AdamW)
