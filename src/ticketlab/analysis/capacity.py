"""Capacity and generalisation of an IMP run's tickets (issue 17, items 5 and 8), read from its finished jobs.

Per level and branch, over replicates (mean ± sample std, ddof=1, and n):

- the generalisation gap ``train_acc - final_test_acc`` of each job (accuracies as fractions);
- ``W``, the weights the job trained with: the kept count of its mask (its own mask file when it has one, as the
  random-pruning baseline does, else its level's mask), counted exactly over the prunable tensors;
- the VC-style capacity proxy ``W ln W`` (natural log; 0 for W = 0), after the VC dimension O(W log W) of
  piecewise-linear networks with W weights (Bartlett et al. 2019): a count, not a bound;
- the learning distance ``||theta_T - theta_0||_2`` (He et al. 2022, sparse double descent): the L2 norm of the job's
  final weights minus the weights it started from, over the prunable tensors (the mask's). A pruned level's job
  starts from its own ``init.safetensors`` (the rewound, masked weights); level 0 from the level's theta_0.

Every file is read verified against the SHA-256 its job's record holds. ``capacity.csv`` (:data:`COLUMNS`) is
written into the run directory by :func:`capacity`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ticketlab import branches as B
from ticketlab import masks as M
from ticketlab.errors import TicketlabError
from ticketlab.report.tables import SPREAD, Summary, mean_std, summarize
from ticketlab.rundir import JobFiles, RunDir
from ticketlab.store import DamagedFile, load_tensors, write_csv

COLUMNS = [
    "level",
    "branch",
    "n",  # replicates
    "density",  # kept share of the pruned tensors (mean over replicates)
    "kept",  # W: weights kept in the pruned tensors (mean)
    "kept_std",
    "w_log_w",  # W ln W (natural log), mean over replicates
    "gap",  # train_acc - final_test_acc (fraction), mean
    "gap_std",  # sample std (ddof=1); empty when n = 1
    "distance",  # ||theta_T - theta_0||_2 over the prunable tensors, mean
    "distance_std",
]
CAPACITY_CSV = "capacity.csv"
NOT_IMP = ("supermask", "grokking", "early_bird")  # run kinds whose jobs are not IMP levels and their branches


def w_log_w(w: float) -> float:
    """The VC-style proxy ``W ln W`` (natural logarithm) of a weight count ``W >= 0``; 0 for W = 0."""
    return float(w) * math.log(w) if w > 0 else 0.0


def job_rows(run_dir: str | Path | RunDir) -> list[dict[str, Any]]:
    """One row per finished job of the IMP run ``run_dir``: replicate, level, branch, density, ``train_acc``,
    ``final_test_acc``, ``gap`` (their difference), ``kept`` (W), ``w_log_w`` and ``distance`` (see the module
    docstring). TicketlabError (one line) when the directory is not an IMP run, has no finished job, or a file
    is damaged."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    saved = run.saved()  # TicketlabError when it is not a run directory
    kind = next((k for k in NOT_IMP if k in saved), None)
    if kind is not None:
        raise TicketlabError(f"{run.path} is a {kind.replace('_', '-')} run, not an IMP run; give an IMP run directory")
    rows = run.rows(quiet=True)
    if not rows:
        raise TicketlabError(f"{run.path} has no finished job yet; run `ticketlab imp` to the end first")
    out = []
    for row in rows:
        if row.get("train_acc") in (None, "") or row.get("final_test_acc") in (None, ""):
            continue  # records written before train_acc was kept
        job = run.job(int(row["replicate"]), int(row["level"]), B.dir_name(row["branch"]))
        kept, distance = _measure(run, job)
        gap = float(row["train_acc"]) - float(row["final_test_acc"])
        out.append(
            {
                "replicate": job.replicate,
                "level": job.level,
                "branch": row["branch"],
                "density": float(row["density"]),
                "train_acc": float(row["train_acc"]),
                "final_test_acc": float(row["final_test_acc"]),
                "gap": gap,
                "kept": kept,
                "w_log_w": w_log_w(kept),
                "distance": distance,
            }
        )
    if not out:
        raise TicketlabError(f"{run.path}: no job records its train_acc (an older ticketlab); run the IMP again")
    return out


def _measure(run: RunDir, job: JobFiles) -> tuple[int, float | None]:
    """The kept count of the job's mask and its learning distance (None when the start weights are not saved)."""
    record = run.finished(job, quiet=True, repair=False) or {}
    files, inputs = record.get("files", {}), record.get("inputs", {})
    level = run.level(job.replicate, job.level)
    own = job.mask.exists()
    mask_path = job.mask if own else level.mask
    # a pruned level's mask is an input of its jobs (by digest), level 0's an output of its ticket
    mask_digest = files.get(run.rel(mask_path)) or (None if own else inputs.get("mask"))
    start = job.init if job.init.exists() else run.level(job.replicate, 0).init
    try:
        mask = M.load_mask(mask_path) if mask_digest is None else _verified_mask(mask_path, mask_digest)
        final = load_tensors(job.final, sha256=files.get(run.rel(job.final)))
        if not start.exists():
            return M.count(mask), None
        theta0 = load_tensors(start, sha256=files.get(run.rel(start)))
    except DamagedFile as e:
        raise TicketlabError(f"{e.path} is damaged ({e.why}); rerun the command that made the run") from None
    return M.count(mask), learning_distance(final, theta0, list(mask))


def _verified_mask(path: Path, digest: str) -> M.Mask:
    load_tensors(path, sha256=digest)  # raises DamagedFile unless the bytes are the recorded ones
    return M.load_mask(path)


def learning_distance(final: dict[str, torch.Tensor], start: dict[str, torch.Tensor], names: list[str]) -> float:
    """``||theta_T - theta_0||_2`` over the tensors ``names`` (any shapes; float64 sums): the Euclidean length of
    the step training took. TicketlabError when a name is missing from either state or the shapes differ."""
    total = 0.0
    for n in names:
        if n not in final or n not in start or final[n].shape != start[n].shape:
            raise TicketlabError(f"tensor {n!r} is missing or of another shape in the saved weights; rerun the job")
        total += float(((final[n].double() - start[n].double()) ** 2).sum())
    return math.sqrt(total)


def capacity_rows(run_dir: str | Path | RunDir) -> list[dict[str, Any]]:
    """Per level and branch of the IMP run ``run_dir`` (levels ascending, branches in the run's order): the means,
    sample stds (ddof=1; None when n = 1) and n over replicates of :func:`job_rows`; keys :data:`COLUMNS`.
    TicketlabError as :func:`job_rows`."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in job_rows(run_dir):
        groups[(r["level"], r["branch"])].append(r)
    out = []
    for level, branch in sorted(groups, key=lambda k: k[0]):  # stable: the run's branch order within a level
        g = groups[(level, branch)]
        row: dict[str, Any] = {"level": level, "branch": branch, "n": len(g)}
        row["density"] = summarize(r["density"] for r in g).mean
        for key in ("kept", "gap", "distance"):
            values = [r[key] for r in g if r[key] is not None]
            s = summarize(values) if values else None
            row[key] = None if s is None else s.mean
            row[f"{key}_std"] = None if s is None or s.n < 2 else s.std
        row["w_log_w"] = summarize(r["w_log_w"] for r in g).mean
        out.append(row)
    return out


def capacity(run_dir: str | Path | RunDir) -> list[dict[str, Any]]:
    """:func:`capacity_rows`, also written to ``RUN/capacity.csv`` (atomically); returns the rows."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rows = capacity_rows(run)
    write_csv(run.path / CAPACITY_CSV, rows, COLUMNS)
    return rows


def _cell(mean: float | None, std: float | None, n: int, scale: float) -> str:
    if mean is None:
        return "-"
    return mean_std(Summary(mean, std if std is not None else float("nan"), n if std is not None else 1), scale)


def capacity_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`capacity_rows`, one line per level: weights left (%), W, W ln W, the ticket's
    and the random-pruning baseline's generalisation gap (percentage points) and the ticket's learning distance."""
    by = {(r["level"], r["branch"]): r for r in rows}
    levels = sorted({r["level"] for r in rows})
    has_random = any(r["branch"] == "random_prune" for r in rows)
    head = ["level", "weights left", "W", "W ln W", "ticket gap (pp)"]
    head += ["random-pruning gap (pp)"] if has_random else []
    head += ["learning distance"]
    lines = []
    for lv in levels:
        t = by.get((lv, "ticket"))
        if t is None:
            continue
        kept = f"{t['kept']:.0f}" if not t["kept_std"] else _cell(t["kept"], t["kept_std"], t["n"], 1.0)
        line = [str(lv), f"{100 * t['density']:.2f}%", kept]
        line += [f"{t['w_log_w']:.0f}", _cell(t["gap"], t["gap_std"], t["n"], 100.0)]
        if has_random:
            rp = by.get((lv, "random_prune"))
            line.append("-" if rp is None else _cell(rp["gap"], rp["gap_std"], rp["n"], 100.0))
        line.append(_cell(t["distance"], t["distance_std"], t["n"], 1.0))
        lines.append(line)
    ns = sorted({r["n"] for r in rows})
    title = (
        f"Capacity: generalisation gap = train acc - test acc, W = kept weights, ln natural "
        f"(mean ± {SPREAD}, n = {', '.join(map(str, ns))} replicates)"
    )
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    text = [title, "  ".join(h.rjust(w) for h, w in zip(head, widths))]
    text += ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in lines]
    return "\n".join(text)
