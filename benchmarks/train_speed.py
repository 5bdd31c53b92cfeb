"""Training speed of LeNet-300-100 on Fashion-MNIST against the hardware floor, measured side by side.

floor = 6 x weights x samples / (dense matmul FLOP/s measured here, now). The ratio says how close one epoch
of ticketlab's masked training loop gets to what the arithmetic alone costs. A plain PyTorch loop (no masks)
runs beside it to show what the mask enforcement costs.

    .venv/bin/python benchmarks/train_speed.py [--device cpu|cuda] [--batch-sizes 60,128]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ticketlab.config import TrainConfig
from ticketlab.data import batches, iterations_per_epoch, load_dataset
from ticketlab.masks import full_mask
from ticketlab.models import create_model, initialize
from ticketlab.prunable import prunable_names
from ticketlab.training import Observer, train


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ticketlab_epoch(data, batch: int, device) -> float:
    """Seconds per epoch of ticketlab's training loop (masked, as every IMP level trains), evaluations excluded."""
    model = initialize(create_model("lenet_300_100", data.input_shape, 10), "glorot_normal", 0).to(device)
    mask = full_mask(model, prunable_names(model))
    per_epoch = iterations_per_epoch(len(data.train), batch)
    cfg = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=batch, steps="1ep", eval_every="1000000it")
    marks = {}

    class Clock(Observer):  # the time after the first and the last step
        def on_step(self, step, model):
            if step in (1, per_epoch):
                sync(device)
                marks[step] = time.perf_counter()

    train(model, data, cfg, mask=mask, data_seed=0, observers=[Clock()])
    return (marks[per_epoch] - marks[1]) * per_epoch / (per_epoch - 1)


def plain_epoch(data, batch: int, device) -> float:
    """Seconds per epoch of a bare PyTorch loop over the same in-memory batches and optimizer, no masks."""
    model = initialize(create_model("lenet_300_100", data.input_shape, 10), "glorot_normal", 0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3, fused=True)  # the optimizer ticketlab uses
    per_epoch = iterations_per_epoch(len(data.train), batch)
    t = None
    for it, x, y in batches(data.train, batch, 0, 0, per_epoch):
        if it == 1:
            sync(device)
            t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t) * per_epoch / (per_epoch - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="60,128")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, device=device)
    weights = sum(
        p.numel()
        for n, p in create_model("lenet_300_100", data.input_shape, 10).named_parameters()
        if n.endswith("weight")
    )
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"LeNet-300-100 weights {weights}, training samples {len(data.train)}"
    )
    ticketlab_epoch(data, 128, device)  # warm-up
    flops = matmul_flops(device)
    print(f"dense matmul (2048^3 fp32): {flops / 1e9:.1f} GFLOP/s")
    print(
        f"{'batch':>5} {'floor s':>8} {'ticketlab s':>11} {'x floor':>7} {'plain s':>8} {'x floor':>7} {'mask cost':>9}"
    )
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        samples = iterations_per_epoch(len(data.train), batch) * batch
        floor = 6 * weights * samples / flops
        ours = min(ticketlab_epoch(data, batch, device) for _ in range(2))
        plain = min(plain_epoch(data, batch, device) for _ in range(2))
        print(
            f"{batch:>5} {floor:>8.3f} {ours:>11.3f} {ours / floor:>7.2f} {plain:>8.3f} {plain / floor:>7.2f} "
            f"{ours / plain:>8.2f}x"
        )


if __name__ == "__main__":
    main()
