"""Wall time per IMP level of open_lth's LeNet-300-100 protocol on Fashion-MNIST, split by where it goes.

The protocol of issue 12 (the one timed side by side with open_lth): preset openlth-lenet300 on Fashion-MNIST --
SGD 0.1 without momentum, batch 128, global pruning 20% per level with the output layer not pruned, Kaiming normal
init -- one epoch per level, test evaluation each epoch, the ticket only (no baselines). Each measurement is a fresh
process running ``ticketlab imp`` (``ticketlab.cli.main``), so start-up counts the interpreter, the imports, the data
load and the plan, up to the first training step, as a user pays them.

The split comes from timing wrappers this script installs around ticketlab functions, wherever a module looked
them up (nothing in the library is changed for it). Time is attributed to the innermost wrapped call running
(an evaluation inside training counts as evaluate, not train):

    train       ticketlab.training.train less what is attributed below (the optimizer steps, per-step Python)
    evaluate    test evaluations (ticketlab.training.objectives.evaluate)
    train-acc   the per-job train-accuracy sample (evaluate on the training data)
    write       checkpoints, masks and records (ticketlab.store writers, hashing included)
    read        loading and verifying what was written (ticketlab.store readers)
    job checks  per-job density_all / effective_density / check_zero_safe
    prune       the next level's mask (prune_in_rounds, check_collapse)
    other       everything else between two trainings (the run directory's bookkeeping, Python glue)

    .venv/bin/python benchmarks/level_time.py [--levels 5] [--repeats 2] [--device cpu|cuda] [--data-dir DIR]
        [--src OLD/src,NEW/src]    # two source trees timed alternately in one run (before / after a change)

Goal (issue 12): at most 0.75 s per level on the 2-core CPU VM, start-up included (open_lth: 11.3 s per level).
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # a child's own clock starts here; its parent passes the spawn time

import argparse  # noqa: E402  -- after the clock, so the script's own imports count as start-up
import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

CATEGORIES = ("train", "evaluate", "train-acc", "write", "read", "job checks", "prune", "other")
WRAPPED = {  # category: the functions timed as it, as "module:name" (a missing one is reported, not fatal)
    "train": ["ticketlab.training:train"],
    "evaluate": ["ticketlab.training.objectives:evaluate"],
    "write": [
        "ticketlab.store:atomic_write_bytes",
        "ticketlab.store:atomic_write_text",
        "ticketlab.store:write_json",
        "ticketlab.store:write_record",
        "ticketlab.store:save_tensors",
        "ticketlab.store:write_csv",
        "ticketlab.masks:save_mask",
    ],
    "read": [
        "ticketlab.store:load_tensors",
        "ticketlab.store:read_record",
        "ticketlab.store:read_json",
        "ticketlab.store:sha256_file",
        "ticketlab.masks:load_mask",
    ],
    "job checks": [
        "ticketlab.prunable:density_all",
        "ticketlab.prunable:check_zero_safe",
        "ticketlab.pruning.collapse:effective_density",
    ],
    "prune": ["ticketlab.pruning:prune_in_rounds", "ticketlab.imp:check_collapse"],
    "data": ["ticketlab.data:load_configured"],
    "report": ["ticketlab.report.tables:imp_table", "ticketlab.report.plots:imp_plot"],
}
PROTOCOL = [
    "imp",
    "--preset",
    "openlth-lenet300",
    "--dataset",
    "fashion-mnist",
    "--steps",
    "1ep",
    "--eval-every",
    "1ep",
    "--baselines",
    "",
    "--no-progress",
]


class Clock:
    """Self time by (segment, category): a segment is start-up, then one per training job, then the report."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.times: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.segment = "start-up"
        self.stack: list[str] = ["other"]
        self.since = time.perf_counter()
        self.train_x = None  # the training inputs, to tell the train-accuracy sample from test evaluations
        self.jobs = 0

    def _switch(self, category: str | None) -> None:
        """Close the running slice (charged to the top of the stack), then push ``category`` or pop."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[self.segment][self.stack[-1]] += now - self.since
        self.since = now
        if category is None:
            self.stack.pop()
        else:
            self.stack.append(category)

    def wrap(self, fn, category: str):
        def timed(*args, **kwargs):
            kind = category
            if kind == "evaluate" and self.train_x is not None:
                split = args[1] if len(args) > 1 else kwargs.get("split")
                if split is not None and split.x.untyped_storage().data_ptr() == self.train_x:
                    kind = "train-acc"
            if kind == "train" and "train" not in self.stack:
                self._switch(None)  # a new job: close the previous segment's slice
                self.jobs += 1
                self.segment = f"job {self.jobs - 1}"
                self.stack.append("other")
            self._switch(kind)
            try:
                result = fn(*args, **kwargs)
            finally:
                self._switch(None)
            if category == "data":
                self.train_x = result.train.x.untyped_storage().data_ptr()
            return result

        timed.__wrapped__ = fn
        return timed

    def install(self) -> list[str]:
        """Replace each wrapped function wherever a ticketlab module holds it; returns the names not found."""
        missing = []
        for category, names in WRAPPED.items():
            for name in names:
                module, attr = name.split(":")
                try:
                    original = getattr(importlib.import_module(module), attr)
                except (ImportError, AttributeError):
                    missing.append(name)
                    continue
                timed = self.wrap(original, category)
                for mod in [m for n, m in sys.modules.items() if n == "ticketlab" or n.startswith("ticketlab.")]:
                    for key, value in list(vars(mod).items()):
                        if value is original:
                            setattr(mod, key, timed)
        return missing

    def report_segment(self) -> None:
        self._switch(None)
        self.segment = "report"
        self.stack.append("other")


def child(args: argparse.Namespace) -> None:
    """One measured run, in this fresh process; writes the figures as JSON to ``args.child``."""
    spawned = float(os.environ.get("LEVEL_TIME_SPAWN", PROCESS_START))
    import ticketlab.cli

    imported = time.time()
    clock = Clock(cuda=args.device.startswith("cuda"))
    clock.since = time.perf_counter()
    missing = clock.install()
    # the moment imp returns, the rest (table, plot) is the report
    cli_imp = ticketlab.cli.imp

    def imp(*a, **k):
        try:
            return cli_imp(*a, **k)
        finally:
            clock.report_segment()

    ticketlab.cli.imp = imp
    flags = [*PROTOCOL, "--levels", str(args.levels), "--device", args.device, "--out", args.out]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        code = ticketlab.cli.main(flags)
    clock._switch(None)
    end = time.time()
    times = {seg: dict(cats) for seg, cats in clock.times.items()}
    times["start-up"] = {
        "interpreter + imports": imported - spawned,
        "data load": times["start-up"].get("data", 0.0),
        "plan, run directory": sum(v for k, v in times["start-up"].items() if k != "data"),
    }
    out = {"code": code, "total": end - spawned, "jobs": clock.jobs, "times": times, "missing": missing}
    Path(args.child).write_text(json.dumps(out))
    gc.freeze()  # and exit as the `ticketlab` command does (ticketlab.cli.entry)


def measure(args: argparse.Namespace, out: Path, src: str) -> dict:
    """One run in a fresh process (importing ticketlab from ``src`` when given): the child's figures, plus the
    process's wall time as the parent saw it."""
    result = out / "result.json"
    cmd = [sys.executable, __file__, "--child", str(result), "--out", str(out / "runs")]
    cmd += ["--levels", str(args.levels), "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = {**os.environ, **({"PYTHONPATH": src} if src else {}), "LEVEL_TIME_SPAWN": repr(time.time())}
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"the measured run failed:\n{done.stderr}")
    figures = json.loads(result.read_text())
    if figures["code"] != 0:
        raise SystemExit(f"ticketlab imp exited {figures['code']}")
    return {**figures, "wall": wall}


def show(run: dict, levels: int) -> None:
    times = run["times"]
    jobs = [f"job {i}" for i in range(run["jobs"])]
    print(f"{'level':>5} " + " ".join(f"{c:>10}" for c in CATEGORIES) + f" {'total':>7}")
    for i, seg in enumerate(jobs):
        row = times.get(seg, {})
        print(f"{i:>5} " + " ".join(f"{row.get(c, 0.0):>10.3f}" for c in CATEGORIES) + f" {sum(row.values()):>7.3f}")
    mean = {c: sum(times.get(s, {}).get(c, 0.0) for s in jobs) / max(len(jobs), 1) for c in CATEGORIES}
    print(f"{'mean':>5} " + " ".join(f"{mean[c]:>10.3f}" for c in CATEGORIES) + f" {sum(mean.values()):>7.3f}")
    start = times["start-up"]
    report = sum(times.get("report", {}).values())
    print(
        "start-up " + ", ".join(f"{k} {v:.3f}" for k, v in start.items()) + f" = {sum(start.values()):.3f} s; "
        f"report (table, plot) {report:.3f} s; process wall {run['wall']:.3f} s, exit {run['wall'] - run['total']:.3f}"
    )
    trained = levels + 1
    print(
        f"per level over {trained} trained levels (level 0 included): {run['wall'] / trained:.3f} s with start-up "
        f"and report, {sum(mean.values()):.3f} s without (goal 0.75 s with)"
    )
    if run["missing"]:
        print(f"(not found, not timed: {', '.join(run['missing'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=5, help="pruning levels after level 0")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes; the fastest is shown in full")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--data-dir", default="", help="the Fashion-MNIST IDX files (default: where ticketlab looks)")
    parser.add_argument(
        "--src", default="", help="comma-separated source trees (each holding ticketlab/) to time in turn, side by side"
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch  # only to say what ran

    print(
        f"open_lth LeNet-300-100 protocol on Fashion-MNIST, 1 epoch per level, {args.levels} levels + level 0, "
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    trees = args.src.split(",") if args.src else [""]
    runs: dict[str, list[dict]] = {tree: [] for tree in trees}
    for r in range(args.repeats):
        for tree in trees:  # alternating, so that the machine's drift hits every tree alike
            with tempfile.TemporaryDirectory() as tmp:
                run = measure(args, Path(tmp), tree)
            runs[tree].append(run)
            print(
                f"run {r} {tree}: process wall {run['wall']:.2f} s, {run['wall'] / (args.levels + 1):.3f} s per level"
            )
    for tree, measured in runs.items():
        print(f"\n{tree or 'ticketlab as installed'} (fastest of {len(measured)}):")
        show(min(measured, key=lambda run: run["wall"]), args.levels)


if __name__ == "__main__":
    main()
