"""Stability to SGD noise (Frankle et al. 2020) and error barriers between successive levels (Paul et al. 2023).

For every replicate, level and step k: the level's mask on the dense weights at k (the trunk's rewind state at the
trunk's k, else the dense training replayed to k), trained to the end of the schedule twice with the mask kept:
copy A with the trunk's data seed (at the trunk's k that IS the trunk's trained ticket, reused, except for the dense
level 0 at k > 0: the trunk trained through k with its optimizer state, so A restarts at k like B) and
copy B with its own data seed (another data order and other augmentation draws). The test error along the line
between A and B (:func:`ticketlab.analysis.connectivity.path_errors`) gives the instability. The copies are
ordinary resumable jobs (``replicate_R/level_L/stability_Kit_b/``, results.csv branch ``stability[copy=b,k=Kit]``);
each path is a record ``replicate_R/level_L/stability_Kit.json`` holding its inputs' SHA-256, computed again only
when missing, damaged or made from other weights.

``level_barriers``: the error barrier between the trunk's trained tickets of levels L and L+1 (no training).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab import masks as M
from ticketlab.analysis.connectivity import STABLE, barrier, instability, path_errors
from ticketlab.batched import parse_setting
from ticketlab.branches.base import State, masked
from ticketlab.branches.rewinding import dense_at
from ticketlab.config import ExperimentConfig
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.jobs import Job, run_jobs
from ticketlab.plan import Plan, make_plan
from ticketlab.problem import Problem, registry_problem
from ticketlab.report.plots import save_figure
from ticketlab.report.tables import mean_std, summarize
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.steps import Step
from ticketlab.store import DamagedFile, load_tensors, read_record, tensor_digest, verify, write_csv, write_record

PATH_COLUMNS = ["replicate", "level", "density", "k", "alpha", "test_error"]
INSTABILITY_COLUMNS = ["replicate", "level", "density", "k", "instability", "barrier", "error_a", "error_b"]
INSTABILITY_COLUMNS += ["acc_a", "acc_b"]
BARRIER_COLUMNS = ["replicate", "level_from", "level_to", "density_to", "barrier", "instability"]
BARRIER_COLUMNS += ["error_from", "error_to", "acc_to", "acc_dense", "acc_drop"]


@dataclass(frozen=True)
class _Setup:
    run: RunDir
    cfg: ExperimentConfig
    problem: Problem
    plan: Plan
    levels: list[int]


@dataclass(frozen=True)
class _Trunk:
    """A finished level's ticket as read (and verified) from the trunk."""

    mask: M.Mask
    mask_sha256: str
    start: State  # the ticket's weights at the trunk's k (masked)
    final: Path
    final_sha256: str
    acc: float


def _setup(run_dir: str | Path | RunDir, levels: list[int] | None, device: str) -> _Setup:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    saved = run.saved()
    if "weights" in saved:
        raise TicketlabError(f"{run.path} was run on your own model; stability needs a registered model")
    cfg = run.config()
    finished = [0, *run.finished_levels(cfg)] if run.finished(run.job(0, 0, "ticket"), quiet=True) else []
    if "early_bird" in saved:  # level 0 is the dense search, stopped at emergence: not a trained dense network
        if levels is not None and 0 in levels:
            why = "is the dense search stopped at emergence, not a trained network; give --levels 1"
            raise TicketlabError(f"--levels: level 0 of the early-bird run {run.path} {why}")
        finished = [lv for lv in finished if lv > 0]
    chosen = finished if levels is None else sorted(set(levels))
    missing = [lv for lv in chosen if lv not in finished]
    if missing or not chosen:
        raise TicketlabError(
            f"--levels: level(s) {missing or chosen} of {run.path} have not finished (finished: {finished or 'none'}); "
            "give finished levels or run the trunk further first"
        )
    problem = registry_problem(cfg, load_configured(cfg.data, resolve_device(device)))
    return _Setup(run, cfg, problem, make_plan(cfg, problem), chosen)


def parse_at(at: str | list[str] | None, plan: Plan) -> list[int]:
    """The steps of ``--at`` (``"0it,100it,2ep"`` or a list) as sorted distinct iterations; the trunk's rewind step
    when None. TicketlabError for a malformed step or one at or beyond the end of training."""
    if at is None:
        return [plan.k]
    texts = [t.strip() for t in (at.split(",") if isinstance(at, str) else at) if str(t).strip()]
    if not texts:
        raise TicketlabError("--at: no steps given; write e.g. 0it,100it,2ep")
    steps = []
    for text in texts:
        try:
            k = Step.parse(text).iterations(plan.per_epoch)
        except TicketlabError as e:
            raise TicketlabError(f"--at: {e}") from None
        if k >= plan.total:
            raise TicketlabError(
                f"--at: {text} is iteration {k}, not before the end of training ({plan.total}it); give steps "
                f"below {plan.total}it"
            )
        steps.append(k)
    return sorted(set(steps))


def _trunk(s: _Setup, r: int, level: int) -> _Trunk:
    """The trunk's ticket of (``r``, ``level``), every file checked against its record."""
    run = s.run
    job = run.job(r, level, "ticket")
    record = run.finished(job, repair=False)
    if record is None:
        raise TicketlabError(
            f"level {level} of replicate {r} in {run.path} has not finished or is damaged; run the `ticketlab imp` "
            "command that made the run again, then this one"
        )
    files = record.get("files", {})
    level0 = run.level(r, 0)
    if level == 0:  # the dense network trained from theta_0; its weights at k are the rewind state
        mask_file, mask_sha, start_file = level0.mask, files.get(run.rel(level0.mask)), level0.rewind
    else:
        mask_file, mask_sha, start_file = run.level(r, level).mask, record.get("inputs", {}).get("mask"), job.init
    dev = s.problem.data.train.x.device
    try:
        if mask_sha:
            verify(mask_file, mask_sha)
        mask = M.load_mask(mask_file, dev)
        start = masked(load_tensors(start_file, dev, sha256=files.get(run.rel(start_file))), mask)
        final_sha = files.get(run.rel(job.final)) or ""
        if final_sha:
            verify(job.final, final_sha)
    except DamagedFile as e:
        raise TicketlabError(
            f"{e.path} is damaged or missing ({e.why}); run the `ticketlab imp` command that made {run.path} again "
            "to repair it, then this one"
        ) from None
    return _Trunk(mask, mask_sha or "", start, job.final, final_sha, record["final_test_acc"])


def _copy_job(s: _Setup, r: int, level: int, k: int, copy: str, start: State, mask: M.Mask, mask_sha: str) -> Job:
    """Copy ``copy`` ("a": the trunk's data seed, "b": its own) of the level's ticket, trained from step ``k``."""
    seed = derive_seed(s.cfg.imp.seed, r, "data" if copy == "a" else "stability")

    def build():
        model = s.problem.init_model(r)
        model.load_state_dict(start)
        return M.apply_mask(model, mask), mask

    return Job(
        files=s.run.job(r, level, f"stability_{k}it_{copy}"),
        build=build,
        train=s.cfg.train,
        data=s.problem.data,
        data_seed=seed,
        start=k,
        inputs={"mask": mask_sha, "start": tensor_digest(sorted(start.items()))},
        label=f"stability[copy={copy},k={k}it]",
        options={"copy": copy, "k": k},
    )


def _path(s: _Setup, r: int, where: Path, a: tuple[Path, str], b: tuple[Path, str], points: int, bn: int) -> dict:
    """The path record between the weights files ``a`` and ``b`` (path, SHA-256): read back when intact and made
    from the same inputs, else computed and written atomically."""
    inputs = {"a": a[1], "b": b[1], "points": points, "bn_batches": bn}
    if where.exists():
        try:
            record = read_record(where)
            if record.get("inputs") == inputs:
                return record
        except DamagedFile:
            pass
    dev = s.problem.data.train.x.device
    ends = [load_tensors(p, dev, sha256=sha or None) for p, sha in (a, b)]
    rows = path_errors(
        s.problem.init_model(r),
        *ends,
        s.problem.data,
        points=points,
        bn_batches=bn,
        batch_size=s.cfg.train.batch_size,
        seed=derive_seed(s.cfg.imp.seed, r, "stability", "bn"),
    )
    errors, alphas = [row["test_error"] for row in rows], [row["alpha"] for row in rows]
    record = {
        "inputs": inputs,
        "alphas": alphas,
        "errors": errors,
        "losses": [row["test_loss"] for row in rows],
        "instability": instability(errors),
        "barrier": barrier(errors, alphas),
    }
    write_record(where, record)
    return read_record(where)  # the floats as they read back, so a first run and a rerun print the same


def stability(
    run_dir: str | Path | RunDir,
    *,
    levels: list[int] | None = None,
    at: str | list[str] | None = None,
    points: int = 30,
    bn_batches: int = 20,
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Instability of the tickets of the IMP run in ``run_dir`` (Frankle et al. 2020) at each step of ``at``.

    ``levels``: finished levels, 0 the dense network (default: all); ``at``: steps like ``"0it,100it,2ep"`` (default:
    the trunk's rewind step); ``points``: evaluations along each path; ``bn_batches``: training batches that
    re-estimate BatchNorm statistics at each point. Writes ``stability.csv`` (:data:`PATH_COLUMNS`),
    ``instability.csv`` (:data:`INSTABILITY_COLUMNS`), ``stability.png`` and ``instability.png`` in the run
    directory and returns the rows of ``instability.csv``: errors and accuracies are fractions. Resumable: finished
    copies and paths are read back. TicketlabError for unknown levels or bad steps.
    """
    if points < 2:
        raise TicketlabError(f"--points: {points}; give at least 2")
    s = _setup(run_dir, levels, device)
    ks = parse_at(at, s.plan)
    run, cfg = s.run, s.cfg
    with run.lock():
        jobs: list[Job] = []
        cells = []  # (r, level, k, density, end a, end b): an end is a trunk or an index into jobs
        replayed: dict[tuple[int, int], State] = {}
        for r in range(cfg.imp.replicates):
            for level in s.levels:
                t = _trunk(s, r, level)
                for k in ks:
                    if k == s.plan.k and (level > 0 or k == 0):
                        start, end_a = t.start, t
                    else:  # (the dense trunk ran through its k with its optimizer state: copy A restarts there)
                        if k != s.plan.k and (r, k) not in replayed:
                            init = s.run.finished(run.job(r, 0, "ticket"), repair=False) or {}
                            init_sha = init.get("files", {}).get(run.rel(run.level(r, 0).init))
                            replayed[r, k] = dense_at(run, cfg, s.problem, r, k, init_sha256=init_sha)
                        start = t.start if k == s.plan.k else masked(replayed[r, k], t.mask)
                        jobs.append(_copy_job(s, r, level, k, "a", start, t.mask, t.mask_sha256))
                        end_a = len(jobs) - 1
                    jobs.append(_copy_job(s, r, level, k, "b", start, t.mask, t.mask_sha256))
                    cells.append((r, level, k, M.density(t.mask), end_a, len(jobs) - 1))
        setting = parse_setting(batch_jobs)
        records = run_jobs(
            run, jobs, progress=progress, batch_jobs=setting, kernels=sparse_kernels, tensorboard=tensorboard
        )

        def end(e) -> tuple[Path, str, float]:
            if isinstance(e, _Trunk):
                return e.final, e.final_sha256, e.acc
            final, rec = jobs[e].files.final, records[e]
            return final, rec.get("files", {}).get(run.rel(final), ""), rec["final_test_acc"]

        rows, path_rows = [], []
        for r, level, k, density, ea, eb in cells:
            (pa, sa, acc_a), (pb, sb, acc_b) = end(ea), end(eb)
            rec = _path(
                s, r, run.level(r, level).path / f"stability_{k}it.json", (pa, sa), (pb, sb), points, bn_batches
            )
            base = {"replicate": r, "level": level, "density": density, "k": k}
            path_rows += [{**base, "alpha": x, "test_error": e} for x, e in zip(rec["alphas"], rec["errors"])]
            ends = (rec["errors"][0], rec["errors"][-1], acc_a, acc_b)
            rows.append(
                dict(zip(INSTABILITY_COLUMNS, (r, level, density, k, rec["instability"], rec["barrier"], *ends)))
            )
        run.write_results(run.results(cfg))  # the copies join results.csv under their stability[...] labels
        write_csv(run.path / "stability.csv", path_rows, PATH_COLUMNS)
        write_csv(run.path / "instability.csv", rows, INSTABILITY_COLUMNS)
        _plots(run.path, path_rows, rows)
    return rows


def level_barriers(
    run_dir: str | Path | RunDir,
    *,
    levels: list[int] | None = None,
    points: int = 30,
    bn_batches: int = 20,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Error barrier and instability between the trunk's trained tickets of each pair of successive levels (L, L+1)
    among ``levels`` (default: every finished level, 0 included), per replicate, with level L+1's test-accuracy drop
    against the dense level 0 (Paul et al. 2023: zero barrier goes with matching). No training. Writes
    ``level_barriers.csv`` (:data:`BARRIER_COLUMNS`), returns its rows; records ``level_L+1/barrier_from_L.json``."""
    if points < 2:
        raise TicketlabError(f"--points: {points}; give at least 2")
    s = _setup(run_dir, levels, device)
    pairs = [(a, a + 1) for a in s.levels if a + 1 in s.levels]
    if not pairs:
        hint = "an early-bird run has one" if "early_bird" in s.run.saved() else "give e.g. 0,1,2"
        raise TicketlabError(f"--levels: {s.levels} hold no two successive levels ({hint})")
    rows = []
    with s.run.lock():
        for r in range(s.cfg.imp.replicates):
            dense = _trunk(s, r, 0)
            for lo, hi in pairs:
                a, b = _trunk(s, r, lo), _trunk(s, r, hi)
                where = s.run.level(r, hi).path / f"barrier_from_{lo}.json"
                rec = _path(s, r, where, (a.final, a.final_sha256), (b.final, b.final_sha256), points, bn_batches)
                values = (r, lo, hi, M.density(b.mask), rec["barrier"], rec["instability"], rec["errors"][0])
                values += (rec["errors"][-1], b.acc, dense.acc, dense.acc - b.acc)
                rows.append(dict(zip(BARRIER_COLUMNS, values)))
        write_csv(s.run.path / "level_barriers.csv", rows, BARRIER_COLUMNS)
    return rows


def _mean_by(rows: list[dict[str, Any]], keys: tuple[str, ...], value: str) -> dict[tuple, Any]:
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(float(row[value]))
    return {key: summarize(v) for key, v in sorted(groups.items())}


def _plots(where: Path, path_rows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    import matplotlib  # here, not at the top: it takes ~0.5 s, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curves: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for (level, k, alpha), sm in _mean_by(path_rows, ("level", "k", "alpha"), "test_error").items():
        curves[level, k].append((alpha, 100 * sm.mean))
    for (level, k), xy in curves.items():
        ax.plot(*zip(*xy), marker=".", label=f"level {level}, k={k}it")
    ax.set(xlabel="interpolation alpha (copy A -> copy B)", ylabel="test error (%)", title="error along the path")
    ax.legend(fontsize=7)
    save_figure(fig, where / "stability.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for (level, k), sm in _mean_by(rows, ("level", "k"), "instability").items():
        lines[level].append((k, 100 * sm.mean, 0.0 if sm.n < 2 else 100 * sm.std))
    for level, pts in lines.items():
        ks, means, stds = zip(*pts)
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=f"level {level}")
    ax.axhline(100 * STABLE, color="grey", linestyle="--", linewidth=1, label="stable below")
    ax.set(xlabel="k (iterations)", ylabel="instability (points of error)", title="instability vs k")
    ax.legend(fontsize=7)
    save_figure(fig, where / "instability.png")


def _table(title: str, head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(
        [title, fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*c) for c in lines)]
    )


def stability_table(rows: list[dict[str, Any]]) -> str:
    """The instability rows as a table: per level and k, instability and the copies' test accuracy in points and
    percent (mean ± sample std, ddof=1, over n replicates), stable when the mean is under 2 points."""
    inst = _mean_by(rows, ("level", "density", "k"), "instability")
    acc_a, acc_b = (_mean_by(rows, ("level", "density", "k"), v) for v in ("acc_a", "acc_b"))
    lines = [
        [
            str(lv),
            f"{100 * d:.2f}",
            f"{k}it",
            mean_std(sm),
            str(sm.n),
            "yes" if sm.mean < STABLE else "no",
            mean_std(acc_a[lv, d, k]),
            mean_std(acc_b[lv, d, k]),
        ]
        for (lv, d, k), sm in inst.items()
    ]
    head = ["level", "density %", "k", "instability (points)", "n", "stable", "test acc A %", "test acc B %"]
    return _table("instability (mean ± sample std, ddof=1; stable: under 2 points)", head, lines)


def barrier_table(rows: list[dict[str, Any]]) -> str:
    """The level-barrier rows as a table: per pair of levels, barrier, instability and L+1's accuracy drop against
    the dense network, in points (mean ± sample std, ddof=1, over n replicates)."""
    keys = ("level_from", "level_to", "density_to")
    bar, ins, drop = (_mean_by(rows, keys, v) for v in ("barrier", "instability", "acc_drop"))
    lines = [
        [
            f"{lo} -> {hi}",
            f"{100 * d:.2f}",
            mean_std(sm),
            mean_std(ins[lo, hi, d]),
            mean_std(drop[lo, hi, d]),
            str(sm.n),
        ]
        for (lo, hi, d), sm in bar.items()
    ]
    head = ["levels", "density %", "barrier (points)", "instability (points)", "acc drop vs dense", "n"]
    return _table("error barrier between successive levels' trained tickets (mean ± sample std, ddof=1)", head, lines)
