"""Sanity checks of pruning at initialisation, as branches: does the ticket's *which weights* matter, or only its
per-layer densities?

- ``shuffle`` (Su et al. 2020, "Sanity-checking pruning methods: random tickets can win the jackpot"; Frankle et
  al. 2021, "Pruning neural networks at initialization: why are we missing the mark?"): the level's mask permuted
  at random within each layer -- every layer keeps exactly its kept count -- on theta_k;
- ``invert`` (Frankle et al. 2021): the dense network at the rewind point scored again exactly as the trunk scored
  it for the level (criterion, batches, seed, rounds), the scores negated, and pruned to the same counts with the
  same groups: the highest-scoring weights go instead of the lowest. Only for ``--at-init`` runs;
- ``reinit`` (in ``baselines``): the mask on a new initialisation.

Structured (``--units``) runs are refused by both: permuting or inverting units is another question.
"""

from __future__ import annotations

import torch

from ticketlab import masks as M
from ticketlab import scores as S
from ticketlab.branches.base import BranchStart, FreshModel, Start, State, masked, register
from ticketlab.config import ExperimentConfig
from ticketlab.data import batches, load_configured
from ticketlab.errors import TicketlabError
from ticketlab.imp import level_groups
from ticketlab.plan import Plan, full_mask, make_plan
from ticketlab.problem import Problem, registry_problem
from ticketlab.pruning import prune_in_rounds
from ticketlab.seeds import derive_seed

_CACHE: dict[tuple[str, str], tuple[Problem, Plan]] = {}  # one run's problem and plan: every job of a command


def shuffled(mask: M.Mask, seed: int) -> M.Mask:
    """``mask`` with each tensor's entries randomly permuted (one ``torch.randperm`` per tensor, in the mask's
    order, from one generator seeded by ``seed``): each tensor keeps exactly its kept count, shape and device."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in mask.items():
        perm = torch.randperm(m.numel(), generator=g).to(m.device)
        out[name] = m.flatten()[perm].view_as(m)
    return out


@register(draws_mask=True)
def shuffle(s: Start, fresh: FreshModel) -> BranchStart:
    """The ticket's mask shuffled within each layer (same per-layer counts), on theta_k (Su et al. 2020)."""
    if s.structured:
        raise TicketlabError("shuffle: a structured (--units) run prunes whole units; shuffle needs a weight-level run")
    mask = shuffled(s.mask, derive_seed(s.cfg.imp.seed, s.replicate, s.level, "shuffle"))
    return BranchStart(masked(s.rewind, mask), mask)


def invertible(mode: str, structured: bool) -> None:
    """Refuse (TicketlabError) to invert a run's masks unless it prunes weights at initialisation."""
    if mode != "at-init":
        raise TicketlabError(
            f"invert: this run's masks ({mode}) are pruned from trained weights; inverting such a mask is not a "
            "pruning-at-init check (Frankle et al. 2021): run invert on an --at-init run"
        )
    if structured:
        raise TicketlabError("invert: a structured (--units) run prunes whole units; invert needs a weight-level run")


def at_init_mask(
    cfg: ExperimentConfig, problem: Problem, plan: Plan, replicate: int, level: int, rewind: State, *, invert: bool
) -> M.Mask:
    """The mask an ``--at-init`` trunk prunes for (``replicate``, ``level``) from the dense network at the rewind
    point ``rewind`` -- the same criterion, scoring batches, seed, groups and rounds -- or, with ``invert``, the
    mask of the negated scores (Frankle et al. 2021): same counts per group, the lowest-scored weights kept.
    TicketlabError for a run that does not prune at init, or prunes units."""
    invertible(plan.mode, plan.units is not None)
    model = problem.init_model(replicate)
    model.load_state_dict(rewind)
    base = full_mask(model, plan)  # an at-init level prunes the dense network (no starting mask is allowed)
    M.apply_mask(model, base)
    groups = level_groups(cfg, plan, base, level, {n: int(m.sum()) for n, m in base.items()})
    seed = derive_seed(cfg.imp.seed, replicate, level)
    data, bs, sign = problem.data, cfg.train.batch_size, -1.0 if invert else 1.0
    examples = S.Examples(
        data.input_shape,
        lambda: ((x, y) for _, x, y in batches(data.train, bs, seed, 0, cfg.prune.score_batches)),
        data.objective,
        tokens=not data.train.inputs(slice(0, 1)).is_floating_point(),
    )

    def score(current: M.Mask) -> dict[str, torch.Tensor]:
        found = S.score(
            cfg.prune.criterion, model=model, mask=current, examples=examples, start=rewind, end=rewind, seed=seed
        )
        return {n: sign * t for n, t in found.items()}

    return prune_in_rounds(score, base, groups, cfg.prune.rounds or S.get(cfg.prune.criterion).rounds)


def _problem(cfg: ExperimentConfig, device: torch.device) -> tuple[Problem, Plan]:
    """The run's problem and plan, built as ``run_branch`` builds them (kept for the next job of the command)."""
    key = (cfg.run_hash(), str(device))
    if key not in _CACHE:
        _CACHE.clear()
        problem = registry_problem(cfg, load_configured(cfg.data, device))
        _CACHE[key] = problem, make_plan(cfg, problem)
    return _CACHE[key]


@register(draws_mask=True)
def invert(s: Start, fresh: FreshModel) -> BranchStart:
    """At-init runs: prune the highest-scoring weights instead, to the same counts, on theta_k (Frankle et al.)."""
    invertible(s.cfg.imp.mode, s.structured)  # before any data is loaded
    problem, plan = _problem(s.cfg, next(iter(s.rewind.values())).device)
    mask = at_init_mask(s.cfg, problem, plan, s.replicate, s.level, s.rewind, invert=True)
    return BranchStart(masked(s.rewind, mask), mask)
