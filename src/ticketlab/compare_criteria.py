"""Which weights to keep, compared: every criterion pruned once to each of a few densities, then trained.

Each (criterion, density) is an ordinary resumable run (one level, ``--target-density``) under ``out``; this
module only chooses how each criterion prunes, and gathers the runs' results into ``criteria.csv`` and one plot
(``report.tables.criteria_table`` prints them).
Criteria scored on the network (SNIP, GraSP, SynFlow) prune at initialisation; the after-training criteria
prune the trained dense network once and rewind (one-shot), as they need its final weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ticketlab import scores as S
from ticketlab.config import ExperimentConfig
from ticketlab.errors import TicketlabError
from ticketlab.imp import imp
from ticketlab.report.plots import criteria_plot
from ticketlab.store import write_csv

MODES = ("auto", "at-init", "one-shot")
COLUMNS = ["criterion", "mode", "target_density", "density", "replicate", "final_test_acc", "best_test_acc"]


def mode_of(criterion: str, mode: str) -> str:
    """How ``criterion`` prunes in the comparison: ``mode``, or by its kind when ``auto``."""
    if mode not in MODES:
        raise TicketlabError(f"unknown mode {mode!r}; use {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "at-init" if S.get(criterion).at_init_default else "one-shot"


def configs(base: ExperimentConfig, criteria: list[str], densities: list[float], mode: str = "auto"):
    """The run of each (criterion, density): one level, no baselines (``random`` is among the criteria)."""
    bad = [c for c in criteria if c not in S.names()]
    if bad:
        raise TicketlabError(f"unknown criteria {bad}; known: {', '.join(S.names())}")
    if not criteria or not densities:
        raise TicketlabError("give at least one criterion and one density")
    if base.prune.units != "none":
        raise TicketlabError("ticketlab criteria compares weight-pruning criteria; drop --units")
    if any(not 0 < d < 1 for d in densities):
        raise TicketlabError(f"densities must be in (0, 1), got {densities}")
    out = []
    for c in criteria:
        how = mode_of(c, mode)
        S.get(c, at_init=how == "at-init")
        for d in densities:
            imp = {"mode": how, "target_density": d, "baselines": ()}
            out.append((c, how, d, base.replace(prune={"criterion": c}, imp=imp)))
    return out


def compare(
    base: ExperimentConfig,
    criteria: list[str],
    densities: list[float],
    *,
    mode: str = "auto",
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) every (criterion, density) and write ``criteria.csv`` and ``criteria.png`` into a
    directory named by the comparison; return it and the rows. ``batch_jobs``, ``sparse_kernels``, ``tensorboard``: see
    :func:`ticketlab.imp.run_imp`."""
    plan = configs(base, criteria, densities, mode)
    key = json.dumps([base.run_hash(), criteria, densities, mode])
    where = (
        Path(out) / f"criteria-{base.model.model}-{base.data.dataset}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    )
    rows: list[dict[str, Any]] = []
    for criterion, how, target, cfg in plan:
        run = imp(
            cfg,
            out=out,
            device=device,
            progress=progress,
            batch_jobs=batch_jobs,
            sparse_kernels=sparse_kernels,
            tensorboard=tensorboard,
        )
        for row in run.results(cfg, quiet=True):
            if row["level"] == 1:
                rows.append({"criterion": criterion, "mode": how, "target_density": target, **row})
            elif criterion == plan[0][0] and target == plan[0][2]:
                rows.append({"criterion": "dense", "mode": "-", "target_density": 1.0, **row})
    write_csv(where / "criteria.csv", rows, COLUMNS)
    criteria_plot(rows, where / "criteria.png")
    return where, rows
