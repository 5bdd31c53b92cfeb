"""Where sparse kernels and compaction make a ticket faster, measured side by side in one run.

1. Break-even table: ticketlab.sparse.SparseLinear (CSR) against the masked dense nn.Linear, per layer shape,
   density, batch size, forward only and training step (forward + backward); sparse/dense time ratios (< 1: sparse
   wins) and, per shape, the largest density where sparse still wins (what ticketlab.sparse.BREAK_EVEN records).
2. Acceptance 5 of issue 12: LeNet-300-100 at 3.6% of weights (magnitude of the initial weights per layer at the
   paper's rates after 15 levels: hidden layers 0.8^15, output 0.9^15), a training step and inference against the
   dense network: masked dense, compacted (ticketlab.pruning.compact), sparse kernels, both.

Each pair is timed interleaved (dense, sparse, dense, ...), median of the repetitions; timings are machine-bound.

    .venv/bin/python benchmarks/sparse_speed.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.masks import apply_mask
from ticketlab.models import create_model
from ticketlab.pruning.compact import compact
from ticketlab.sparse import SparseLinear, sparsify

SHAPES = [(300, 784), (100, 300), (1024, 1024), (4096, 4096)]  # (out, in)
DENSITIES = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def side_by_side(fns: list[Callable[[], object]], device: torch.device, budget: float = 0.3) -> list[float]:
    """Median seconds per call of each function, called in turn (warm-up first) until ``budget`` seconds pass."""
    for f in fns:
        f()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < 3 or (time.perf_counter() - start < budget and len(times[0]) < 50):
        for i, f in enumerate(fns):
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def layer_step(layer: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], object]:
    if not train:
        return lambda: layer(x)

    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        layer(x).sum().backward()

    return step


def break_even_table(device: torch.device, shapes: list, densities: list, batches: list) -> None:
    print("sparse/dense time ratio (< 1: the CSR layer is faster), per layer shape (out x in), density, batch")
    head = f"{'shape':>11} {'batch':>5} {'mode':>7} " + " ".join(f"{100 * d:>6g}%" for d in densities)
    print(head + "   break-even")
    g = torch.Generator().manual_seed(0)
    for out, inp in shapes:
        for batch in batches:
            x = torch.randn(batch, inp, generator=g).to(device)
            for train in (False, True):
                ratios = []
                for d in densities:
                    dense = nn.Linear(inp, out).to(device)
                    keep = (torch.rand(out, inp, generator=g) < d).to(device)
                    with torch.no_grad():
                        dense.weight.mul_(keep)
                    sparse = SparseLinear(dense, keep)
                    t_dense, t_sparse = side_by_side(
                        [layer_step(dense, x, train), layer_step(sparse, x, train)], device, budget=0.15
                    )
                    ratios.append(t_sparse / t_dense)
                best = "never"  # the largest density below which sparse wins at every density measured
                for d, r in sorted(zip(densities, ratios)):
                    if r >= 1:
                        break
                    best = f"{100 * d:g}%"
                cells = " ".join(f"{r:7.2f}" for r in ratios)
                print(f"{out:>5}x{inp:<5} {batch:>5} {'train' if train else 'forward':>7} {cells}   {best}")


def lenet_ticket(device: torch.device) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 28, 28), 10).to(device)
    rates = {"fc.0.weight": 0.8**15, "fc.1.weight": 0.8**15, "fc.2.weight": 0.9**15}
    mask = {}
    for name, p in model.named_parameters():
        if name in rates:
            k = round(rates[name] * p.numel())
            top = p.detach().abs().flatten().topk(k).indices
            mask[name] = torch.zeros(p.numel(), dtype=torch.bool, device=device).index_fill_(0, top, True)
            mask[name] = mask[name].reshape(p.shape)
    return apply_mask(model, mask), mask


def train_step(model: nn.Module, mask: dict | None, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(params[n].dtype)) for n, m in (mask or {}).items() if n in params]

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p, m in pairs:  # what ticketlab's loop does to keep a mask exact
            p.grad.mul_(m)
        opt.step()
        for p, m in pairs:
            p.data.mul_(m)

    return step


def acceptance(device: torch.device) -> None:
    model, mask = lenet_ticket(device)
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    print(f"\nLeNet-300-100 ticket at {100 * kept / total:.2f}% of weights ({kept:,} of {total:,})")
    small_t, small_mask_t, info_t = compact(model, mask, (1, 28, 28), training=True)
    small_i, _, info_i = compact(model, mask, (1, 28, 28))
    print(f"  {info_t.summary()}\n  {info_i.summary()}")
    dense = create_model("lenet_300_100", (1, 28, 28), 10).to(device)
    kernels = copy.deepcopy(model)
    sparsify(kernels, mask, always=True)
    both_t, both_i = copy.deepcopy(small_t), copy.deepcopy(small_i)
    sparsify(both_t, small_mask_t, always=True)
    sparsify(both_i, {n: p != 0 for n, p in small_i.named_parameters() if n.endswith("weight")}, always=True)
    g = torch.Generator().manual_seed(1)
    for batch in (128, 1):
        x = torch.randn(batch, 1, 28, 28, generator=g).to(device)
        y = torch.randint(0, 10, (batch,), generator=g).to(device)
        steps = [
            train_step(dense, None, x, y),
            train_step(model, mask, x, y),
            train_step(small_t, small_mask_t, x, y),
            train_step(kernels, None, x, y),
            train_step(both_t, None, x, y),
        ]
        times = side_by_side(steps, device, budget=2.0)
        with torch.no_grad():
            infer = side_by_side([lambda m=m, x=x: m(x) for m in (dense, model, small_i, kernels, both_i)], device, 2.0)
        names = ["dense network", "masked (ticketlab today)", "compacted", "sparse kernels", "compacted + kernels"]
        print(f"  batch {batch}: {'':24} {'train step':>12} {'vs dense':>8} {'inference':>11} {'vs dense':>8}")
        for name, t, i in zip(names, times, infer):
            print(f"  {'':9}{name:<24} {1e6 * t:10.0f}us {t / times[0]:8.2f} {1e6 * i:9.0f}us {i / infer[0]:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="two shapes, batch 128 only")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steadier on a shared machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, device {device}\n")
    shapes = SHAPES[:2] if args.quick else SHAPES
    break_even_table(device, shapes, DENSITIES, [128] if args.quick else [128, 1])
    acceptance(device)


if __name__ == "__main__":
    main()
