"""Branches: questions asked of the finished levels of an IMP run, without recomputing the trunk.

A branch takes a level's ticket (its mask, the rewound weights theta_k, and the trained weights the mask was
pruned from), changes one thing -- where the weights start, the LR schedule, the signs, some noise -- and trains
the result like the trunk trains a ticket: same data order, same budget (from iteration k to the end). Each
(replicate, level, branch with its options) is a job under the run directory, so a branch resumes like the trunk
and a second identical command does no work; its rows join ``results.csv`` with the options in the branch name.

A branch is one function registered with :func:`~ticketlab.branches.base.register`, one file per family:
``baselines`` (reinit, random_prune), ``rewinding`` (rewind, finetune, lr_rewind, partial_rewind), ``perturb``
(sign_only, perturb), ``transfer``, ``untrained`` (supermask_eval). Its keyword-only parameters are its options
(see ``base``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ticketlab import masks as M
from ticketlab.batched import parse_setting
from ticketlab.branches import baselines, perturb, rewinding, sanity, transfer, untrained  # noqa: F401 -- each registers its branches
from ticketlab.branches.base import BRANCHES, Branch, BranchStart, Option, Start, register
from ticketlab.branches.rewinding import dense_at
from ticketlab.config import ExperimentConfig, as_dict
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.jobs import Job, run_jobs
from ticketlab.plan import Plan, make_plan, random_baseline
from ticketlab.problem import Problem, registry_problem
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import DamagedFile, load_tensors, verify

__all__ = [
    "BRANCHES",
    "Branch",
    "BranchStart",
    "Option",
    "Start",
    "dense_at",
    "get",
    "label",
    "option_help",
    "parse_options",
    "register",
    "run_branch",
]


def get(name: str) -> Branch:
    """The registered branch ``name``; TicketlabError naming the known ones otherwise."""
    if name not in BRANCHES:
        raise TicketlabError(f"unknown branch {name!r}; known: {', '.join(BRANCHES)}")
    return BRANCHES[name]


def label(name: str, options: dict[str, Any]) -> str:
    """The branch's name in results and on disk: the name, and the options that differ from its defaults."""
    defaults = get(name).defaults
    changed = {k: v for k, v in options.items() if v != defaults[k]}
    if not changed:
        return name
    return name + "[" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())) + "]"


def dir_name(text: str) -> str:
    """The job directory of the branch labelled ``text`` (see :func:`label`): the label itself when it is an
    identifier (``reinit``), else its name and a digest of it (``rewind[to=5it]`` -> ``rewind-<10 hex>``)."""
    if text.isidentifier():
        return text
    return text.split("[")[0] + "-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The branch's options: its defaults, overridden by ``given`` (coerced to the annotated types)."""
    branch = get(name)
    unknown = sorted(set(given) - set(branch.options))
    if unknown:
        raise TicketlabError(f"branch {name} takes no option(s) {unknown}; it takes {sorted(branch.options) or 'none'}")
    return {**branch.defaults, **{k: branch.options[k].parse(name, v) for k, v in given.items()}}


def option_help() -> dict[str, str]:
    """Every option name of every branch, with its help: ``"NAME: help"``, merged over the branches sharing it."""
    merged: dict[str, list[str]] = {}
    for branch in BRANCHES.values():
        for option in branch.options.values():
            merged.setdefault(option.name, []).append(f"{branch.name}: {option.describe()}")
    return {name: "; ".join(parts) for name, parts in merged.items()}


@dataclass(frozen=True)
class _Request:
    """One branch command: the branch with its options, on a run, trained on ``target`` (the run's own config and
    problem, unless the branch brings its own)."""

    run: RunDir
    branch: Branch
    options: dict[str, Any]
    tag: str  # the label
    cfg: ExperimentConfig
    problem: Problem
    plan: Plan
    target: ExperimentConfig
    target_problem: Problem


def run_branch(
    run_dir: str | Path | RunDir,
    name: str,
    *,
    levels: list[int] | None = None,
    options: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) branch ``name`` off finished levels of the IMP run in ``run_dir`` (every finished level
    when ``levels`` is None) and return the rows of the updated ``results.csv``. ``batch_jobs``: how many of the
    branch's jobs (its levels, over replicates) may train together: "auto", "off" or K (:mod:`ticketlab.batched`);
    ``sparse_kernels``: "auto" or "off" (:mod:`ticketlab.sparse`); ``tensorboard``: a directory for each job's
    TensorBoard scalars (:mod:`ticketlab.tensorboard`)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    batch_jobs = parse_setting(batch_jobs)
    opts = parse_options(name, options or {})
    branch = get(name)
    saved = run.saved()
    if "weights" in saved:
        raise TicketlabError(f"{run.path} was run on your own model; branches need a registered model")
    if "start_mask" in saved and branch.draws_mask:
        raise TicketlabError(f"{name} would draw weights this run forbids (a disjoint-tickets round)")
    cfg = run.config()
    levels = _levels(run, cfg, levels)
    dev = resolve_device(device)
    problem = registry_problem(cfg, load_configured(cfg.data, dev))
    plan = make_plan(cfg, problem)
    target, target_problem = (cfg, problem) if branch.target is None else branch.target(cfg, problem, plan, opts, dev)
    request = _Request(run, branch, opts, label(name, opts), cfg, problem, plan, target, target_problem)
    with run.lock():
        jobs = [_branch_job(request, r, level) for r in range(cfg.imp.replicates) for level in levels]
        run_jobs(run, jobs, progress=progress, batch_jobs=batch_jobs, kernels=sparse_kernels, tensorboard=tensorboard)
        rows = run.results(cfg)
        run.write_results(rows)
    return rows


def _levels(run: RunDir, cfg: ExperimentConfig, levels: list[int] | None) -> list[int]:
    """The levels asked for (every finished one when None), refused unless all have finished."""
    finished = run.finished_levels(cfg)
    damaged = [lv for lv in range(1, max(finished, default=0) + 1) if lv not in finished]
    if damaged:  # a ticket recorded as finished whose files are not as recorded
        raise TicketlabError(
            f"level(s) {damaged} of {run.path} are damaged; run the `ticketlab imp` command that made the run "
            "again to repair them, then this branch"
        )
    levels = finished if levels is None else levels
    missing = [lv for lv in levels if lv not in finished]
    if missing or not levels:
        raise TicketlabError(
            f"levels {missing or levels} of {run.path} have not finished (finished: {finished or 'none'}); "
            "run the trunk further first"
        )
    return levels


def _branch_job(q: _Request, r: int, level: int) -> Job:
    """The job of the branch at (replicate ``r``, ``level``), finished or not (the executor reads back finished
    ones, and forms the same batches whatever is finished)."""
    files = q.run.job(r, level, dir_name(q.tag))
    try:  # the trunk's files: the branch cannot repair them, the trunk's own command can
        start, inputs = _start(q, r, level)
    except DamagedFile as e:
        raise TicketlabError(
            f"{e.path} is damaged or missing ({e.why}); run the `ticketlab imp` command that made {q.run.path} "
            "again to repair it, then this branch"
        ) from None
    begins = q.branch.fn(start, q.target_problem.fresh_model, **q.options)

    def build():
        model = q.target_problem.init_model(r)
        model.load_state_dict(begins.state)
        return model, begins.mask

    branch_cfg = q.target.replace(train=as_dict(begins.train or q.target.train))
    return Job(
        files=files,
        build=build,
        train=branch_cfg.train,
        data=q.target_problem.data,
        data_seed=derive_seed(q.cfg.imp.seed, r, "data"),
        start=q.plan.k if begins.begin is None else begins.begin,
        inputs=inputs,
        label=q.tag,
        options=q.options,
        init_file=files.init,
        mask_file=files.mask,
    )


def _recorded(run: RunDir, record: dict, path: Path) -> str | None:
    """The SHA-256 a job's result ``record`` holds for ``path`` (None when it lists no files: ticketlab 0.1)."""
    return record.get("files", {}).get(run.rel(path))


def _trunk_record(run: RunDir, job) -> dict[str, Any]:
    """A finished trunk job's verified result record; DamagedFile when it is damaged or has not finished."""
    record = run.finished(job, repair=False)
    if record is None:
        raise DamagedFile(job.result, "the job has not finished, or its files are not as recorded")
    return record


def _start(q: _Request, r: int, level: int) -> tuple[Start, dict[str, str]]:
    """The finished level (replicate ``r``, ``level``) as the branch sees it, and the SHA-256 of what it is made
    of (the branch's inputs). Every file is checked against its record: DamagedFile otherwise."""
    run, cfg, plan = q.run, q.cfg, q.plan
    dev = q.problem.data.train.x.device
    level0 = run.level(r, 0)
    dense = _trunk_record(run, run.job(r, 0, "ticket"))
    ticket = _trunk_record(run, run.job(r, level, "ticket"))
    source = run.job(r, plan.source_level(level), "ticket")
    trained = _recorded(run, _trunk_record(run, source), source.final)
    mask_file = run.level(r, level).mask
    mask_sha256 = ticket.get("inputs", {}).get("mask")  # the mask the ticket trained with (0.1: unrecorded)
    if mask_sha256:
        verify(mask_file, mask_sha256)
    ticket_mask = M.load_mask(mask_file, dev)
    init_sha256, rewind_sha256 = _recorded(run, dense, level0.init), _recorded(run, dense, level0.rewind)
    start = Start(
        cfg=cfg,
        replicate=r,
        level=level,
        mask=ticket_mask,
        rewind=load_tensors(level0.rewind, dev, sha256=rewind_sha256),
        init=load_tensors(level0.init, dev, sha256=init_sha256),
        trained=load_tensors(source.final, dev, sha256=trained),
        k=plan.k,
        total=plan.total,
        per_epoch=plan.per_epoch,
        seed=derive_seed(cfg.imp.seed, r, level, "branch", q.tag),
        dense_at=partial(dense_at, run, cfg, q.problem, r, init_sha256=init_sha256),
        trunk_random=partial(
            random_baseline, plan, q.problem, ticket_mask, derive_seed(cfg.imp.seed, r, level, "random_prune")
        ),
        structured=plan.units is not None,
        output=plan.output,
    )
    inputs = {
        "mask": mask_sha256 or "",
        "init": init_sha256 or "",
        "rewind": rewind_sha256 or "",
        "trained": trained or "",
    }
    return start, inputs
