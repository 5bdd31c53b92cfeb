"""Sequence models on token data: what the two speed choices of issue 16 buy, measured side by side.

1. The causal mask: an additive float mask (what ``transformer_lm`` passes) against a boolean one, for a test-set
   evaluation pass in eval mode (nn.MultiheadAttention's fast path), same outputs.
2. Batched jobs: three ``lm-char-transformer`` jobs trained one by one (``ticketlab.training.train``) against in one
   vmap pass (``ticketlab.batched.train_batched``), which ``--batch-jobs auto`` now refuses for this model because
   vmap has no batching rule for CPU attention and loops over the jobs.
Rounds alternate the sides and the median is reported, so a drift in the machine's speed hits both alike.

    python benchmarks/sequence_speed.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from ticketlab.batched import train_batched, unbatchable
from ticketlab.config import from_dict, merge
from ticketlab.data import load_configured
from ticketlab.presets import preset
from ticketlab.problem import registry_problem
from ticketlab.training import evaluate, train


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training iterations per job")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is shown")
    args = parser.parse_args()
    cfg = from_dict(
        merge(preset("lm-char-transformer"), {"train": {"steps": f"{args.steps}it", "eval_every": "1000it"}})
    )
    data = load_configured(cfg.data)
    problem = registry_problem(cfg, data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; lm-char-transformer on {data.name}: "
          f"{len(data.test)} test windows of {data.test.x.shape[1]} characters")  # fmt: skip

    # 1. causal mask: float (as built) vs boolean, one evaluation pass over the test set
    model = problem.init_model(0).eval()
    blocks = model.blocks
    t = data.test.x.shape[1]
    as_bool = torch.ones(t, t, dtype=torch.bool).triu(1)
    plain = [block.forward for block in blocks]

    def with_bool() -> None:
        for block, f in zip(blocks, plain):
            block.forward = lambda x, causal, f=f: f(x, as_bool)
        try:
            evaluate(model, data.test, data.objective)
        finally:
            for block in blocks:
                del block.forward

    same = evaluate(model, data.test, data.objective)
    rounds = [(timed(lambda: evaluate(model, data.test, data.objective)), timed(with_bool)) for _ in range(args.rounds)]
    fl, bo = (statistics.median(r[i] for r in rounds) for i in (0, 1))
    with_bool()  # the outputs agree: the same loss and accuracy
    print(f"evaluation pass: float mask {fl:.2f} s, boolean mask {bo:.2f} s: x{bo / fl:.2f} (loss {same[0]:.4f})")

    # 2. three jobs one by one vs batched with vmap
    models = [problem.init_model(r) for r in range(3)]
    masks = [{} for _ in models]
    print(f"--batch-jobs auto says: {unbatchable(models[0], cfg.train, data, data.objective)}")

    def one_by_one() -> None:
        for r, m in enumerate(models):
            train(m, data, cfg.train, mask={}, data_seed=r, kernels="off")

    def batched() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_batched(models, data, cfg.train, masks=masks, data_seeds=[0, 1, 2])

    rounds = [(timed(one_by_one), timed(batched)) for _ in range(args.rounds)]
    one, bat = (statistics.median(r[i] for r in rounds) for i in (0, 1))
    print(
        f"3 jobs x {args.steps} it: one by one {one:.1f} s, batched (vmap) {bat:.1f} s: "
        f"batched / one by one {bat / one:.2f}"
    )


if __name__ == "__main__":
    main()
