"""Disjoint tickets (from "The lottery ticket hypothesis" discussion, seeds/lth-paper-discussion.md): find a
ticket, exclude its weights, search again, and repeat. How many winning tickets does one dense network hold,
and how does the network fare as they are taken out?

Each round is an ordinary resumable IMP run. ``forbid``: its level 0 trains the network with every earlier
ticket's weights pruned away, so the tickets share no weight. ``reinit``: those weights are re-initialised
(new values drawn for each round) and stay available, so a later ticket may use the positions again, not the
values. One replicate; no random-pruning baseline (it would draw forbidden weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ticketlab import masks as M
from ticketlab.config import ExperimentConfig
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.imp import mask_digest, run_imp
from ticketlab.problem import registry_problem
from ticketlab.rundir import level_count
from ticketlab.seeds import derive_seed
from ticketlab.store import write_csv

COLUMNS = ["round", "forbidden", "dense_test_acc", "ticket_density", "ticket_test_acc", "overlap"]
EXCLUDE = ("forbid", "reinit")


def disjoint(
    config: ExperimentConfig,
    rounds: int,
    *,
    exclude: str = "forbid",
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) ``rounds`` rounds; write and return one row per round (``forbidden``: the fraction of
    weights earlier tickets hold; ``overlap``: weights this ticket shares with them, 0 when forbidding)."""
    how = {
        "batch_jobs": batch_jobs,
        "sparse_kernels": sparse_kernels,
        "tensorboard": tensorboard,
    }  # how jobs train: run_imp's options
    if exclude not in EXCLUDE:
        raise TicketlabError(f"--exclude must be forbid or reinit, not {exclude!r}")
    if rounds < 1:
        raise TicketlabError(f"the number of tickets (--tickets) must be >= 1, got {rounds}")
    if config.imp.prunes_from_dense:
        raise TicketlabError("disjoint tickets are found by iterative pruning; drop --one-shot / --at-init")
    if config.prune.units != "none":
        raise TicketlabError("disjoint tickets are weight tickets; drop --units")
    config = config.replace(imp={"replicates": 1, "baselines": [b for b in config.imp.baselines if b == "reinit"]})
    dev = resolve_device(device)
    data = load_configured(config.data, dev)
    problem = registry_problem(config, data)
    # levels are not in the run hash (extending a run reuses it), but every round here depends on them
    name = f"disjoint-{exclude}-{config.model.model}-{config.data.dataset}-{config.run_hash()}-L{config.imp.levels}"
    where = Path(out) / name
    last = level_count(config)
    forbidden: M.Mask | None = None
    rows = []
    for i in range(rounds):
        if exclude == "forbid" or forbidden is None:
            start = None if forbidden is None else {n: ~m for n, m in forbidden.items()}
            run = run_imp(config, problem, where / f"round_{i}", progress=progress, start_mask=start, **how)
        else:
            redraw = derive_seed(config.imp.seed, "disjoint", i)
            init = _reinitialised(problem.init_model, problem.fresh_model, dict(forbidden), redraw)
            redrawn = problem.with_init(init, reinitialised=mask_digest(forbidden))
            run = run_imp(config, redrawn, where / f"round_{i}", progress=progress, **how)
        ticket = run.ticket(last, 0, dev).mask
        overlap = 0 if forbidden is None else M.count({n: ticket[n] & forbidden[n] for n in ticket})
        if overlap and exclude == "forbid":
            raise AssertionError(f"round {i}'s ticket shares {overlap} weights with earlier ones")
        accuracy = {row["level"]: row["final_test_acc"] for row in run.results(config) if row["branch"] == "ticket"}
        rows.append(
            {
                "round": i,
                "forbidden": 0.0 if forbidden is None else M.density(forbidden),
                "dense_test_acc": accuracy[0],
                "ticket_density": M.density(ticket),
                "ticket_test_acc": accuracy[last],
                "overlap": overlap,
            }
        )
        forbidden = ticket if forbidden is None else {n: forbidden[n] | ticket[n] for n in ticket}
    write_csv(where / "disjoint.csv", rows, COLUMNS)
    return where, rows


def _reinitialised(init_model, fresh_model, forbidden: M.Mask, seed: int):
    """``init_model`` with the ``forbidden`` weights replaced by those of a fresh network drawn from ``seed``."""

    def build(replicate: int):
        model = init_model(replicate)
        fresh = dict(fresh_model(seed).named_parameters())
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in forbidden:
                    p.copy_(torch.where(forbidden[n].to(p.device), fresh[n].to(p.device), p))
        return model

    return build
