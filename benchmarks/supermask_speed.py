"""Supermask training speed: one epoch of LeNet-300-100 on Fashion-MNIST, measured side by side.

- ``dense``: ticketlab's ordinary (masked) training of the weights, the reference;
- ``zhou`` / ``edge-popup`` / ``biprop``: ticketlab's supermask training (:mod:`ticketlab.supermask`: scores
  trained, weights frozen, the network called through ``torch.func.functional_call``);
- ``plain edge-popup``: a bare PyTorch loop doing edge-popup's arithmetic by hand (one ``torch.topk`` per layer,
  ``F.linear`` on the masked weights, SGD on the scores), no framework: what the method itself costs.

Each ratio is against ``dense`` measured in the same run (this machine's speed drifts between days), evaluations
excluded. The first epoch of each is a warm-up.

    .venv/bin/python benchmarks/supermask_speed.py [--device cpu|cuda] [--batch-size 100]
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
from ticketlab.supermask import Supermask, kept_count
from ticketlab.training import Observer, train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lenet(data, device):
    return initialize(create_model("lenet_300_100", data.input_shape, 10), "glorot_normal", 0).to(device)


def ticketlab_epoch(data, batch: int, device, method: str | None) -> float:
    """Seconds per epoch of ticketlab's loop: dense training (``method`` None) or a supermask's."""
    model = lenet(data, device)
    names = prunable_names(model)
    per_epoch = iterations_per_epoch(len(data.train), batch)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=batch, steps="1ep", eval_every="1000000it")
    marks = {}

    class Clock(Observer):  # the time after the first and the last step
        def on_step(self, step, model):
            if step in (1, per_epoch):
                sync(device)
                marks[step] = time.perf_counter()

    if method is None:
        train(model, data, cfg, mask=full_mask(model, names), data_seed=0, observers=[Clock()])
    else:
        net = Supermask(model, names, method, k=0.5)
        train(net, data, cfg, mask={}, data_seed=0, observers=[Clock()], kernels="off")
    return (marks[per_epoch] - marks[1]) * per_epoch / (per_epoch - 1)


def plain_edge_popup_epoch(data, batch: int, device) -> float:
    """Seconds per epoch of edge-popup written out by hand in bare PyTorch."""
    model = lenet(data, device)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach() for m in layers]
    biases = [m.bias.detach() for m in layers]
    scores = [torch.randn_like(w, requires_grad=True) for w in weights]
    opt = torch.optim.SGD(scores, lr=0.1, momentum=0.9)
    per_epoch = iterations_per_epoch(len(data.train), batch)

    class TopK(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s, keep):
            out = torch.zeros_like(s)
            out.view(-1)[torch.topk(s.view(-1), keep, sorted=False).indices] = 1
            return out

        @staticmethod
        def backward(ctx, g):
            return g, None

    t = None
    for it, x, y in batches(data.train, batch, 0, 0, per_epoch):
        if it == 1:
            sync(device)
            t = time.perf_counter()
        h = x.flatten(1)
        for i, (w, b, s) in enumerate(zip(weights, biases, scores)):
            h = F.linear(h, w * TopK.apply(s.abs(), kept_count(s.numel(), 0.5)), b)
            if i < len(weights) - 1:
                h = F.relu(h)
        loss = F.cross_entropy(h, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t) * per_epoch / (per_epoch - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, device=device)
    b = args.batch_size
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, LeNet-300-100")
    ticketlab_epoch(data, b, device, None)  # warm-up
    dense = ticketlab_epoch(data, b, device, None)
    print(f"{'loop':<22} {'s/epoch':>8} {'x dense':>8}")
    print(f"{'dense (ticketlab)':<22} {dense:8.2f} {1.0:8.2f}")
    for method in ("zhou", "edge-popup", "biprop"):
        ticketlab_epoch(data, b, device, method)
        s = ticketlab_epoch(data, b, device, method)
        print(f"{method + ' (ticketlab)':<22} {s:8.2f} {s / dense:8.2f}")
    plain_edge_popup_epoch(data, b, device)
    s = plain_edge_popup_epoch(data, b, device)
    print(f"{'edge-popup (plain)':<22} {s:8.2f} {s / dense:8.2f}")


if __name__ == "__main__":
    main()
