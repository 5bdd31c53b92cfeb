"""Training speed of LeNet-300-100 on Fashion-MNIST against two floors, measured side by side.

GEMM floor = 6 x weights x samples / (FLOP/s of one 2048^3 fp32 matmul, measured here, now): what the arithmetic
costs at the speed of a big matmul. Small layers never reach that speed, so the GEMM floor is no limit for them.
Shape floor = the network's own matmuls at their exact shapes, for the epoch's number of steps, run back to back as
bare ``torch.mm(..., out=)`` calls on preallocated tensors (no autograd, optimizer, masks or framework): per Linear
of in -> out at batch B, forward (B x in) @ (in x out), grad-weight (out x B) @ (B x in), and grad-input
(B x out) @ (out x in) for every layer but the first (autograd never computes the input's gradient).
The ratios say how close one epoch of ticketlab's masked training loop gets to each floor. A plain PyTorch loop
(no masks) runs beside it to show what the mask enforcement costs.

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


def layer_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of each Linear layer, input to output."""
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def shape_floor(shapes: list[tuple[int, int]], batch: int, steps: int, device, first_grad_input: bool = False) -> float:
    """Seconds for ``steps`` training steps' matmuls at the network's exact shapes, bare (best of 3 epochs).

    Per layer and step: forward, grad-weight and (but for the first layer, unless ``first_grad_input``) grad-input,
    each one ``torch.mm`` into a preallocated output. Random operands: fp32 matmul time does not depend on values.
    """
    calls = []
    for i, (n_in, n_out) in enumerate(shapes):
        x, w = torch.randn(batch, n_in, device=device), torch.randn(n_in, n_out, device=device)
        dy, wt = torch.randn(batch, n_out, device=device), torch.randn(n_out, n_in, device=device)
        dyt = torch.randn(n_out, batch, device=device)
        calls.append((x, w, torch.empty(batch, n_out, device=device)))  # forward: (B, in) @ (in, out)
        calls.append((dyt, x, torch.empty(n_out, n_in, device=device)))  # grad-weight: (out, B) @ (B, in)
        if i > 0 or first_grad_input:
            calls.append((dy, wt, torch.empty(batch, n_in, device=device)))  # grad-input: (B, out) @ (out, in)
    for a, b, out in calls:  # warm-up: first-call costs are no part of a floor
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            for a, b, out in calls:
                torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


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
    net = create_model("lenet_300_100", data.input_shape, 10)
    weights = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    shapes = layer_shapes(net)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"LeNet-300-100 weights {weights}, training samples {len(data.train)}"
    )
    ticketlab_epoch(data, 128, device)  # warm-up
    flops = matmul_flops(device)
    print(f"dense matmul (2048^3 fp32): {flops / 1e9:.1f} GFLOP/s")
    print(
        f"{'batch':>5} {'GEMM fl s':>9} {'shape fl s':>10} {'ticketlab s':>11} {'x GEMM':>6} {'x shape':>7} "
        f"{'plain s':>7} {'x GEMM':>6} {'x shape':>7} {'mask cost':>9}"
    )
    notes = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        steps = iterations_per_epoch(len(data.train), batch)
        floor = 6 * weights * steps * batch / flops
        shape = shape_floor(shapes, batch, steps, device)
        ours = min(ticketlab_epoch(data, batch, device) for _ in range(2))
        plain = min(plain_epoch(data, batch, device) for _ in range(2))
        print(
            f"{batch:>5} {floor:>9.3f} {shape:>10.3f} {ours:>11.3f} {ours / floor:>6.2f} {ours / shape:>7.2f} "
            f"{plain:>7.3f} {plain / floor:>6.2f} {plain / shape:>7.2f} {ours / plain:>8.2f}x"
        )
        full = shape_floor(shapes, batch, steps, device, first_grad_input=True)
        notes.append(f"batch {batch}: {full:.3f} s ({ours / full:.2f}x)")
    print(f"shape floor with the first layer's grad-input too (6 x weights): {', '.join(notes)}")


if __name__ == "__main__":
    main()
