"""``ticketlab sanity``: the sanity checks of pruning methods (Su et al. 2020; Frankle et al. 2021) on a finished
run, each one a branch (:mod:`ticketlab.branches.sanity`, and ``reinit``): shuffle each layer's mask, re-initialise
the kept weights, and (``--at-init`` runs) invert the scores. A check that leaves the ticket's accuracy where it was
says the method found per-layer densities, not particular weights.

The branches resume like any other (a second call trains nothing); their rows join ``results.csv``.
``RUN/sanity.csv`` (:data:`COLUMNS`) holds, per level and check, the ticket's and the check's final test accuracy
over replicates (mean, sample std with ddof=1, n) and the drop: the check's mean minus the ticket's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ticketlab import branches as B
from ticketlab.branches import sanity as SB
from ticketlab.errors import TicketlabError
from ticketlab.report.tables import SPREAD, Summary, mean_std, summarize
from ticketlab.rundir import RunDir
from ticketlab.store import write_csv

CHECKS = ("shuffle", "reinit", "invert")
SANITY_CSV = "sanity.csv"
METRIC = "final_test_acc"
COLUMNS = [
    "level",
    "density",  # the ticket's density over the pruned tensors (mean over replicates)
    "check",
    "ticket_acc",  # final test accuracy (fraction), mean over replicates
    "ticket_std",  # sample std (ddof=1); empty when n = 1
    "ticket_n",
    "check_acc",
    "check_std",
    "check_n",
    "drop",  # check_acc - ticket_acc (difference of the means; negative: the check is worse)
]


def default_checks(run_dir: str | Path | RunDir) -> list[str]:
    """The checks that apply to the run: shuffle (weight-level runs), reinit, invert (weight-level at-init runs)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    cfg = run.config()
    structured = cfg.prune.units != "none"
    return [c for c in CHECKS if c == "reinit" or (not structured and (c == "shuffle" or cfg.imp.mode == "at-init"))]


def parse_checks(text: str | None) -> list[str] | None:
    """``"shuffle,invert"`` as a list (None for None); TicketlabError naming the known checks otherwise."""
    if text is None:
        return None
    checks = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise TicketlabError(f"--checks {text!r}: give some of {','.join(CHECKS)}")
    return list(dict.fromkeys(checks))


def sanity(
    run_dir: str | Path | RunDir,
    *,
    levels: list[int] | None = None,
    checks: list[str] | None = None,
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) ``checks`` (default: :func:`default_checks`) as branches off ``levels`` (default: every
    finished level) of the run in ``run_dir``, write ``RUN/sanity.csv`` and return its rows (:data:`COLUMNS`).
    TicketlabError (one line) for an unknown check, a check that does not apply (invert on a run not pruned at
    init), or levels that have not finished."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    cfg = run.config()  # TicketlabError when this is not a run directory
    checks = default_checks(run) if checks is None else checks
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        raise TicketlabError(f"unknown check(s) {bad}; known: {','.join(CHECKS)}")
    if levels is None and not run.finished_levels(cfg):
        raise TicketlabError(
            f"{run.path} has no finished pruned level (is it an IMP run?); run `ticketlab imp` on it further first"
        )
    if "invert" in checks:  # refused before any other check trains
        SB.invertible(cfg.imp.mode, cfg.prune.units != "none")
    rows: list[dict[str, Any]] = []
    for check in checks:
        rows = B.run_branch(
            run,
            check,
            levels=levels,
            device=device,
            progress=progress,
            batch_jobs=batch_jobs,
            sparse_kernels=sparse_kernels,
            tensorboard=tensorboard,
        )
    asked = sorted({int(r["level"]) for r in rows if int(r["level"]) > 0}) if levels is None else sorted(set(levels))
    # sanity.csv holds every level and check trained so far (an earlier call's --levels or --checks included)
    done = sorted({int(r["level"]) for r in rows if r["branch"] in CHECKS and int(r["level"]) > 0} | set(asked))
    write_csv(
        run.path / SANITY_CSV,
        summary_rows(rows, done, [c for c in CHECKS if any(r["branch"] == c for r in rows)]),
        COLUMNS,
    )
    return summary_rows(rows, asked, checks)


def _summary(rows: list[dict[str, Any]], level: int, branch: str) -> Summary | None:
    values = [float(r[METRIC]) for r in rows if int(r["level"]) == level and r["branch"] == branch]
    return summarize(values) if values else None


def summary_rows(rows: list[dict[str, Any]], levels: list[int], checks: list[str]) -> list[dict[str, Any]]:
    """The rows of ``sanity.csv`` from ``results.csv``'s ``rows``: one per level and check that has both the
    ticket's and the check's results."""
    out = []
    for level in levels:
        ticket = _summary(rows, level, "ticket")
        if ticket is None:
            continue
        density = [float(r["density"]) for r in rows if int(r["level"]) == level and r["branch"] == "ticket"]
        for check in checks:
            found = _summary(rows, level, check)
            if found is None:
                continue
            out.append(
                {
                    "level": level,
                    "density": sum(density) / len(density),
                    "check": check,
                    "ticket_acc": ticket.mean,
                    "ticket_std": "" if math.isnan(ticket.std) else ticket.std,
                    "ticket_n": ticket.n,
                    "check_acc": found.mean,
                    "check_std": "" if math.isnan(found.std) else found.std,
                    "check_n": found.n,
                    "drop": found.mean - ticket.mean,
                }
            )
    return out


def _cell(mean: float, std: Any, n: int) -> str:
    return f"{mean_std(Summary(mean, float('nan') if std == '' else float(std), n))} (n={n})"


def sanity_table(rows: list[dict[str, Any]]) -> str:
    """``sanity.csv``'s rows as a plain-text table, accuracies in %."""
    head = ["level", "density %", "check", "ticket acc %", "check acc %", "drop (pp)"]
    lines = [
        [
            str(r["level"]),
            f"{100 * r['density']:.2f}",
            r["check"],
            _cell(r["ticket_acc"], r["ticket_std"], r["ticket_n"]),
            _cell(r["check_acc"], r["check_std"], r["check_n"]),
            f"{100 * r['drop']:+.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    title = f"Sanity checks: final test accuracy (mean ± {SPREAD}, n replicates); drop = check - ticket"
    return "\n".join(
        [title, fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines]
    )
