"""Batched jobs vs one by one: 3, 9 and 27 jobs of the default experiment's network, measured side by side.

The jobs are what a level of the default demo trains (the MNIST-1D MLP 40-100-100-10, Adam, batch 100, evaluation
every 100 iterations): ticket-like masks at three densities over three data seeds (replicates). "one by one" is
``ticketlab.training.train`` per job, as ``--batch-jobs off`` runs them; "batched" is
``ticketlab.batched.train_batched`` on all of them, as ``--batch-jobs auto`` does. Rounds alternate the two, and
the median of the rounds is reported, so a drift in the machine's speed hits both alike.

    python benchmarks/batched_speed.py [--steps 300] [--rounds 3] [--device cpu|cuda] [--counts 3,9,27]
        [--model lenet_300_100 --dataset fashion-mnist --batch-size 128]   # another network
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from ticketlab.batched import train_batched, unbatchable
from ticketlab.config import ExperimentConfig
from ticketlab.data import load_configured
from ticketlab.problem import registry_problem
from ticketlab.prunable import prunable_names
from ticketlab.training import train
from ticketlab.training.objectives import CLASSIFICATION


def jobs(problem, n: int, device: torch.device):
    """``n`` (model, mask, data seed) jobs: densities 100%, 50%, 25% in turn, three replicates' data seeds."""
    g = torch.Generator().manual_seed(0)
    out = []
    for j in range(n):
        model = problem.init_model(j)
        keep = (1.0, 0.5, 0.25)[j % 3]
        names = prunable_names(model)
        mask = {
            name: (torch.rand(p.shape, generator=g) < keep).to(device)
            for name, p in model.named_parameters()
            if name in names
        }
        out.append((model, mask, j // 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training iterations per job")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is shown")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--counts", default="3,9,27", help="how many jobs, comma-separated")
    parser.add_argument("--model", default="", help="another registered model (default: the demo's MLP)")
    parser.add_argument("--dataset", default="", help="another dataset (default: MNIST-1D)")
    parser.add_argument("--batch-size", type=int, default=0, help="another batch size (default: the demo's, 100)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = ExperimentConfig()
    cfg = cfg.replace(
        train={"steps": f"{args.steps}it", **({"batch_size": args.batch_size} if args.batch_size else {})},
        model={"model": args.model or cfg.model.model, **({"widths": ()} if args.model else {})},
        data={"dataset": args.dataset or cfg.data.dataset},
    )
    data = load_configured(cfg.data, device)
    problem = registry_problem(cfg, data)
    why = unbatchable(problem.init_model(0), cfg.train, data, CLASSIFICATION)
    if why:
        raise SystemExit(f"cannot batch: {why}")
    print(
        f"{torch.__version__}, {device}, {torch.get_num_threads()} threads; {args.steps} it per job, "
        f"medians of {args.rounds} alternating rounds"
    )
    print("| jobs | one by one s | batched s | throughput ratio | one-by-one ms/job-step | batched ms/job-step |")
    print("|---|---|---|---|---|---|")
    warm = jobs(problem, 3, device)  # untimed: first calls pay for allocation and lazy initialisation
    train(copy.deepcopy(warm[0][0]), data, cfg.train, mask=warm[0][1], data_seed=0)
    train_batched(
        [copy.deepcopy(m) for m, _, _ in warm], data, cfg.train, masks=[m for _, m, _ in warm], data_seeds=[0] * 3
    )
    for n in map(int, args.counts.split(",")):
        work = jobs(problem, n, device)
        seq, bat = [], []
        for _ in range(args.rounds):
            models = [copy.deepcopy(m) for m, _, _ in work]
            t = time.perf_counter()
            for model, (_, mask, seed) in zip(models, work):
                train(model, data, cfg.train, mask=mask, data_seed=seed)
            _sync(device)
            seq.append(time.perf_counter() - t)
            models = [copy.deepcopy(m) for m, _, _ in work]
            t = time.perf_counter()
            train_batched(models, data, cfg.train, masks=[m for _, m, _ in work], data_seeds=[s for _, _, s in work])
            _sync(device)
            bat.append(time.perf_counter() - t)
        s, b = statistics.median(seq), statistics.median(bat)
        per = 1e3 / (n * args.steps)
        print(f"| {n} | {s:.2f} | {b:.2f} | **{s / b:.2f}x** | {s * per:.3f} | {b * per:.3f} |", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
