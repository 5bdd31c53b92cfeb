"""Where and how a ticket is rewound: another rewind step (the dense training replayed to it), the trained weights
at the final LR (fine-tuning) or with the schedule replayed (LR rewinding), and some layers only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import torch

from ticketlab import masks as M
from ticketlab.branches.base import BranchStart, FreshModel, Start, State, masked, register
from ticketlab.branches.baselines import Init, scaled_start
from ticketlab.config import ExperimentConfig
from ticketlab.errors import TicketlabError
from ticketlab.problem import Problem, state_of
from ticketlab.rundir import RunDir, warn
from ticketlab.seeds import derive_seed
from ticketlab.steps import Step
from ticketlab.store import DamagedFile, load_tensors, read_record, save_tensors, write_record
from ticketlab.training import Schedule, train


@register
def rewind(
    s: Start,
    fresh: FreshModel,
    *,
    to: Annotated[str, "the step whose dense weights the ticket starts from, e.g. 100it or 1ep"] = "",
    init: Init = "as_is",
) -> BranchStart:
    """The ticket's mask on the dense weights at another step than the trunk's k, trained from there on.

    The weights at ``to`` (0it, 500it, 2ep, ...) are reproduced by replaying the dense training (same seed and data
    order), and the schedule runs from there (Frankle et al. 2020's rewinding sweep). ``--to`` at the run's own k
    with ``--init sparse_aware`` is the rewound ticket at sparsity-aware scale."""
    if not to:
        raise TicketlabError("rewind needs --to, e.g. --to 100it or --to 1ep")
    step = Step.parse(to).iterations(s.per_epoch)
    if step >= s.total:
        raise TicketlabError(f"rewind --to {to} ({step} it) must come before the end of training ({s.total} it)")
    return BranchStart(scaled_start(s, s.dense_at(step), s.mask, init, "rewind"), s.mask, begin=step)


@register
def finetune(s: Start, fresh: FreshModel) -> BranchStart:
    """The trained weights, pruned, trained on at the schedule's final LR (constant) for the same budget."""
    final_lr = Schedule.from_config(s.cfg.train, s.per_epoch).lr(s.total - 1)
    constant = replace(s.cfg.train, lr=final_lr, schedule="constant", warmup="0it", milestones=())
    return BranchStart(masked(s.trained, s.mask), s.mask, constant)


@register
def lr_rewind(s: Start, fresh: FreshModel) -> BranchStart:
    """The trained weights, pruned, with the LR schedule replayed from iteration k (Renda et al. 2020)."""
    return BranchStart(masked(s.trained, s.mask), s.mask)


@register
def partial_rewind(
    s: Start,
    fresh: FreshModel,
    *,
    layers: Annotated[str, "parameter names or module prefixes rewound to theta_k, e.g. fc.0 (comma-separated)"] = "",
) -> BranchStart:
    """Some layers rewound to theta_k, every other tensor kept at its trained value."""
    chosen = [p.strip() for p in layers.split(",") if p.strip()]
    if not chosen:
        raise TicketlabError("partial_rewind needs --layers, e.g. --layers fc.0.weight or --layers fc.0")
    picked = {n for n in s.rewind if any(n == c or n.startswith(c + ".") for c in chosen)}
    unknown = [c for c in chosen if not any(n == c or n.startswith(c + ".") for n in s.rewind)]
    if unknown:
        raise TicketlabError(f"partial_rewind: {unknown} name no tensor of the model; it has {list(s.rewind)}")
    state = {n: (s.rewind[n] if n in picked else s.trained[n]).clone() for n in s.rewind}
    return BranchStart(masked(state, s.mask), s.mask)


def dense_at(
    run: RunDir, cfg: ExperimentConfig, problem: Problem, r: int, step: int, *, init_sha256: str | None = None
) -> State:
    """The dense network's weights after ``step`` iterations: theta_0 (with SHA-256 ``init_sha256``, when
    recorded), or the trunk's dense training replayed from theta_0 to ``step`` (bit for bit the trunk's, on the
    same machine), cached in level 0 beside a record of its SHA-256."""
    level0 = run.level(r, 0)
    device = problem.data.train.x.device
    path = level0.dense_at(step)
    cached = _cached_replay(path, device) if step else None
    if cached is not None:
        return cached
    init = load_tensors(level0.init, device, sha256=init_sha256)
    if step == 0:
        return init
    model = problem.init_model(r)
    model.load_state_dict(init)
    mask = M.load_mask(level0.mask, device)
    train(model, problem.data, cfg.train, mask=mask, data_seed=derive_seed(cfg.imp.seed, r, "data"), until=step)
    write_record(_record_of(path), {"file": save_tensors(path, state_of(model))})
    return load_tensors(path, device)


def _record_of(path: Path) -> Path:
    return path.with_suffix(".json")  # dense_500it.safetensors -> dense_500it.json


def _cached_replay(path: Path, device: torch.device | str) -> State | None:
    """A cached replay, if it has the SHA-256 recorded beside it; None when there is none (a cache made before
    replays were recorded is replayed again too), or, with a warning, when it fails the check."""
    record = _record_of(path)
    if not (path.exists() and record.exists()):
        return None
    try:
        digest = read_record(record).get("file")
        if not isinstance(digest, str):
            raise DamagedFile(record, "no SHA-256 in it")
        return load_tensors(path, device, sha256=digest)
    except DamagedFile as e:
        warn(f"{e.path} is damaged ({e.why}); replaying the dense training to {path.stem.removeprefix('dense_')} again")
        return None
