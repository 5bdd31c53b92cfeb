"""Iterative magnitude pruning with rewinding, and its baselines, as one resumable loop (the trunk).

Train the dense network (level 0) of every replicate, saving the weights at the rewind step k; then per level and
replicate: prune the previous level's trained ticket (or, one-shot / at init, the dense network), rewind the
survivors to step k and train them, beside the baselines (the ticket's mask on a new initialisation; a random mask
at the ticket's densities). A level's jobs, over all replicates, are listed, then handed to the executor, which
may train them together (:mod:`ticketlab.batched`). Every job and mask is recorded and
verified in the run directory (:mod:`ticketlab.rundir`), so a killed or damaged run resumes where it stopped
and, jobs being deterministic, ends with the same results.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

from ticketlab import masks as M
from ticketlab import scores as S
from ticketlab.batched import parse_setting
from ticketlab.config import ExperimentConfig
from ticketlab.data import batches, load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.jobs import Executor, Job, run_jobs
from ticketlab.plan import Plan, full_mask, make_plan, random_baseline
from ticketlab.problem import Problem, State, registry_problem
from ticketlab.pruning import (
    Group,
    alive_units,
    at_level,
    collapse,
    compound,
    expand,
    on_ladder,
    one_shot_groups,
    prune,
    prune_in_rounds,
)
from ticketlab.rundir import RunDir, level_count
from ticketlab.scores import Examples
from ticketlab.seeds import derive_seed
from ticketlab.store import load_tensors, tensor_digest
from ticketlab.tensorboard import writer_class
from ticketlab.training.objectives import CLASSIFICATION


def imp(
    config: ExperimentConfig,
    *,
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> RunDir:
    """Run (or resume) the configured experiment in ``out/<model>-<dataset>-<hash>``; everything a user can get
    wrong is checked before anything is written (TicketlabError). ``batch_jobs``, ``sparse_kernels``,
    ``tensorboard``: see :func:`run_imp`."""
    parse_setting(batch_jobs)
    data = load_configured(config.data, resolve_device(device))
    run = RunDir(Path(out) / f"{config.model.model}-{config.data.dataset}-{config.run_hash()}")
    problem = registry_problem(config, data)
    return run_imp(
        config,
        problem,
        run,
        progress=progress,
        batch_jobs=batch_jobs,
        sparse_kernels=sparse_kernels,
        tensorboard=tensorboard,
    )


def run_imp(
    config: ExperimentConfig,
    problem: Problem,
    run_dir: str | Path | RunDir,
    *,
    progress: bool = False,
    start_mask: M.Mask | None = None,
    executor: Executor | None = None,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
    quiet: bool = False,
) -> RunDir:
    """Run (or resume) ``config`` on ``problem`` in ``run_dir``; writes and returns the run (its ``results.csv``
    holds one row per finished job).

    ``start_mask``: level 0's mask instead of the full one, for some or all of the prunable tensors (weights
    forbidden from the start, as the disjoint tickets experiment does, or a mask imported from
    torch.nn.utils.prune); iterative pruning only, since one-shot levels prune the full network.
    ``executor``: what trains each list of independent jobs (level 0 of every replicate; then each level's ticket
    and baselines of every replicate); by default :func:`ticketlab.jobs.run_jobs` with ``batch_jobs`` ("auto",
    "off" or K: how many jobs may train together, :mod:`ticketlab.batched`) and ``sparse_kernels`` ("auto" or
    "off": CSR kernels for layers sparse enough, :mod:`ticketlab.sparse`), writing each job's TensorBoard
    scalars under ``tensorboard`` when given (:mod:`ticketlab.tensorboard`).
    The run starts with one line on stderr saying what is not pruned, unless ``quiet``."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    sparse_kernels = str(sparse_kernels).strip().lower()
    if sparse_kernels not in ("auto", "off"):
        raise TicketlabError(f"--sparse-kernels (sparse_kernels=) {sparse_kernels[:40]!r}: give auto or off")
    if tensorboard is not None:
        writer_class()  # the package is there, before anything runs
    executor = executor or functools.partial(
        run_jobs, batch_jobs=parse_setting(batch_jobs), kernels=sparse_kernels, tensorboard=tensorboard
    )
    plan = make_plan(config, problem)  # every check a user can fail, before anything is written
    if start_mask is not None:
        if plan.from_dense:
            raise TicketlabError(
                "a starting mask (a disjoint round, or a model pruned with torch.nn.utils.prune) needs iterative "
                "pruning, not --one-shot or --at-init"
            )
        stray = sorted(set(start_mask) - set(plan.names))
        if stray or plan.units is not None:
            raise TicketlabError(
                f"the starting mask covers {stray or 'units'}, which this run does not prune; prunable: {plan.names} "
                "(biases are pruned with prune_biases, other tensors when --prunable names them)"
            )
        start_mask = {**full_mask(problem.init_model(0), plan), **start_mask}
        problem = problem.with_identity(start_mask=mask_digest(start_mask))
    with run.lock():
        run.claim(config, problem.identity)
        if not quiet:  # once the run is sure to start
            print(f"ticketlab: {plan.coverage}", file=sys.stderr, flush=True)
        trunks = [Trunk(config, problem, plan, run, r) for r in range(config.imp.replicates)]
        for t, record in zip(trunks, executor(run, [t.dense_job(start_mask) for t in trunks], progress=progress)):
            t.begin(record)
        for level in range(1, level_count(config) + 1):  # a level's jobs, over all replicates, in one list
            jobs = [t.level_jobs(level) for t in trunks]
            records = executor(run, [job for js in jobs for job in js], progress=progress)
            for t, js in zip(trunks, jobs):
                t.trained[level] = records[0]
                records = records[len(js) :]
        run.write_results(run.results(config))
    return run


def mask_digest(mask: M.Mask) -> str:
    """A short hash of a mask's names and values (ties a run directory to a starting mask)."""
    return tensor_digest((n, mask[n]) for n in sorted(mask))


class Trunk:
    """One replicate of the trunk: level 0, then per level the mask and the level's jobs. The run trains each
    level's jobs of every replicate together (one list for the executor, which may batch them)."""

    def __init__(self, cfg: ExperimentConfig, problem: Problem, plan: Plan, run: RunDir, r: int):
        self.cfg, self.problem, self.plan, self.run, self.r = cfg, problem, plan, run, r
        self.device = problem.data.train.x.device
        self.data_seed = derive_seed(cfg.imp.seed, r, "data")
        self.trained: dict[int, dict] = {}  # the ticket's result record, by level

    def begin(self, dense: dict) -> None:
        """Take level 0's record: load the rewind point and level 0's mask, which every level starts from."""
        level0 = self.run.level(self.r, 0)
        self.trained[0] = dense
        recorded = dense.get("files", {})  # ticketlab 0.1's records list no files
        self.rewind_digest = recorded.get(self.run.rel(level0.rewind), "")
        self.rewind = load_tensors(level0.rewind, self.device, sha256=recorded.get(self.run.rel(level0.rewind)))
        self.level0_mask = self.mask = M.load_mask(level0.mask, self.device)

    def level_jobs(self, level: int) -> list[Job]:
        """The jobs of ``level``: its mask (pruned now from the source level's ticket, or read back), then the
        ticket and the configured baselines."""
        parent = self.level0_mask if self.plan.from_dense else self.mask
        saved = self.run.level_mask(self.r, level, parent, self.device)
        if saved is None:
            source = self.trained[self.plan.source_level(level)]
            new = self.next_mask(level, parent, self.rewind, source, self.level0_mask)
            check_collapse(self.cfg, self.problem, new, f"replicate {self.r} level {level}")
            saved = new, self.run.save_level_mask(self.r, level, new)
        self.mask, digest = saved
        return self.jobs_of(level, self.mask, self.rewind, {"mask": digest, "start": self.rewind_digest})

    def dense_job(self, start_mask: M.Mask | None) -> Job:
        """Level 0: the dense network (without the forbidden weights of ``start_mask``), saving theta_0 and theta_k."""
        level0 = self.run.level(self.r, 0)

        def build():
            model = self.problem.init_model(self.r)
            if start_mask is None:
                return model, full_mask(model, self.plan)
            return model, {n: m.to(self.device) for n, m in start_mask.items()}

        return self._job(0, "ticket", build, init_file=level0.init, mask_file=level0.mask, rewind=self.plan.k)

    def jobs_of(self, level: int, mask: M.Mask, rewind: State, inputs: dict[str, str]) -> list[Job]:
        """The ticket of ``level`` (``mask`` on theta_k) and the configured baselines: independent jobs."""
        cfg, r, seed = self.cfg, self.r, self.cfg.imp.seed

        def rewound(m: M.Mask):
            model = self.problem.init_model(r)
            model.load_state_dict(rewind)
            return M.apply_mask(model, m), m

        def reinit():
            model = self.problem.fresh_model(derive_seed(seed, r, level, "reinit"))
            return M.apply_mask(model, mask), mask

        def random_prune():
            drawn = derive_seed(seed, r, level, "random_prune")
            return rewound(random_baseline(self.plan, self.problem, mask, drawn, self.level0_mask))

        files = self.run.job(r, level, "ticket")
        jobs = [self._job(level, "ticket", lambda: rewound(mask), inputs, init_file=files.init)]
        if "reinit" in cfg.imp.baselines:
            jobs.append(self._job(level, "reinit", reinit, {"mask": inputs["mask"]}))
        if "random_prune" in cfg.imp.baselines:
            random_files = self.run.job(r, level, "random_prune")
            jobs.append(self._job(level, "random_prune", random_prune, inputs, mask_file=random_files.mask))
        order = {b: i for i, b in enumerate(("ticket", *cfg.imp.baselines))}
        return sorted(jobs, key=lambda j: order[j.files.branch])

    def _job(self, level: int, branch: str, build, inputs=None, *, init_file=None, mask_file=None, rewind=None) -> Job:
        return Job(
            files=self.run.job(self.r, level, branch),
            build=build,
            train=self.cfg.train,
            data=self.problem.data,
            data_seed=self.data_seed,
            start=0 if level == 0 else self.plan.k,
            inputs=inputs or {},
            init_file=init_file,
            mask_file=mask_file,
            rewind=None if rewind is None else (rewind, self.run.level(self.r, 0).rewind),
        )

    def next_mask(self, level: int, base: M.Mask, start_state: State, source_record: dict, origin: M.Mask) -> M.Mask:
        """The mask of ``level``: prune ``base`` -- the previous ticket (iterative) or the dense network's mask
        (one-shot: as trained; at init: at the rewind point). After-training criteria score the weights the
        pruned network ended with against those it started from (theta_k); the others score the network itself.
        ``origin``: level 0's mask, from which the exact ladder counts."""
        cfg, plan, run = self.cfg, self.plan, self.run
        if plan.mode == "at-init":
            source = start_state
        else:
            job = run.job(self.r, plan.source_level(level), "ticket")
            source = load_tensors(job.final, self.device, sha256=source_record.get("files", {}).get(run.rel(job.final)))
        model = self.problem.init_model(self.r)
        model.load_state_dict(source)
        M.apply_mask(model, base)
        if plan.units is not None:
            origin = {f"{k}.weight": v for k, v in alive_units(plan.units, origin).items()}
        groups = level_groups(cfg, plan, base, level, {n: int(m.sum()) for n, m in origin.items()})
        seed = derive_seed(cfg.imp.seed, self.r, level)
        if plan.units is not None:
            unit_scores = S.score(cfg.prune.units, model=model, mask=base, units=plan.units)
            scores = {f"{k}.weight": v for k, v in unit_scores.items()}
            alive = {f"{k}.weight": v for k, v in alive_units(plan.units, base).items()}
            kept = {k.removesuffix(".weight"): v for k, v in prune(scores, alive, groups).items()}
            new = expand(plan.units, kept, model, base)
        else:
            criterion, data, bs = cfg.prune.criterion, self.problem.data, cfg.train.batch_size
            examples = Examples(
                data.input_shape,
                lambda: ((x, y) for _, x, y in batches(data.train, bs, seed, 0, cfg.prune.score_batches)),
                data.objective,
                tokens=not data.train.inputs(slice(0, 1)).is_floating_point(),
            )

            def score(current: M.Mask) -> dict[str, torch.Tensor]:
                return S.score(
                    criterion, model=model, mask=current, examples=examples, start=start_state, end=source, seed=seed
                )

            new = prune_in_rounds(score, base, groups, cfg.prune.rounds or S.get(criterion).rounds)
        if not M.is_subset(new, base):
            raise AssertionError("pruning must only remove weights")
        return new


def level_groups(
    cfg: ExperimentConfig, plan: Plan, base: M.Mask, level: int, origin: dict[str, int] | None = None
) -> list[Group]:
    """The groups and the fraction each removes from ``base`` to reach ``level``; ``origin``: weights (units)
    alive per layer at level 0, which the exact iterative ladder counts from."""
    if not plan.from_dense:
        if cfg.prune.ladder == "exact" and origin is not None:
            return on_ladder(plan.groups, level, origin)
        return at_level(plan.groups, level)
    if cfg.imp.target_density is not None:
        sizes = {n: m.numel() for n, m in base.items()}
        if plan.units is not None:
            sizes = {f"{u.layer}.weight": u.count for u in plan.units}
        return one_shot_groups(plan.groups, sizes, cfg.imp.target_density)
    return [Group(g.members, compound(g.fraction, level), g.erk) for g in plan.groups]


def check_collapse(cfg: ExperimentConfig, problem: Problem, mask: M.Mask, where: str) -> None:
    """Layer collapse (a layer emptied, or outputs cut off from the input): warn, or refuse to go on."""
    data = problem.data
    logits = (data.objective or CLASSIFICATION).logits
    problems = collapse(problem.init_model(0), mask, data.train.inputs(slice(0, 1)), logits)
    if not problems:
        return
    text = f"layer collapse at {where}: {'; '.join(problems)}\n{M.density_table(mask)}"
    if cfg.prune.on_collapse == "refuse":
        raise TicketlabError(
            f"{text}\n(nothing was saved for this level; lower the sparsity, use --strategy "
            "layerwise or erk, keep layers dense, or pass --on-collapse warn)"
        )
    print(f"ticketlab: warning: {text}", file=sys.stderr, flush=True)
