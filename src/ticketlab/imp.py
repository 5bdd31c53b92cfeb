"""Iterative magnitude pruning with rewinding, and its baselines, as one resumable loop.

For each replicate: train the dense network (level 0), saving the weights at the rewind step k;
then per level: prune the previous level's trained ticket, rewind the survivors to step k, train;
and train the baselines (random re-init of the ticket's mask, random mask at the ticket's densities).
Each (replicate, level, branch) is a job in the run directory; completed jobs are skipped, so a
killed run resumes where it stopped and, jobs being deterministic, ends with the same results.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.config import ExperimentConfig
from ticketlab.data import Dataset, iterations_per_epoch
from ticketlab.errors import TicketlabError
from ticketlab.pruning import Group, compound, one_shot_groups, plan_groups, prune, random_mask
from ticketlab.scores import after_training
from ticketlab.steps import Step
from ticketlab.store import (
    JobDir,
    RunLock,
    atomic_write_text,
    load_tensors,
    read_json,
    save_tensors,
    write_csv,
    write_json,
)
from ticketlab.training import TrainResult, train

BRANCHES = ("ticket", "reinit", "random_prune")
RESULT_COLUMNS = [
    "replicate",
    "level",
    "branch",
    "density",
    "final_test_acc",
    "best_test_acc",
    "early_stop_step",
    "train_acc",
    "wall_time_s",
]


def derive_seed(*parts: Any) -> int:
    """A stable 60-bit seed from any parts (base seed, replicate, level, purpose)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


@dataclass
class Problem:
    """What IMP trains: the data, and how to make the network.

    ``init_model(replicate)`` returns that replicate's original network theta_0;
    ``fresh_model(seed)`` returns a newly initialised one (the random re-init baseline).
    """

    data: Dataset
    init_model: Callable[[int], nn.Module]
    fresh_model: Callable[[int], nn.Module]
    identity: dict[str, Any]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BatchNorm statistics too), in the standard memory layout."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


class _Progress:
    """A live bar per job on a terminal; one summary line per job otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def job(self, desc: str, total: int):
        if not self.enabled:
            return None
        from tqdm import tqdm

        # Some (pseudo-)terminals report a size of 0x0, with which tqdm hides the bar; fall back to 100x24.
        size = shutil.get_terminal_size()
        return tqdm(
            total=total,
            desc=desc,
            unit="it",
            leave=True,
            file=sys.stderr,
            ncols=min(size.columns or 100, 120),
            nrows=size.lines or 24,
            # short enough that the accuracy fits on an 80-column line
            bar_format="{desc} {bar:10} {n_fmt}/{total_fmt} {elapsed}<{remaining} {postfix}",
        )


def run_imp(
    config: ExperimentConfig, problem: Problem, run_dir: Path, *, progress: bool = False
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment in ``run_dir`` and return the rows of ``results.csv``."""
    run_dir = Path(run_dir)
    plan = _plan(config, problem)  # every check a user can fail, before anything is written
    with RunLock(run_dir):
        _check_identity(run_dir, config, problem)
        write_json(run_dir / "config.json", {"config": config.to_dict(), "hash": config.run_hash(), **problem.identity})
        bars = _Progress(progress)
        for replicate in range(config.imp.replicates):
            _run_replicate(config, problem, plan, run_dir, replicate, bars)
        rows = collect_results(run_dir, config)
        write_csv(run_dir / "results.csv", rows, RESULT_COLUMNS)
    return rows


def _check_identity(run_dir: Path, config: ExperimentConfig, problem: Problem) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        return
    saved = read_json(path)
    mine = {"hash": config.run_hash(), **problem.identity}
    diff = [k for k in mine if saved.get(k) != mine[k]]
    if diff:
        raise TicketlabError(
            f"{run_dir} holds a different experiment ({', '.join(diff)} differ); choose another output directory"
        )


def level_count(config: ExperimentConfig) -> int:
    return 1 if config.imp.target_density is not None else config.imp.levels


@dataclass(frozen=True)
class _Plan:
    names: list[str]  # prunable parameters
    groups: list[Group]  # layers pruned under one threshold, and their fraction per level
    k: int  # rewind iteration
    total: int  # training iterations per level


def _plan(cfg: ExperimentConfig, problem: Problem) -> _Plan:
    model = problem.init_model(0)
    names = M.prunable_names(model, prune_biases=cfg.prune.prune_biases, ignore=cfg.prune.ignore)
    if not names:
        raise TicketlabError("the model has no prunable parameters (linear/conv weights) left after --ignore")
    p = cfg.prune
    groups = plan_groups(
        names,
        kinds=M.layer_kinds(model),
        output_name=M.output_layer_name(model),
        strategy=p.strategy,
        fraction=p.fraction,
        conv_fraction=p.conv_fraction,
        output_fraction=p.output_fraction,
    )
    per_epoch = iterations_per_epoch(len(problem.data.train), cfg.train.batch_size)
    k = Step.parse(cfg.imp.rewind).iterations(per_epoch)
    total = Step.parse(cfg.train.steps).iterations(per_epoch)
    if total < 1:
        raise TicketlabError(f"--steps {cfg.train.steps} trains for no iterations; give a positive length")
    if k >= total:
        raise TicketlabError(
            f"rewind point {cfg.imp.rewind} ({k} it) must come before the end of training ({total} it)"
        )
    return _Plan(names, groups, k, total)


def _run_replicate(cfg: ExperimentConfig, problem: Problem, plan: _Plan, run_dir: Path, r: int, bars) -> None:
    data, seed = problem.data, cfg.imp.seed
    data_seed = derive_seed(seed, r, "data")
    model = problem.init_model(r)
    names, k = plan.names, plan.k

    # Level 0: the dense network, saving theta_0 and theta_k.
    dense = JobDir(run_dir, r, 0, "ticket")
    level0 = dense.path.parent
    if not dense.done:
        full = M.full_mask(model, names)
        save_tensors(level0 / "init.safetensors", _state(model))
        M.save_mask(level0 / "mask.safetensors", full)
        result = _train_job(
            model,
            data,
            cfg,
            full,
            data_seed,
            0,
            bars,
            dense,
            save_at=k,
            on_save=lambda m: save_tensors(level0 / "rewind.safetensors", _state(m)),
        )
        _finish(dense, model, full, result)
    device = data.train.x.device
    rewind_state = load_tensors(level0 / "rewind.safetensors", device)
    mask = M.load_mask(level0 / "mask.safetensors", device)

    for level in range(1, level_count(cfg) + 1):
        level_dir = JobDir(run_dir, r, level, "ticket").path.parent
        mask_path = level_dir / "mask.safetensors"
        if mask_path.exists():
            new_mask = M.load_mask(mask_path, device)
        else:
            new_mask = _next_mask(cfg, run_dir, r, level, mask, plan.groups, rewind_state, device)
            M.save_mask(mask_path, new_mask)
        mask = new_mask

        job = JobDir(run_dir, r, level, "ticket")
        if not job.done:
            model = problem.init_model(r)
            model.load_state_dict(rewind_state)
            M.apply_mask(model, mask)
            save_tensors(job.file("init.safetensors"), _state(model))
            _finish(job, model, mask, _train_job(model, data, cfg, mask, data_seed, k, bars, job))

        for branch in cfg.imp.baselines:
            job = JobDir(run_dir, r, level, branch)
            if job.done:
                continue
            if branch == "reinit":
                model, bmask = problem.fresh_model(derive_seed(seed, r, level, "reinit")), mask
            else:
                # the ticket's density per group: per layer (layerwise), per shared threshold (global)
                pools = [members for members, _ in plan.groups]
                bmask = random_mask(mask, derive_seed(seed, r, level, "random_prune"), pools)
                M.save_mask(job.file("mask.safetensors"), bmask)
                model = problem.init_model(r)
                model.load_state_dict(rewind_state)
            M.apply_mask(model, bmask)
            _finish(job, model, bmask, _train_job(model, data, cfg, bmask, data_seed, k, bars, job))


def _next_mask(cfg, run_dir, r, level, mask, groups: list[Group], start_state, device) -> M.Mask:
    """The mask of ``level``: prune the previous ticket (iterative) or the dense network (one-shot).

    The criterion scores the weights the pruned network ended with against those it started from (theta_k).
    """
    if cfg.imp.one_shot:
        source = load_tensors(JobDir(run_dir, r, 0, "ticket").file("final.safetensors"), device)
        base = {n: torch.ones_like(m) for n, m in mask.items()}
        target = cfg.imp.target_density
        if target is not None:
            groups = one_shot_groups(groups, {n: m.numel() for n, m in mask.items()}, target)
        else:
            groups = [(g, compound(f, level)) for g, f in groups]
    else:
        source = load_tensors(JobDir(run_dir, r, level - 1, "ticket").file("final.safetensors"), device)
        base = mask
    scores = after_training(cfg.prune.criterion, start_state, source, list(mask), derive_seed(cfg.imp.seed, r, level))
    new = prune(scores, base, groups)
    if not M.is_subset(new, mask if not cfg.imp.one_shot else base):
        raise AssertionError("pruning must only remove weights")
    return new


def _train_job(model, data, cfg, mask, data_seed, start, bars, job: JobDir, save_at=None, on_save=None) -> TrainResult:
    total = Step.parse(cfg.train.steps).iterations(iterations_per_epoch(len(data.train), cfg.train.batch_size))
    desc = f"rep {job.replicate} level {job.level:2d} {job.branch:<12} {100 * M.density(mask):6.2f}%"
    short = f"r{job.replicate} L{job.level:<2} {job.branch:<12} {100 * M.density(mask):6.2f}%"
    bar = bars.job(short, total - start)

    def show(done: int, last: dict[str, Any]) -> None:
        bar.update(1)
        if done % 50 == 0 or done == total:
            bar.set_postfix_str(f"test acc {last['test_acc']:.3f}", refresh=False)

    result = train(
        model,
        data,
        cfg.train,
        mask=mask,
        data_seed=data_seed,
        start=start,
        save_at=save_at,
        on_save=on_save,
        progress=show if bar is not None else None,
    )
    if bar is not None:
        bar.set_postfix_str(f"test acc {result.final_test_acc:.3f}")
        bar.close()
    else:
        print(
            f"{desc}  test acc {result.final_test_acc:.4f}  (early-stop {result.best_test_acc:.4f} "
            f"@ {result.early_stop_step} it, {result.wall_time_s:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
    return result


def _finish(job: JobDir, model: nn.Module, mask: M.Mask, result: TrainResult) -> None:
    """Write a job's outputs; ``result.json`` last, so its presence means the job is complete."""
    save_tensors(job.file("final.safetensors"), _state(model))
    atomic_write_text(job.file("metrics.jsonl"), "".join(json.dumps(row) + "\n" for row in result.metrics))
    summary = {
        "replicate": job.replicate,
        "level": job.level,
        "branch": job.branch,
        "density": M.density(mask),
        "layer_densities": M.layer_densities(mask),
        **result.summary(),
    }
    write_json(job.file("result.json"), summary)


def collect_results(run_dir: Path, config: ExperimentConfig) -> list[dict[str, Any]]:
    """Rows of every completed job within the configured replicates, levels and baselines."""
    rows = []
    for r in range(config.imp.replicates):
        for level in range(level_count(config) + 1):
            for branch in ("ticket", *config.imp.baselines) if level else ("ticket",):
                job = JobDir(run_dir, r, level, branch)
                if job.done:
                    rows.append({k: v for k, v in job.result().items() if k in RESULT_COLUMNS})
    return rows


@dataclass
class Ticket:
    """A winning ticket: the mask and the rewound (masked) weights it trains from."""

    level: int
    density: float
    mask: M.Mask
    state: dict[str, torch.Tensor]

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the rewound weights into ``model`` and zero its pruned weights."""
        model.load_state_dict(self.state)
        return M.apply_mask(model, self.mask)


def load_ticket(run_dir: Path, level: int, replicate: int = 0, device: str | torch.device = "cpu") -> Ticket:
    job = JobDir(run_dir, replicate, level, "ticket")
    if not job.done:
        raise TicketlabError(f"level {level} of replicate {replicate} in {run_dir} has not finished")
    init = job.file("init.safetensors") if level else job.path.parent / "init.safetensors"
    mask = M.load_mask(job.path.parent / "mask.safetensors", device)
    return Ticket(level, M.density(mask), mask, load_tensors(init, device))


def user_problem(model: nn.Module, data: Dataset, seed: int) -> Problem:
    """A :class:`Problem` for any ``nn.Module``: its current weights are replicate 0's theta_0."""
    device = data.train.x.device
    base = copy.deepcopy(model).to(device)

    def init_model(replicate: int) -> nn.Module:
        m = copy.deepcopy(base)
        if replicate:
            from ticketlab.models import initialize

            initialize(m, "default", derive_seed(seed, replicate, "init"))
        return m

    def fresh_model(s: int) -> nn.Module:
        from ticketlab.models import initialize

        return initialize(copy.deepcopy(base), "default", s)

    h = hashlib.sha256()
    for k, v in base.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    identity = {"model": type(model).__name__, "weights": h.hexdigest()[:10]}
    return Problem(data, init_model, fresh_model, identity)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TicketlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TicketlabError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TicketlabError(f"device {name!r}: there are only {torch.cuda.device_count()} GPU(s)")
        # Same seed, same result -- and resuming a killed run -- need deterministic kernels on the GPU too.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


def registry_problem(config: ExperimentConfig, data: Dataset) -> Problem:
    """A :class:`Problem` for a registered model, initialised by the configured scheme."""
    from ticketlab.models import create_model, initialize

    mc = config.model
    kwargs = mc.kwargs()
    device = data.train.x.device

    def build(seed: int) -> nn.Module:
        model = create_model(mc.model, data.input_shape, data.num_classes, **kwargs)
        return initialize(model, mc.init, seed).to(device)

    def init_model(replicate: int) -> nn.Module:
        return build(derive_seed(config.imp.seed, replicate, "init"))

    return Problem(data, init_model, build, {"model": mc.model, "dataset": data.name})


def imp(
    config: ExperimentConfig, *, out: str | Path = "runs", device: str = "auto", progress: bool = False
) -> tuple[Path, list[dict[str, Any]]]:
    """Run the configured experiment under ``out/<model>-<dataset>-<hash>``; everything is validated first."""
    from ticketlab.data import load_dataset

    dev = resolve_device(device)
    d = config.data
    data = load_dataset(d.dataset, data_dir=d.data_dir or None, val_size=d.val_size, augment=d.augment, device=dev)
    problem = registry_problem(config, data)
    run_dir = Path(out) / f"{config.model.model}-{config.data.dataset}-{config.run_hash()}"
    return run_dir, run_imp(config, problem, run_dir, progress=progress)
