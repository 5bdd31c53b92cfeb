"""Structured tickets: the masked dense model against the exported smaller one, for inference and training.

For each network a structured ticket keeps the 25% of units with the largest L1 norm in every unit layer
(``ticketlab.pruning.units``: hidden neurons, conv filters). The same ticket is then run two ways:

- ``dense``: the original model with the mask applied (pruned units are rows / filters of zeros). Training it
  multiplies the gradients by the mask before the step and the weights after it, as ticketlab's loop does.
- ``exported``: ``ticketlab.export.export`` of it, a physically smaller model computing the same function.

Inference (eval mode, no_grad) and a training step (forward, backward, SGD with momentum) are timed in
alternating rounds in one run; medians are printed with the ratio dense / exported (above 1: exporting pays).

    .venv/bin/python benchmarks/export_speed.py [--device cpu|cuda] [--rounds 5] [--iters 5]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from ticketlab import scores as S
from ticketlab.export import export
from ticketlab.masks import apply_mask, full_mask
from ticketlab.models import create_model, initialize
from ticketlab.prunable import prunable_names
from ticketlab.pruning import expand, find_units
from ticketlab.training import MaskedParams

# name, model, kwargs, input shape, training batch, inference batch
NETS = [
    ("LeNet-300-100", "lenet_300_100", {}, (1, 28, 28), 128, 1024),
    ("Conv-4", "conv_4", {"width": 1.0}, (3, 32, 32), 64, 64),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def structured_ticket(model: torch.nn.Module, shape: tuple[int, ...], keep: float):
    """The mask keeping the ``keep`` fraction of units with the largest L1 norm in every unit layer."""
    units = find_units(model, shape)
    mask = full_mask(model, prunable_names(model))
    alive = {}
    for layer, scores in S.score("l1", model=model, mask=mask, units=units).items():
        top = torch.zeros(len(scores), dtype=torch.bool)
        top[scores.topk(max(1, round(keep * len(scores)))).indices.cpu()] = True
        alive[layer] = top
    return expand(units, alive, model, mask)


def make_step(model: torch.nn.Module, mask: dict | None):
    """One SGD training step; with a mask, the gradients and weights are masked as a training loop must."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    masked = MaskedParams(model, mask) if mask is not None else None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if masked:
            masked.mask_grads()
        opt.step()
        if masked:
            masked.mask_weights()

    return step


def seconds(fn, iters: int, device: torch.device) -> float:
    """Seconds per call, averaged over ``iters`` calls after one warm-up call."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def measure(name: str, kwargs: dict, shape: tuple[int, ...], batches: tuple[int, int], args, device) -> dict:
    """Median seconds of inference and of a training step, dense and exported, and both parameter counts."""
    torch.manual_seed(0)
    model = initialize(create_model(name, shape, 10, **kwargs), "kaiming_normal", 0).to(device)
    mask = structured_ticket(model, shape, args.keep)
    dense = apply_mask(model, mask)
    small = export(dense, mask, shape)
    train_batch, eval_batch = batches
    x_eval = torch.randn(eval_batch, *shape, device=device)
    x, y = torch.randn(train_batch, *shape, device=device), torch.randint(0, 10, (train_batch,), device=device)
    steps = {"dense": make_step(copy.deepcopy(dense), mask), "exported": make_step(copy.deepcopy(small), None)}
    nets = {"dense": dense.eval(), "exported": small.eval()}
    with torch.no_grad():
        assert torch.allclose(small(x_eval[:8]), dense(x_eval[:8]), atol=1e-4), "export changed the outputs"
    times: dict[str, list[float]] = {f"{w}_{k}": [] for w in ("infer", "train") for k in nets}
    for _ in range(args.rounds):
        for k, net in nets.items():
            with torch.no_grad():
                times[f"infer_{k}"].append(seconds(lambda net=net: net(x_eval), args.iters, device))
        for k, step in steps.items():
            times[f"train_{k}"].append(seconds(lambda step=step: step(x, y), args.iters, device))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    med["params"] = [sum(p.numel() for p in net.parameters()) for net in (dense, small)]
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep", type=float, default=0.25, help="fraction of units kept in every unit layer")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, keep {args.keep:.0%}")
    print(f"{args.rounds} alternating rounds of {args.iters} calls each, medians\n")
    print("| network | params dense -> exported | what | batch | dense ms | exported ms | dense / exported |")
    print("|---|---|---|---|---|---|---|")
    for title, name, kwargs, shape, train_batch, eval_batch in NETS:
        med = measure(name, kwargs, shape, (train_batch, eval_batch), args, device)
        params = f"{med['params'][0]:,} -> {med['params'][1]:,}"
        for what, key, batch in (("inference", "infer", eval_batch), ("training step", "train", train_batch)):
            d, e = med[f"{key}_dense"] * 1e3, med[f"{key}_exported"] * 1e3
            print(f"| {title} | {params} | {what} | {batch} | {d:.2f} | {e:.2f} | **{d / e:.1f}x** |")


if __name__ == "__main__":
    main()
