"""``ticketlab align``: the error barrier between two replicates of a finished IMP run, before and after aligning
their hidden units by permutation (Git Re-Basin weight matching, Ainsworth et al. 2023).

Two replicates train from different initialisations with different data orders; their trained networks usually
sit on either side of a loss barrier. Weight matching (:mod:`ticketlab.analysis.permutation`) permutes replicate
b's units onto replicate a's, which leaves b's function unchanged but can lower the barrier on the straight line
between them (:func:`ticketlab.analysis.connectivity.path_errors`, BatchNorm re-estimated at every point). b's
mask moves with it, so the masks' overlap before and after says how much of the ticket the permutation explains.

With ``repair``, a third row: the matched path with REPAIR (Jordan et al. 2023) at every point.

Each (level, pair, points, repair or not) is one record under ``RUN/align/`` holding the SHA-256 of its inputs; a
rerun with the same inputs recomputes nothing. ``RUN/align.csv`` is rewritten from the records each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticketlab import masks as M
from ticketlab.analysis.connectivity import barrier, has_batchnorm, instability, path_errors, reestimate_bn
from ticketlab.analysis.permutation import permutation_spec, permute, permute_mask, weight_matching
from ticketlab.analysis.permutation import repair as repair_state
from ticketlab.batched import parse_setting
from ticketlab.branches.base import mask_job
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.jobs import run_jobs
from ticketlab.plan import make_plan
from ticketlab.problem import registry_problem
from ticketlab.rundir import RunDir, level_count
from ticketlab.seeds import derive_seed
from ticketlab.store import DamagedFile, load_tensors, read_csv, read_record, verify, write_csv, write_record
from ticketlab.training.objectives import CLASSIFICATION, evaluate

ALIGN_COLUMNS = [
    "level",
    "replicate_a",
    "replicate_b",
    "alignment",
    "points",
    "error_a",
    "error_b",
    "max_error",
    "barrier",
    "instability",
    "mask_jaccard",
]


def align(
    run_dir: str | Path | RunDir,
    *,
    level: int = 0,
    replicates: tuple[int, int] = (0, 1),
    points: int = 30,
    bn_batches: int = 20,
    repair: bool = False,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Barrier and instability between two replicates' trained networks at ``level`` (0: dense), plain and after
    weight matching (with ``repair``, also after weight matching and REPAIR at every point,
    :func:`ticketlab.analysis.permutation.repair`); returns the rows of the rewritten ``align.csv`` (columns
    :data:`ALIGN_COLUMNS`; errors and barriers are fractions). Raises TicketlabError for a run made on the user's
    own model, replicates or a level the run does not have, and levels unfinished or damaged."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    cfg = _checked(run, level, replicates)
    a, b = replicates
    if points < 2:
        raise TicketlabError(f"--points {points}: give at least 2 (the two ends)")
    dev = resolve_device(device)
    with run.lock():
        ends = [_trained(run, r, level, dev) for r in (a, b)]
        inputs = {f"{role}_{what}": end[2][what] for role, end in zip("ab", ends) for what in ("weights", "mask")}
        problem = None
        for kind in ("", "_repair") if repair else ("",):
            record_file = run.path / "align" / f"level_{level}_r{a}_r{b}_p{points}{kind}.json"
            if _reusable(record_file, inputs):
                continue
            problem = problem or registry_problem(cfg, load_configured(cfg.data, dev))
            seed = derive_seed(cfg.imp.seed, level, a, b, "align")
            summaries = _compare(problem, ends, points, bn_batches, seed, repaired=bool(kind))
            rows = [{"level": level, "replicate_a": a, "replicate_b": b, "points": points, **s} for s in summaries]
            write_record(record_file, {"inputs": inputs, "rows": rows})
        rows = _collect(run)
        write_csv(run.path / "align.csv", rows, ALIGN_COLUMNS)
    return rows


def _checked(run: RunDir, level: int, replicates: tuple[int, int]):
    """The run's config, once the request fits the run (TicketlabError naming the argument otherwise)."""
    if "weights" in run.saved():
        raise TicketlabError(f"{run.path} was run on your own model; align needs a registered model")
    if "early_bird" in run.saved() and level == 0:
        raise TicketlabError(f"{run.path}: level 0 of an early-bird run stops at emergence, untrained; give --level 1")
    cfg = run.config()
    a, b = replicates
    if a == b or not (0 <= a < cfg.imp.replicates and 0 <= b < cfg.imp.replicates):
        raise TicketlabError(
            f"--replicates {a},{b}: give two different replicates of the run's {cfg.imp.replicates} (0 ... "
            f"{cfg.imp.replicates - 1})"
        )
    if not 0 <= level <= level_count(cfg):
        raise TicketlabError(f"level {level}: the run has levels 0 ... {level_count(cfg)}")
    return cfg


def _trained(run: RunDir, r: int, level: int, dev) -> tuple[dict, M.Mask, dict[str, str]]:
    """Replicate ``r``'s trained ticket at ``level``: final weights, mask, and their SHA-256 (verified)."""
    job, files = run.job(r, level, "ticket"), run.level(r, level)
    record = run.finished(job, quiet=True, repair=False)
    if record is None:
        raise TicketlabError(
            f"level {level} of replicate {r} in {run.path} has not finished or is damaged; run the `ticketlab imp` "
            "command that made the run (again) first"
        )
    recorded = record.get("files", {})
    # the mask the ticket trained with: an input of a pruned level's ticket, an output of level 0's
    mask_sha = record.get("inputs", {}).get("mask") if level else recorded.get(run.rel(files.mask))
    try:
        if mask_sha:
            verify(files.mask, mask_sha)
        weights = load_tensors(job.final, dev, sha256=recorded.get(run.rel(job.final)))
        mask = M.load_mask(files.mask, dev)
    except DamagedFile as e:
        raise TicketlabError(
            f"{e.path} is damaged or missing ({e.why}); run the `ticketlab imp` command that made {run.path} "
            "again to repair it, then align"
        ) from None
    return weights, mask, {"weights": recorded.get(run.rel(job.final), ""), "mask": mask_sha or ""}


def _reusable(path: Path, inputs: dict[str, str]) -> bool:
    """A record of this comparison exists, verifies, and was made from the same files."""
    if not path.exists():
        return False
    try:
        return read_record(path).get("inputs") == inputs and all(inputs.values())
    except DamagedFile:
        return False


def _compare(problem, ends, points: int, bn_batches: int, seed: int, *, repaired: bool) -> list[dict[str, Any]]:
    """The path from a to b, then from a to b permuted onto a (b's mask moved with it); with ``repaired``, only
    the path from a to the permuted b with REPAIR at every point."""
    (wa, ma, _), (wb, mb, _) = ends
    model = problem.init_model(0)
    spec = permutation_spec(model, problem.data.input_shape)
    cpu = {k: v.cpu() for k, v in wa.items()}, {k: v.cpu() for k, v in wb.items()}
    perms = weight_matching(*cpu, spec, seed=seed)
    device = next(iter(wa.values())).device
    matched = {k: v.to(device) for k, v in permute(cpu[1], perms, spec).items()}
    matched_mask = permute_mask({k: v.cpu() for k, v in mb.items()}, perms, spec)
    if repaired:
        paths = [("weight_matching+repair", _repaired_path(model, wa, matched, problem.data, points, bn_batches, seed))]
        masks = [matched_mask]
    else:
        kw = {"points": points, "bn_batches": bn_batches, "seed": seed}
        paths = [
            ("none", path_errors(model, wa, wb, problem.data, **kw)),
            ("weight_matching", path_errors(model, wa, matched, problem.data, **kw)),
        ]
        masks = [mb, matched_mask]
    out = []
    for (alignment, path), mask in zip(paths, masks):
        errors = [p["test_error"] for p in path]
        out.append(
            {
                "alignment": alignment,
                "error_a": errors[0],
                "error_b": errors[-1],
                "max_error": max(errors),
                "barrier": barrier(errors, [p["alpha"] for p in path]),
                "instability": instability(errors),
                "mask_jaccard": jaccard(ma, mask),
                "path": path,
            }
        )
    return out


def _repaired_path(model, a, b, data, points: int, bn_batches: int, seed: int) -> list[dict[str, float]]:
    """Like ``path_errors``, each point's state repaired (REPAIR) before its BatchNorm re-estimation and test."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = []
    try:
        for alpha in np.linspace(0.0, 1.0, points).tolist():
            model.load_state_dict(repair_state(model, a, b, alpha, data, seed=seed))
            if has_batchnorm(model):
                reestimate_bn(model, data.train, batch_size=128, batches=bn_batches, seed=seed)
            loss, acc = evaluate(model, data.test, data.objective or CLASSIFICATION)
            rows.append({"alpha": alpha, "test_error": 1.0 - acc, "test_loss": loss})
    finally:
        model.load_state_dict(saved)
    return rows


def jaccard(a: M.Mask, b: M.Mask) -> float:
    """Kept weights in both masks over kept weights in either, over the tensors both hold (1.0 for two dense)."""
    both = either = 0
    for name in sorted(set(a) & set(b)):
        x, y = a[name].cpu(), b[name].cpu()
        both += int((x & y).sum())
        either += int((x | y).sum())
    return both / either if either else 1.0


def _collect(run: RunDir) -> list[dict[str, Any]]:
    """Every intact record's rows, by level and pair (damaged records are left out: a rerun makes them again)."""
    rows = []
    for path in sorted((run.path / "align").glob("level_*.json")):
        try:
            rows += read_record(path).get("rows", [])
        except DamagedFile:
            continue
    return sorted(rows, key=lambda r: (r["level"], r["replicate_a"], r["replicate_b"], r["points"]))


def align_table(rows: list[dict[str, Any]]) -> str:
    """``align.csv`` as a text table (errors and barriers in percent)."""
    head = ["level", "a", "b", "alignment", "points", "err_a%", "err_b%", "max%", "barrier%", "instab%", "jaccard"]
    lines = [
        [
            str(r["level"]),
            str(r["replicate_a"]),
            str(r["replicate_b"]),
            r["alignment"],
            str(r["points"]),
            *(f"{100 * r[k]:.2f}" for k in ("error_a", "error_b", "max_error", "barrier", "instability")),
            f"{r['mask_jaccard']:.3f}",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *lines])


# ---- mask transport ---------------------------------------------------------------------------------------------

TRANSPORT_COLUMNS = ["level", "replicate_a", "replicate_b", "ticket", "density", "final_test_acc", "jaccard_own"]


def transport(
    run_dir: str | Path | RunDir,
    level: int,
    *,
    replicates: tuple[int, int] = (0, 1),
    device: str = "auto",
    batch_jobs: str | int = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Mask transport: replicate a's ticket mask at ``level`` carried into replicate b's coordinates through the
    inverse of the level-0 weight matching (b's dense network matched onto a's), trained from b's rewind state
    with b's data order; beside it a's mask as it is on b's rewind state, and b's own IMP ticket at ``level``.
    The two trainings are jobs ``transport_from_rA`` and ``plain_from_rA`` under replicate b's level (resumable;
    their rows also join ``results.csv`` when it is next written). Returns the rows of ``RUN/transport.csv``
    (columns :data:`TRANSPORT_COLUMNS`; ``jaccard_own``: overlap with b's own mask at ``level``)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    a, b = replicates
    if level < 1:
        raise TicketlabError(f"--transport {level}: give a pruned level (>= 1)")
    cfg = _checked(run, level, replicates)
    if "early_bird" in run.saved():
        raise TicketlabError(f"--transport: {run.path} is an early-bird run, without the dense level 0 it matches by")
    dev = resolve_device(device)
    problem = registry_problem(cfg, load_configured(cfg.data, dev))
    plan = make_plan(cfg, problem)
    with run.lock():
        (wa, _, da), (wb, _, db) = (_trained(run, r, 0, dev) for r in (a, b))
        (_, mask_a, ia), (_, mask_b, _) = (_trained(run, r, level, dev) for r in (a, b))
        own = run.finished(run.job(b, level, "ticket"), quiet=True, repair=False) or {}
        rewind_file = run.level(b, 0).rewind
        rewind_sha = run.recorded(run.job(b, 0, "ticket"), rewind_file) or ""
        try:
            rewind = load_tensors(rewind_file, dev, sha256=rewind_sha or None)
        except DamagedFile as e:
            raise TicketlabError(f"{e.path} is damaged ({e.why}); run the `ticketlab imp` command again") from None
        spec = permutation_spec(problem.init_model(b), problem.data.input_shape)
        cpu = {k: v.cpu() for k, v in wa.items()}, {k: v.cpu() for k, v in wb.items()}
        perms = weight_matching(*cpu, spec, seed=derive_seed(cfg.imp.seed, 0, a, b, "align"))
        inverse = {g: torch.argsort(p) for g, p in perms.items()}
        carried = permute_mask({k: v.cpu() for k, v in mask_a.items()}, inverse, spec)
        carried = {k: v.to(dev) for k, v in carried.items()}
        inputs = {"mask": ia["mask"], "rewind": rewind_sha, "a_dense": da["weights"], "b_dense": db["weights"]}
        jobs = [
            mask_job(run, cfg, problem, plan, b, level, f"{name}_from_r{a}", mask, rewind, inputs, options={})
            for name, mask in (("transport", carried), ("plain", mask_a))
        ]
        records = run_jobs(run, jobs, progress=progress, batch_jobs=parse_setting(batch_jobs))
        tickets = (("transported", carried, records[0]), ("plain", mask_a, records[1]), ("own", mask_b, own))
        rows = [
            {
                "level": level,
                "replicate_a": a,
                "replicate_b": b,
                "ticket": name,
                "density": M.density(mask),
                "final_test_acc": record.get("final_test_acc", ""),
                "jaccard_own": jaccard(mask, mask_b),
            }
            for name, mask, record in tickets
        ]
        write_csv(run.path / "transport.csv", _joined(run.path / "transport.csv", rows), TRANSPORT_COLUMNS)
    return rows


def _joined(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``path`` (an earlier pair's transport) with those of the same (level, a, b) replaced by ``rows``,
    in order of level and pair."""

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        return int(r["level"]), int(r["replicate_a"]), int(r["replicate_b"])

    new = {key(r) for r in rows}
    kept = [r for r in (read_csv(path) if path.exists() else []) if key(r) not in new]
    return sorted(kept + rows, key=key)


def transport_table(rows: list[dict[str, Any]]) -> str:
    """``transport.csv`` as a text table (accuracy in percent)."""
    head = ["level", "a", "b", "ticket", "density%", "test_acc%", "jaccard_own"]
    lines = [
        [str(r["level"]), str(r["replicate_a"]), str(r["replicate_b"]), r["ticket"], f"{100 * r['density']:.2f}",
         f"{100 * r['final_test_acc']:.2f}" if r["final_test_acc"] != "" else "-", f"{r['jaccard_own']:.3f}"]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *lines])


__all__ = ["ALIGN_COLUMNS", "TRANSPORT_COLUMNS", "align", "align_table", "jaccard", "transport", "transport_table"]
