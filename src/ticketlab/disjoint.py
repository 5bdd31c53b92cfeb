"""Disjoint tickets (from "The lottery ticket hypothesis" discussion, seeds/lth-paper-discussion.md): find a
ticket, forbid its weights, search again in what is left, and repeat. How many winning tickets does one dense
network hold, and how does the network (trained without the tickets removed so far) fare as they go?

Each round is an ordinary resumable IMP run whose level 0 trains the network with every earlier ticket's
weights pruned away; its last level's ticket joins the forbidden weights. One replicate; no random-pruning
baseline (it would draw forbidden weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab import masks as M
from ticketlab.config import ExperimentConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import JobDir, write_csv

COLUMNS = ["round", "forbidden", "dense_test_acc", "ticket_density", "ticket_test_acc", "overlap"]


def disjoint(
    config: ExperimentConfig, rounds: int, *, out: str | Path = "runs", device: str = "auto", progress: bool = False
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) ``rounds`` rounds; write and return one row per round."""
    from ticketlab.data import load_configured
    from ticketlab.imp import level_count, registry_problem, resolve_device, run_imp

    if rounds < 1:
        raise TicketlabError(f"the number of tickets (--tickets) must be >= 1, got {rounds}")
    if config.imp.one_shot or config.imp.at_init:
        raise TicketlabError("disjoint tickets are found by iterative pruning; drop --one-shot / --at-init")
    if config.prune.units != "none":
        raise TicketlabError("disjoint tickets are weight tickets; drop --units")
    config = config.replace(imp={"replicates": 1, "baselines": [b for b in config.imp.baselines if b == "reinit"]})
    dev = resolve_device(device)
    data = load_configured(config.data, dev)
    problem = registry_problem(config, data)
    where = Path(out) / f"disjoint-{config.model.model}-{config.data.dataset}-{config.run_hash()}"
    last = level_count(config)
    forbidden: M.Mask | None = None
    rows = []
    for i in range(rounds):
        run_dir = where / f"round_{i}"
        start = None if forbidden is None else {n: ~m for n, m in forbidden.items()}
        run_imp(config, problem, run_dir, progress=progress, start_mask=start)
        ticket = M.load_mask(JobDir(run_dir, 0, last, "ticket").path.parent / "mask.safetensors", dev)
        overlap = 0 if forbidden is None else M.count({n: ticket[n] & forbidden[n] for n in ticket})
        if overlap:
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


def table(rows: list[dict[str, Any]]) -> str:
    head = "round  weights forbidden  network without them  ticket density  ticket test acc"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['round']:>5}  {100 * r['forbidden']:>16.2f}%  {100 * r['dense_test_acc']:>19.2f}%  "
            f"{100 * r['ticket_density']:>13.2f}%  {100 * r['ticket_test_acc']:>14.2f}%"
        )
    return "\n".join(lines)
