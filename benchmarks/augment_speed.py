"""ResNet-20 training throughput on CIFAR-shaped data: on-device batch augmentation against a DataLoader.

Both pipelines feed the same model, optimizer and training step and apply the same augmentation (pad 4 with
zeros, random 32x32 crop, random horizontal flip, per-channel normalisation):

- ``ticketlab``: the dataset is one uint8 tensor on the device; a batch is an index gather, and the crop, flip
  and normalisation are done for the whole batch at once (``ticketlab.data.batches(..., augment=True)``).
- ``dataloader``: ``torch.utils.data.DataLoader`` over a per-sample ``Dataset`` whose ``__getitem__`` pads,
  crops, flips and normalises one image with torch ops (what torchvision's transforms do on tensors), then the
  default collate stacks the batch. ``--workers`` sets its worker processes (0: in the training process).

The two are measured in alternating rounds in one run and the ratio of images/s is printed, for training and
for producing batches alone.

    .venv/bin/python benchmarks/augment_speed.py [--device cpu|cuda] [--iters 20] [--rounds 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from ticketlab.data import PAD, Split, batches, prepare
from ticketlab.models import create_model, initialize


class PerSampleCifar(torch.utils.data.Dataset):
    """The usual per-sample pipeline: one image at a time, augmented in Python with torch ops."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seed: int):
        self.x, self.y, self.mean, self.std = x, y, mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.x[i], (PAD, PAD, PAD, PAD))  # (3, 40, 40) uint8
        dy, dx = self.rng.randint(0, 2 * PAD), self.rng.randint(0, 2 * PAD)
        img = img[:, dy : dy + 32, dx : dx + 32]
        if self.rng.random() < 0.5:
            img = img.flip(2)
        return (img.float() / 255 - self.mean) / self.std, self.y[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(device: torch.device):
    model = initialize(create_model("resnet20", (3, 32, 32), 10), "kaiming_normal", 0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_ticketlab(split: Split, batch: int, iters: int, device, step) -> float:
    it = batches(split, batch, seed=0, start=0, stop=iters + 2, augment=True)
    for _, x, y in [next(it), next(it)]:  # warm-up
        step(x, y) if step else None
    sync(device)
    t = time.perf_counter()
    for _, x, y in it:
        if step:
            step(x, y)
    sync(device)
    return iters * batch / (time.perf_counter() - t)


def time_dataloader(loader, batch: int, iters: int, device, step) -> float:
    it = iter(loader)
    for _ in range(2):  # warm-up (and worker start-up)
        x, y = next(it)
        if step:
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        x, y = next(it)
        if step:
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    sync(device)
    return iters * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20, help="timed training iterations per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--n", type=int, default=50_000, help="images in the synthetic CIFAR-shaped training set")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (args.n,), generator=g)
    data = prepare("cifar-shaped", Split(x, y), Split(x[:100], y[:100]), 10, augment=True, device=device)
    mean = x.float().mean((0, 2, 3)) / 255
    std = x.float().std((0, 2, 3)) / 255
    dataset = PerSampleCifar(x, y, mean, std, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    step = make_step(device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"DataLoader workers {args.workers}; {args.rounds} rounds of {args.iters} iterations each\n")
    results: dict[str, list[float]] = {k: [] for k in ("train_ours", "train_dl", "data_ours", "data_dl")}
    for _ in range(args.rounds):
        results["train_ours"].append(time_ticketlab(data.train, args.batch, args.iters, device, step))
        results["train_dl"].append(time_dataloader(loader, args.batch, args.iters, device, step))
        results["data_ours"].append(time_ticketlab(data.train, args.batch, 10 * args.iters, device, None))
        results["data_dl"].append(time_dataloader(loader, args.batch, 10 * args.iters, device, None))
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    print("| what | on-device batches, img/s | DataLoader, img/s | ratio |")
    print("|---|---|---|---|")
    for what, a, b in (("ResNet-20 training", "train_ours", "train_dl"), ("batches alone", "data_ours", "data_dl")):
        print(f"| {what} | {med[a]:,.0f} | {med[b]:,.0f} | **{med[a] / med[b]:.2f}x** |")
    print("\nall rounds:", {k: [round(v) for v in vs] for k, vs in results.items()})


if __name__ == "__main__":
    main()
