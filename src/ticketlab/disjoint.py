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
from ticketlab.errors import TicketlabError
from ticketlab.store import JobDir, write_csv

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
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) ``rounds`` rounds; write and return one row per round (``forbidden``: the fraction of
    weights earlier tickets hold; ``overlap``: weights this ticket shares with them, 0 when forbidding)."""
    from ticketlab.data import load_configured
    from ticketlab.imp import Problem, derive_seed, level_count, registry_problem, resolve_device, run_imp

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
        run_dir = where / f"round_{i}"
        if exclude == "forbid" or forbidden is None:
            start = None if forbidden is None else {n: ~m for n, m in forbidden.items()}
            run_imp(config, problem, run_dir, progress=progress, start_mask=start)
        else:
            redraw = derive_seed(config.imp.seed, "disjoint", i)
            init = _reinitialised(problem.init_model, problem.fresh_model, dict(forbidden), redraw)
            from ticketlab.imp import _mask_digest

            identity = {**problem.identity, "reinitialised": _mask_digest(forbidden)}
            run_imp(config, Problem(data, init, problem.fresh_model, identity), run_dir, progress=progress)
        ticket = M.load_mask(JobDir(run_dir, 0, last, "ticket").path.parent / "mask.safetensors", dev)
        overlap = 0 if forbidden is None else M.count({n: ticket[n] & forbidden[n] for n in ticket})
        if overlap and exclude == "forbid":
            raise AssertionError(f"round {i}'s ticket shares {overlap} weights with earlier ones")
        rows.append(
            {
                "round": i,
                "forbidden": 0.0 if forbidden is None else M.density(forbidden),
                "dense_test_acc": JobDir(run_dir, 0, 0, "ticket").result()["final_test_acc"],
                "ticket_density": M.density(ticket),
                "ticket_test_acc": JobDir(run_dir, 0, last, "ticket").result()["final_test_acc"],
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


def table(rows: list[dict[str, Any]]) -> str:
    """One line per round; the dense network is trained without (forbid) or with re-drawn (reinit) earlier
    tickets' weights; overlap counts the weights a ticket shares with earlier ones."""
    head = "round  earlier tickets hold  dense network  ticket density  ticket test acc  overlap"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['round']:>5}  {100 * r['forbidden']:>19.2f}%  {100 * r['dense_test_acc']:>12.2f}%  "
            f"{100 * r['ticket_density']:>13.2f}%  {100 * r['ticket_test_acc']:>14.2f}%  {r['overlap']:>7}"
        )
    return "\n".join(lines)
