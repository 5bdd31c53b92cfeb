"""Branches: questions asked of the finished levels of an IMP run, without recomputing the trunk.

A branch takes a level's ticket (its mask, the rewound weights theta_k, and the trained weights the mask was
pruned from), changes one thing -- where the weights start, the LR schedule, the signs, some noise -- and trains
the result like the trunk trains a ticket: same data order, same budget (from iteration k to the end). Each
(replicate, level, branch with its options) is a job under the run directory, so a branch resumes like the trunk
and a second identical command does no work; its rows join ``results.csv`` with the options in the branch name.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab import prunable as P
from ticketlab.config import ExperimentConfig, as_dict
from ticketlab.data import iterations_per_epoch, load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.jobs import Job, run_jobs
from ticketlab.plan import Plan, make_plan, random_baseline
from ticketlab.problem import Problem, registry_problem, state_of
from ticketlab.pruning import random_mask
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.steps import Step
from ticketlab.store import load_tensors, save_tensors
from ticketlab.training import Schedule, train

State = dict[str, torch.Tensor]


@dataclass
class Start:
    """A finished level, as a branch sees it."""

    cfg: ExperimentConfig
    replicate: int
    level: int
    mask: M.Mask  # the level's ticket
    rewind: State  # theta_k, the trunk's rewind point (theta_0 when k = 0)
    init: State  # theta_0
    trained: State  # the trained weights the level's mask was pruned from
    k: int  # the trunk's rewind iteration
    total: int  # the end of training (iterations)
    per_epoch: int  # iterations per epoch
    seed: int  # this branch's own seed (replicate, level, name)
    dense_at: Callable[[int], State]  # the dense network's weights after any number of iterations
    trunk_random: Callable[[], M.Mask]  # the trunk's own random-pruning baseline mask for this level
    structured: bool  # the run prunes whole units (masks also hold biases and norm parameters)
    begin: int | None = None  # where a branch's training starts, when not at k (set by the branch)


# A branch returns the weights to train from (a full state dict), the mask, and the training config.
Branch = Callable[..., tuple[State, M.Mask, Any]]
BRANCHES: dict[str, tuple[Branch, dict[str, Any]]] = {}


def _register(**defaults: Any):
    def wrap(fn: Branch) -> Branch:
        BRANCHES[fn.__name__] = (fn, defaults)
        return fn

    return wrap


def _masked(state: State, mask: M.Mask) -> State:
    return {n: (t * mask[n].to(t.device, t.dtype) if n in mask else t.clone()) for n, t in state.items()}


@_register(strategy="trunk")
def random_prune(s: Start, fresh: Callable[[int], nn.Module], strategy: str) -> tuple[State, M.Mask, Any]:
    """A random mask at the ticket's densities (per layer, or per pool of layers under one threshold), from theta_k.
    ``strategy``: trunk (as the trunk's baseline pools them), layerwise, or global."""
    if strategy not in ("trunk", "layerwise", "global"):
        raise TicketlabError(f"random_prune: strategy must be trunk, layerwise or global, not {strategy!r}")
    if strategy == "trunk":  # exactly the trunk's baseline (its pools, its seed): the same job
        mask = s.trunk_random()
    else:
        if s.structured:
            raise TicketlabError("random_prune: a structured run's baseline is random units; use --strategy trunk")
        pools = [(n,) for n in s.mask] if strategy == "layerwise" else [tuple(s.mask)]
        mask = random_mask(s.mask, derive_seed(s.cfg.imp.seed, s.replicate, s.level, "random_prune", strategy), pools)
    return _masked(s.rewind, mask), mask, s.cfg.train


@_register()
def reinit(s: Start, fresh: Callable[[int], nn.Module]) -> tuple[State, M.Mask, Any]:
    """The ticket's mask on a newly initialised network (the trunk's own re-init baseline, after the fact)."""
    model = fresh(derive_seed(s.cfg.imp.seed, s.replicate, s.level, "reinit"))
    return _masked(model.state_dict(), s.mask), s.mask, s.cfg.train


@_register(to="")
def rewind(s: Start, fresh: Callable[[int], nn.Module], to: str) -> tuple[State, M.Mask, Any]:
    """The ticket's mask on the dense network's weights at another step than the trunk's k (``to``: 0it, 500it,
    2ep, ...), trained from there with the schedule from there (Frankle et al. 2020's rewinding sweep). The
    weights at that step are reproduced by replaying the dense training (same seed and data order)."""
    if not to:
        raise TicketlabError("rewind needs --to, e.g. --to 100it or --to 1ep")
    step = Step.parse(to).iterations(s.per_epoch)
    if step >= s.total:
        raise TicketlabError(f"rewind --to {to} ({step} it) must come before the end of training ({s.total} it)")
    s.begin = step
    return _masked(s.dense_at(step), s.mask), s.mask, s.cfg.train


@_register()
def finetune(s: Start, fresh: Callable[[int], nn.Module]) -> tuple[State, M.Mask, Any]:
    """The trained weights, pruned, trained on at the schedule's final LR (constant) for the same budget."""
    final_lr = Schedule.from_config(s.cfg.train, s.per_epoch).lr(s.total - 1)
    train = replace(s.cfg.train, lr=final_lr, schedule="constant", warmup="0it", milestones=())
    return _masked(s.trained, s.mask), s.mask, train


@_register()
def lr_rewind(s: Start, fresh: Callable[[int], nn.Module]) -> tuple[State, M.Mask, Any]:
    """The trained weights, pruned, with the LR schedule replayed from iteration k (Renda et al. 2020)."""
    return _masked(s.trained, s.mask), s.mask, s.cfg.train


@_register(layers="")
def partial_rewind(s: Start, fresh: Callable[[int], nn.Module], layers: str) -> tuple[State, M.Mask, Any]:
    """``layers`` (comma-separated parameter names or module prefixes) rewound to theta_k; every other tensor
    kept at its trained value."""
    chosen = [p.strip() for p in layers.split(",") if p.strip()]
    if not chosen:
        raise TicketlabError("partial_rewind needs --layers, e.g. --layers fc.0.weight or --layers fc.0")
    picked = {n for n in s.rewind if any(n == c or n.startswith(c + ".") for c in chosen)}
    unknown = [c for c in chosen if not any(n == c or n.startswith(c + ".") for n in s.rewind)]
    if unknown:
        raise TicketlabError(f"partial_rewind: {unknown} name no tensor of the model; it has {list(s.rewind)}")
    state = {n: (s.rewind[n] if n in picked else s.trained[n]).clone() for n in s.rewind}
    return _masked(state, s.mask), s.mask, s.cfg.train


@_register(magnitudes="constant")
def sign_only(s: Start, fresh: Callable[[int], nn.Module], magnitudes: str) -> tuple[State, M.Mask, Any]:
    """theta_k's signs kept, magnitudes replaced (Zhou et al. 2019): ``constant``, each layer's standard
    deviation at initialisation, or ``resample``, those of a new initialisation."""
    if magnitudes not in ("constant", "resample"):
        raise TicketlabError(f"sign_only: magnitudes must be constant or resample, not {magnitudes!r}")
    _weights_only(s, "sign_only")
    new = fresh(s.seed).state_dict() if magnitudes == "resample" else None
    state = {n: t.clone() for n, t in s.rewind.items()}
    for n in s.mask:
        size = s.init[n].float().std() if new is None else new[n].abs().to(s.rewind[n].device)
        state[n] = torch.sign(s.rewind[n]) * size
    return _masked(state, s.mask), s.mask, s.cfg.train


@_register(dataset="", classes="", optimizer="", lr=0.0, reinit_output="auto")
def transfer(
    s: Start,
    fresh: Callable[[int], nn.Module],
    dataset: str,
    classes: str,
    optimizer: str,
    lr: float,
    reinit_output: str,
) -> tuple[State, M.Mask, Any]:
    """The ticket (mask and theta_k) trained on another dataset or class subset, and/or with another optimizer
    or LR (Morcos et al. 2019). The output layer is re-initialised (``auto``) when the task changes: another
    dataset or classes, or another class count; a changed shape gets a random mask at the ticket's density.
    ``fresh`` builds networks for the target task; the target's data and training config are set up by
    :func:`run_branch`."""
    if reinit_output not in ("auto", "yes", "no"):
        raise TicketlabError(f"transfer: reinit_output must be auto, yes or no, not {reinit_output!r}")
    target = fresh(s.seed)
    out = P.output_layer_name(target)
    bias = out.removesuffix("weight") + "bias"
    new_task = bool(dataset or classes)
    shape_changed = tuple(target.state_dict()[out].shape) != tuple(s.rewind[out].shape)
    if shape_changed and reinit_output == "no":
        raise TicketlabError("transfer: the target has another class count, so the output layer must be re-initialised")
    state = {n: t.clone() for n, t in s.rewind.items()}
    mask = dict(s.mask)
    if reinit_output == "yes" or (reinit_output == "auto" and (new_task or shape_changed)):
        fresh_state = target.state_dict()
        for n in (out, bias):
            if n in fresh_state:
                state[n] = fresh_state[n].to(s.rewind[n].device)
        if shape_changed:
            for n in (out, bias):
                if n in s.mask:
                    dense = {n: torch.ones_like(state[n], dtype=torch.bool)}
                    keep = round(float(s.mask[n].float().mean()) * dense[n].numel())
                    dense[n].view(-1)[keep:] = False
                    mask[n] = random_mask(dense, s.seed, [(n,)])[n]
    return _masked(state, mask), mask, None


def _transfer_config(cfg: ExperimentConfig, opts: dict[str, Any]) -> ExperimentConfig:
    data, train = {}, {}
    if opts["dataset"]:
        data["dataset"] = opts["dataset"]
    if opts["classes"]:
        data["classes"] = opts["classes"]
    if opts["dataset"] or opts["classes"]:
        data["val_size"] = 0 if opts["dataset"] else cfg.data.val_size
    if opts["optimizer"]:
        train["optimizer"] = opts["optimizer"]
    if opts["lr"]:
        train["lr"] = opts["lr"]
    if not data and not train:
        raise TicketlabError("transfer needs --dataset, --classes, --optimizer or --lr")
    return cfg.replace(data=data, train=train)


SHUFFLES = ("none", "global", "layer", "filter", "sign")


@_register(noise=0.0, flip=0.0, shuffle="none")
def perturb(
    s: Start, fresh: Callable[[int], nn.Module], noise: float, flip: float, shuffle: str
) -> tuple[State, M.Mask, Any]:
    """theta_k's kept weights changed: Gaussian ``noise`` (std = noise x the layer's std at initialisation), the
    signs of a fraction ``flip`` of them flipped, or their values shuffled (``global`` over every layer, within
    each ``layer``, within each output ``filter``/neuron, or among weights of the same ``sign`` in a layer)."""
    if shuffle not in SHUFFLES:
        raise TicketlabError(f"perturb: shuffle must be one of {', '.join(SHUFFLES)}, not {shuffle!r}")
    if noise < 0 or not 0 <= flip <= 1:
        raise TicketlabError(f"perturb: noise must be >= 0 and flip in [0, 1], got noise={noise}, flip={flip}")
    if noise == 0 and flip == 0 and shuffle == "none":
        raise TicketlabError("perturb needs --noise, --flip or --shuffle")
    if not math.isfinite(noise):
        raise TicketlabError(f"perturb: noise must be a finite number, got {noise}")
    _weights_only(s, "perturb")
    g = torch.Generator().manual_seed(s.seed)
    state = {n: t.clone() for n, t in s.rewind.items()}
    for n, m in s.mask.items():
        w, keep = state[n].cpu(), m.cpu()
        if noise:
            w = w + keep * torch.randn(w.shape, generator=g) * noise * s.init[n].float().std().cpu()
        if flip:
            alive = keep.flatten().nonzero().flatten()
            chosen = alive[torch.randperm(len(alive), generator=g)[: round(flip * len(alive))]]
            flat = w.flatten().clone()
            flat[chosen] = -flat[chosen]
            w = flat.view_as(w)
        state[n] = w.to(state[n].device)
    if shuffle != "none":
        _shuffle(state, s.mask, shuffle, g)
    return _masked(state, s.mask), s.mask, s.cfg.train


def _weights_only(s: Start, name: str) -> None:
    if s.structured:  # its masks hold BatchNorm scales and biases, which have no init spread of their own
        raise TicketlabError(f"{name} changes weights one by one; it does not apply to a structured (--units) run")


def _shuffle(state: State, mask: M.Mask, how: str, g: torch.Generator) -> None:
    """Permute kept values within each group, in place: every group keeps its multiset of values."""
    groups: list[list[tuple[str, torch.Tensor]]] = []  # (layer, flat indices) making one group
    for n, m in mask.items():
        flat = m.cpu().flatten()
        if how == "filter":
            rows = m.cpu().reshape(m.shape[0], -1)
            width = rows.shape[1]
            groups += [[(n, r * width + rows[r].nonzero().flatten())] for r in range(rows.shape[0])]
        elif how == "sign":
            w = state[n].cpu().flatten()
            groups += [[(n, (flat & (w > 0)).nonzero().flatten())], [(n, (flat & (w <= 0)).nonzero().flatten())]]
        else:
            groups.append([(n, flat.nonzero().flatten())])
    if how == "global":
        groups = [[part for group in groups for part in group]]
    flats = {n: state[n].cpu().flatten().clone() for n in mask}
    for group in groups:
        values = torch.cat([flats[n][idx] for n, idx in group])
        values = values[torch.randperm(len(values), generator=g)]
        for (n, idx), part in zip(group, torch.split(values, [len(i) for _, i in group])):
            flats[n][idx] = part
    for n in mask:
        state[n] = flats[n].view_as(state[n]).to(state[n].device)


def label(name: str, options: dict[str, Any]) -> str:
    """The branch's name in results and on disk: the name, and the options that differ from its defaults."""
    _, defaults = BRANCHES[name]
    changed = {k: v for k, v in options.items() if v != defaults[k]}
    if not changed:
        return name
    return name + "[" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())) + "]"


def _dirname(text: str) -> str:
    if text.isidentifier():
        return text
    return text.split("[")[0] + "-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The branch's options: its defaults, overridden by ``given`` (coerced to the defaults' types)."""
    if name not in BRANCHES:
        raise TicketlabError(f"unknown branch {name!r}; known: {', '.join(BRANCHES)}")
    _, defaults = BRANCHES[name]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TicketlabError(f"branch {name} takes no option(s) {unknown}; it takes {sorted(defaults) or 'none'}")
    out = dict(defaults)
    for k, v in given.items():
        try:
            out[k] = type(defaults[k])(v)
        except ValueError:
            raise TicketlabError(f"branch {name}: cannot read {k}={v!r} as {type(defaults[k]).__name__}") from None
        if isinstance(out[k], str):  # "5, 6" and "5,6" are one request, one job
            out[k] = ",".join(part.strip() for part in out[k].split(",") if part.strip())
    return out


def run_branch(
    run_dir: str | Path | RunDir,
    name: str,
    *,
    levels: list[int] | None = None,
    options: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run (or resume) branch ``name`` off finished levels of the IMP run in ``run_dir`` (every finished level
    when ``levels`` is None) and return the rows of the updated ``results.csv``."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    opts = parse_options(name, options or {})
    saved = run.saved()
    if "weights" in saved:
        raise TicketlabError(f"{run.path} was run on your own model; branches need a registered model")
    if "start_mask" in saved and name in ("random_prune", "transfer"):
        raise TicketlabError(f"{name} would draw weights this run forbids (a disjoint-tickets round)")
    cfg = run.config()
    tag = label(name, opts)
    finished = run.finished_levels(cfg)
    levels = finished if levels is None else levels
    missing = [lv for lv in levels if lv not in finished]
    if missing or not levels:
        raise TicketlabError(
            f"levels {missing or levels} of {run.path} have not finished (finished: {finished or 'none'}); "
            "run the trunk further first"
        )
    dev = resolve_device(device)
    problem = registry_problem(cfg, load_configured(cfg.data, dev))
    plan = make_plan(cfg, problem)
    target, target_problem = cfg, problem
    if name == "transfer":
        target, target_problem = _transfer_target(cfg, problem, plan, opts, dev)
    with run.lock():
        jobs = [
            job
            for r in range(cfg.imp.replicates)
            for level in levels
            if (job := _branch_job(run, name, tag, opts, r, level, cfg, problem, plan, target, target_problem))
        ]
        run_jobs(run, jobs, progress=progress)
        rows = run.results(cfg)
        run.write_results(rows)
    return rows


def _transfer_target(cfg: ExperimentConfig, problem: Problem, plan: Plan, opts: dict[str, Any], dev):
    """The config and problem a transfer branch trains on."""
    target = _transfer_config(cfg, opts)
    data = problem.data
    target_data = load_configured(target.data, dev) if target.data != cfg.data else data
    if target_data.input_shape != data.input_shape:
        raise TicketlabError(
            f"transfer: {target.data.dataset} has inputs of shape {target_data.input_shape}, the ticket was "
            f"found on {data.input_shape}; pick a dataset of the same shape"
        )
    per_epoch = iterations_per_epoch(len(target_data.train), target.train.batch_size)
    if plan.k >= Step.parse(target.train.steps).iterations(per_epoch):
        raise TicketlabError("transfer: the target's training ends before the ticket's rewind step")
    return target, registry_problem(target, target_data)


def _branch_job(
    run: RunDir, name, tag, opts, r, level, cfg, problem: Problem, plan: Plan, target, target_problem: Problem
) -> Job | None:
    """The job of branch ``tag`` at (replicate ``r``, ``level``), or None when it is done or its level is not."""
    files = run.job(r, level, _dirname(tag))
    ticket = run.finished(run.job(r, level, "ticket"), quiet=True)
    if ticket is None or run.finished(files) is not None:
        return None
    dev = problem.data.train.x.device
    level0 = run.level(r, 0)
    dense = run.finished(run.job(r, 0, "ticket"), quiet=True) or {}
    source = run.job(r, plan.source_level(level), "ticket")
    source_record = run.finished(source, quiet=True) or {}

    def recorded(record: dict, path: Path) -> str | None:
        return record.get("files", {}).get(run.rel(path))

    seed = derive_seed(cfg.imp.seed, r, level, "branch", tag)
    ticket_mask = M.load_mask(run.level(r, level).mask, dev)
    start = Start(
        cfg=cfg,
        replicate=r,
        level=level,
        mask=ticket_mask,
        rewind=load_tensors(level0.rewind, dev, sha256=recorded(dense, level0.rewind)),
        init=load_tensors(level0.init, dev, sha256=recorded(dense, level0.init)),
        trained=load_tensors(source.final, dev, sha256=recorded(source_record, source.final)),
        k=plan.k,
        total=plan.total,
        per_epoch=plan.per_epoch,
        seed=seed,
        dense_at=lambda step: dense_at(run, cfg, problem, r, step),
        trunk_random=lambda: random_baseline(
            plan, problem, ticket_mask, derive_seed(cfg.imp.seed, r, level, "random_prune")
        ),
        structured=plan.units is not None,
    )
    fn, _ = BRANCHES[name]
    state, mask, train_cfg = fn(start, target_problem.fresh_model, **opts)
    begin = plan.k if start.begin is None else start.begin

    def build():
        model = target_problem.init_model(r)
        model.load_state_dict(state)
        return model, mask

    branch_cfg = target.replace(train=as_dict(train_cfg or target.train))
    return Job(
        files=files,
        build=build,
        train=branch_cfg.train,
        data=target_problem.data,
        data_seed=derive_seed(cfg.imp.seed, r, "data"),
        start=begin,
        inputs={"mask": recorded(ticket, run.level(r, level).mask) or ""},
        label=tag,
        options=opts,
        init_file=files.init,
        mask_file=files.mask,
    )


def dense_at(run: RunDir, cfg: ExperimentConfig, problem: Problem, r: int, step: int) -> State:
    """The dense network's weights after ``step`` iterations: theta_0, or the trunk's dense training replayed
    from theta_0 to ``step`` (bit for bit the trunk's, on the same machine), cached in level 0."""
    level0 = run.level(r, 0)
    device = problem.data.train.x.device
    if step == 0:
        return load_tensors(level0.init, device)
    path = level0.dense_at(step)
    if not path.exists():
        model = problem.init_model(r)
        model.load_state_dict(load_tensors(level0.init, device))
        mask = M.load_mask(level0.mask, device)
        train(model, problem.data, cfg.train, mask=mask, data_seed=derive_seed(cfg.imp.seed, r, "data"), until=step)
        save_tensors(path, state_of(model))
    return load_tensors(path, device)
