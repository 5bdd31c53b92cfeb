"""IMP through the Python API on sequence models: a small Transformer encoder over a synthetic token task (the sum
of 5 tokens mod 4, on held-out sequences), and an LSTM reading MNIST-1D one value at a time. Each is pruned to about
10% of its prunable weights, beside random pruning at the same layer densities, over 3 replicates; prints a table
(final test accuracy, mean +- sample std (ddof=1), n replicates) and checks density_all against the saved masks.

    python examples/sequence_tickets.py [transformer|lstm|both] [--replicates 3]

Issue 11's acceptance run; the figures are in README.md (Python API, "Sequence models").
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import torch
from torch import nn

from ticketlab import find_ticket
from ticketlab.config import DataConfig
from ticketlab.data import load_configured


def modular_sums(length: int = 5, vocab: int = 4, train_fraction: float = 0.75, seed: int = 0):
    """Every sequence of ``length`` token ids in [0, vocab), labelled by the sum of its tokens mod ``vocab``, split
    at random into disjoint train and test sets (so the test set asks for the rule, not memory)."""
    x = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    y = x.sum(1) % vocab
    n = int(train_fraction * len(x))
    return (x[:n], y[:n]), (x[n:], y[n:])


class TokenTransformer(nn.Module):
    """Embedding + learned positions, a 2-layer Transformer encoder (pre-norm), mean pooling, a linear head."""

    def __init__(self, vocab: int = 4, length: int = 5, dim: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


class SequenceLSTM(nn.Module):
    """An LSTM over the 40 values of an MNIST-1D example, read one per step; the last hidden state is classified."""

    def __init__(self, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.reshape(len(x), -1, 1))
        return self.head(out[:, -1])


def task(name: str):
    torch.manual_seed(0)
    if name == "transformer":
        train, test = modular_sums()
        opts = dict(steps="600it", lr=2e-3, batch_size=64, optimizer="adam", fraction=0.37, levels=5)
        return TokenTransformer, train, test, opts  # a factory: every replicate draws its positions too
    data = load_configured(DataConfig(dataset="mnist1d"))
    train, test = (data.train.x, data.train.y), (data.test.x, data.test.y)
    opts = dict(steps="30ep", lr=5e-3, batch_size=100, optimizer="adam", fraction=0.37, levels=5)
    return SequenceLSTM, train, test, opts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="?", default="both", choices=("transformer", "lstm", "both"))
    p.add_argument("--replicates", type=int, default=3)
    p.add_argument("--out", default="runs/sequence-tickets")
    args = p.parse_args()
    for name in ("transformer", "lstm") if args.which == "both" else (args.which,):
        factory, train, test, opts = task(name)
        t0 = time.perf_counter()
        # a factory (seed -> model): find_ticket seeds the global RNG with each replicate's seed before calling it
        search = find_ticket(
            lambda seed, make=factory: make(),
            train,
            test,
            out=f"{args.out}/{name}",
            replicates=args.replicates,
            val_size=0,
            baselines=("random_prune",),
            **opts,
        )
        wall = time.perf_counter() - t0
        print(f"\n{name}: {factory.__name__}, {args.replicates} replicates, {wall:.0f} s")
        print("level  density  density_all  ticket final acc (mean +- std)  random final acc (mean +- std)  n")
        params = dict(factory().named_parameters())
        total = sum(p.numel() for p in params.values())
        for level in range(opts["levels"] + 1):
            rows = [r for r in search.rows if int(r["level"]) == level]
            # density over all weights, recounted from the saved masks: kept weights plus every unpruned tensor
            for r in range(args.replicates):
                mask = search.at(level, r).mask
                kept = sum(int(m.sum()) for m in mask.values())
                kept += sum(p.numel() for n, p in params.items() if n not in mask)
                recorded = [x["density_all"] for x in rows if x["replicate"] == r and x["branch"] == "ticket"]
                assert recorded == [kept / total], f"density_all {recorded} is not {kept}/{total}"
            acc = {
                b: [float(r["final_test_acc"]) for r in rows if r["branch"] == b] for b in ("ticket", "random_prune")
            }
            first = rows[0]
            spread = {b: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for b, v in acc.items() if v}
            rnd = "{:.4f} +- {:.4f}".format(*spread["random_prune"]) if "random_prune" in spread else "-"
            print(
                f"{level:5d}  {float(first['density']):7.4f}  {float(first.get('density_all', 'nan')):11.4f}  "
                "{:.4f} +- {:.4f}".format(*spread["ticket"])
                + f"{'':10s}{rnd:>24s}  {len(acc['ticket'])}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
