"""A run's structured ticket as a smaller dense model: the neurons and filters it pruned physically removed.

The outputs are checked against the masked network on test inputs before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ticketlab import masks as M
from ticketlab.data import load_configured
from ticketlab.errors import TicketlabError
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir
from ticketlab.store import load_tensors

TOLERANCE = 1e-4  # relative to the largest output magnitude: float reassociation, not a changed function


def export_ticket(
    run_dir: Path, level: int, out: Path, *, replicate: int = 0, weights: str = "final"
) -> dict[str, Any]:
    """Export the ticket of ``level`` of a registry-model run to ``out`` (.pt2); return what was measured."""
    from ticketlab.structure import export, save_exported

    run = RunDir(run_dir)
    if run.user_model:  # a run of the user's own nn.Module: the command line cannot rebuild it
        raise TicketlabError(
            f"{run.path} was run on your own model; export it in Python: "
            "ticketlab.structure.export(model, ticket.mask, input_shape)"
        )
    cfg = run.config()
    ticket = run.ticket(level, replicate)  # TicketlabError if the level has not finished
    data = load_configured(cfg.data, torch.device("cpu"))
    model = registry_problem(cfg, data).init_model(replicate)
    job = run.job(replicate, level, "ticket")
    final = load_tensors(job.final, sha256=run.recorded(job, job.final))
    model.load_state_dict(final if weights == "final" else ticket.state)
    M.apply_mask(model, ticket.mask)
    small = export(model, ticket.mask, data.input_shape)
    model.eval()
    small.eval()
    x = data.test.inputs(slice(0, 256))
    with torch.no_grad():
        want, got = model(x), small(x)
    max_diff = float((want - got).abs().max())
    if max_diff > TOLERANCE * max(float(want.abs().max()), 1.0):
        raise AssertionError(f"the exported model's outputs differ from the ticket's by {max_diff:.3g}")
    save_exported(small, Path(out), data.input_shape)
    return {
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in small.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in small.parameters()),
        "checked": len(x),
        "max_diff": max_diff,
    }
