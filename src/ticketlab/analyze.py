"""``ticketlab analyze``: what the tickets of an IMP run share (LITERATURE.md section 9), per replicate and level.

- sign preservation rho (Zhou et al. 2019) of the ticket (its rewind weights -> its trained weights, over its mask),
  of the dense network (theta_k -> its trained weights, all prunable weights: the same stretch of training as the
  ticket's) and of the random-pruning baseline (its own mask and weights, when the run trained it);
- gradient alignment: Jaccard index of the level's mask with the support of the early dense gradients (mean |grad|
  over the first ``grad_iterations`` iterations from theta_0, full mask, the trunk's data order);
- trajectory alignment: the share of the dense gradient's energy at the rewind point theta_k inside the mask (the
  mean gradient over ``trajectory_batches`` batches from iteration k);
- direct density (over the pruned tensors), over all weights, and effective density, from the ticket's record;
- with ``against``: mask overlap (Jaccard, per layer and overall) with another run's level of nearest density.

Every file is read verified against the record that wrote it. ``analysis.csv`` is written beside ``analysis.json``
(the SHA-256 of every input and the settings): a rerun on the same inputs reads the CSV back instead of measuring.
``overlap.csv`` (masks only, cheap) is computed again at each command that asks for it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ticketlab import masks as M
from ticketlab.analysis.alignment import (
    gradient_alignment,
    gradient_at,
    jaccard,
    jaccard_per_layer,
    mean_abs_gradients,
    sign_preservation,
    trajectory_alignment,
)
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.plan import make_plan
from ticketlab.problem import registry_problem
from ticketlab.report.tables import SPREAD, mean_std, summarize
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import (
    DamagedFile,
    load_tensors,
    read_csv,
    read_record,
    sha256_file,
    verify,
    write_csv,
    write_record,
)

COLUMNS = [
    "replicate",
    "level",
    "density",  # kept share of the pruned tensors
    "density_all",  # kept share of all of the model's weights
    "effective_density",  # kept weights on some input-to-output path
    "rho_ticket",  # sign preservation of the ticket over its mask
    "rho_dense",  # of the dense network over all prunable weights (the same for every level of a replicate)
    "rho_random",  # of the random-pruning baseline over its own mask (empty when the run has none)
    "gradient_alignment",  # Jaccard(mask, top weights by early mean |grad|)
    "trajectory_alignment",  # share of the gradient energy at theta_k inside the mask
]
MEASURES = COLUMNS[2:]
OVERLAP_COLUMNS = [
    "run",
    "other_run",
    "replicate",
    "level",
    "density",
    "other_level",
    "other_density",
    "layer",  # a parameter name, or "all" for the whole mask
    "jaccard",
]
ANALYSIS_CSV, OVERLAP_CSV, RECORD = "analysis.csv", "overlap.csv", "analysis.json"
_FORMAT = 1  # bump when the measures change meaning, so that old analysis.csv files are measured again


def _damaged(run: RunDir, e: DamagedFile) -> TicketlabError:
    return TicketlabError(
        f"{e.path} is damaged or missing ({e.why}); run the `ticketlab imp` command that made {run.path} again "
        "to repair it, then analyze"
    )


def _record(run: RunDir, r: int, level: int, branch: str) -> dict[str, Any] | None:
    return run.finished(run.job(r, level, branch), quiet=True, repair=False)


def _levels(run: RunDir, replicates: int, levels: list[int] | None, finished) -> dict[int, list[int]]:
    """The levels to analyse per replicate: ``levels`` (each must have finished in every replicate), or every
    finished level of each replicate."""
    todo = {}
    for r in range(replicates):
        done = finished(r)
        if levels is not None:
            missing = [lv for lv in levels if lv not in done]
            if missing:
                raise TicketlabError(
                    f"level(s) {missing} of replicate {r} in {run.path} have not finished (finished: "
                    f"{done or 'none'}); run the trunk further first, or pass --levels among the finished ones"
                )
            todo[r] = sorted(set(levels))  # each level once, however often it is named
        elif done:
            todo[r] = done
    if not todo:
        raise TicketlabError(f"{run.path} has no finished pruned level yet; run the trunk (ticketlab imp) first")
    return todo


def _files(run: RunDir, todo: dict[int, list[int]]) -> dict[str, str]:
    """Every file the analysis reads, by path relative to the run, with its recorded SHA-256 (verified now);
    TicketlabError naming the damaged one otherwise."""
    files: dict[str, str] = {}

    def add(path: Path, digest: str | None) -> None:
        if not digest:  # a record of ticketlab 0.1 lists no files: take the file as it is
            digest = sha256_file(path)
        verify(path, digest)
        files[run.rel(path)] = digest

    try:
        for r, levels in todo.items():
            dense = _record(run, r, 0, "ticket")
            if dense is None:
                raise DamagedFile(run.job(r, 0, "ticket").result, "level 0 has not finished or is not as recorded")
            level0, job0 = run.level(r, 0), run.job(r, 0, "ticket")
            for path in (level0.init, level0.rewind, level0.mask, job0.final):
                add(path, dense.get("files", {}).get(run.rel(path)))
            add(job0.result, None)
            for level in levels:
                for branch in ("ticket", "random_prune"):
                    job = run.job(r, level, branch)
                    record = _record(run, r, level, branch)
                    if record is None:
                        if branch == "ticket":
                            raise DamagedFile(job.result, f"level {level} has not finished or is not as recorded")
                        continue
                    add(job.result, None)
                    mask = run.level(r, level).mask if branch == "ticket" else job.mask
                    digest = record.get("inputs", {}).get("mask") if branch == "ticket" else None
                    add(mask, digest or record.get("files", {}).get(run.rel(mask)))
                    for path in (job.init, job.final):
                        add(path, record.get("files", {}).get(run.rel(path)))
    except DamagedFile as e:
        raise _damaged(run, e) from None
    return files


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row with numbers as numbers (an empty cell: None)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v in ("", None):
            out[k] = None
        elif k in ("replicate", "level", "other_level"):
            out[k] = int(v)
        elif k in ("run", "other_run", "layer"):
            out[k] = v
        else:
            out[k] = float(v)
    return out


def _read_back(run: RunDir, inputs: dict[str, str], settings: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rows of ``analysis.csv`` when it was measured on these inputs with these settings, else None."""
    path, record_path = run.path / ANALYSIS_CSV, run.path / RECORD
    if not (path.exists() and record_path.exists()):
        return None
    try:
        record = read_record(record_path)
        if record.get("inputs") != inputs or record.get("settings") != settings:
            return None
        verify(path, record.get("csv", ""))
    except DamagedFile:
        return None
    return [_parse(r) for r in read_csv(path)]


def _measure(
    run: RunDir,
    todo: dict[int, list[int]],
    inputs: dict[str, str],
    grad_iterations: int,
    trajectory_batches: int,
    device: str,
) -> list[dict[str, Any]]:
    """The rows of ``analysis.csv``: one per (replicate, level) of ``todo``, read from ``inputs`` (the files
    :func:`_files` verified; loaded again against the same digests)."""
    cfg = run.config()
    dev = resolve_device(device)
    problem = registry_problem(cfg, load_configured(cfg.data, dev))
    plan = make_plan(cfg, problem)

    def tensors(path: Path) -> dict:
        return load_tensors(path, dev, sha256=inputs[run.rel(path)])

    def mask_of(path: Path) -> M.Mask:
        verify(path, inputs[run.rel(path)])
        return M.load_mask(path, dev)

    rows = []
    for r, levels in todo.items():
        level0, job0 = run.level(r, 0), run.job(r, 0, "ticket")
        theta_0, theta_k = tensors(level0.init), tensors(level0.rewind)
        full = mask_of(level0.mask)
        seed = derive_seed(cfg.imp.seed, r, "data")  # the trunk's data order
        model = problem.init_model(r)
        model.load_state_dict(theta_0)
        early = mean_abs_gradients(
            model, problem.data, cfg.train, mask=full, data_seed=seed, start=0, iterations=grad_iterations
        )
        model.load_state_dict(theta_k)
        at_k = gradient_at(
            model, problem.data, cfg.train, mask=full, data_seed=seed, start=plan.k, iterations=trajectory_batches
        )
        rho_dense = sign_preservation(theta_k, tensors(job0.final), full)
        for level in levels:
            job = run.job(r, level, "ticket")
            record = read_record(job.result)
            mask = mask_of(run.level(r, level).mask)
            row = {
                "replicate": r,
                "level": level,
                **{k: record.get(k) for k in ("density", "density_all", "effective_density")},
                "rho_ticket": sign_preservation(tensors(job.init), tensors(job.final), mask),
                "rho_dense": rho_dense,
                "rho_random": None,
                "gradient_alignment": gradient_alignment(early, mask),
                "trajectory_alignment": trajectory_alignment(at_k, mask),
            }
            random = run.job(r, level, "random_prune")
            if run.rel(random.result) in inputs:  # the run trained its random baseline at this level
                start, final = tensors(random.init), tensors(random.final)
                row["rho_random"] = sign_preservation(start, final, mask_of(random.mask))
            rows.append(row)
    return rows


def _other_masks(path: Path) -> dict[int, dict[int, M.Mask]]:
    """The masks of another run directory's pruned levels, ``{replicate: {level: mask}}``, each checked against its
    ``level.json`` when it has one; TicketlabError when there are none or one is damaged."""
    found: dict[int, dict[int, M.Mask]] = {}
    for file in sorted(path.glob("replicate_*/level_*/mask.safetensors")):
        try:
            r = int(file.parent.parent.name.removeprefix("replicate_"))
            level = int(file.parent.name.removeprefix("level_"))
        except ValueError:
            continue
        if level < 1:
            continue
        try:
            record = file.parent / "level.json"
            if record.exists():
                verify(file, read_record(record).get("mask", ""))
            found.setdefault(r, {})[level] = M.load_mask(file)
        except DamagedFile as e:
            raise TicketlabError(
                f"--against {path}: {e.path} is damaged ({e.why}); run the command that made it again"
            ) from None
    if not found and (path / "criteria.csv").exists():  # a criteria comparison holds a table; its runs lie beside it
        runs = [f"{d.parent} ({RunDir(d.parent).config().prune.criterion})" for d in path.parent.glob("*/config.json")]
        why = f"a criteria comparison holds only its table; give its runs beside it: {', '.join(sorted(runs))}"
        raise TicketlabError(f"--against {path}: {why}")
    if not found:
        why = "no replicate_R/level_L/mask.safetensors (L >= 1) in it; give an IMP, criteria or early-bird run"
        raise TicketlabError(f"--against {path}: {why}")
    return found


def overlaps(run: RunDir, todo: dict[int, list[int]], others: list[Path]) -> list[dict[str, Any]]:
    """Rows of ``overlap.csv``: for each level of ``todo`` and each run of ``others``, the Jaccard index per layer
    and overall (layer ``all``) with the other run's level of the same replicate whose density is nearest (ties:
    the lower level). A replicate the other run lacks is left out."""
    rows = []
    for other in others:
        theirs = _other_masks(other)
        for r, levels in todo.items():
            if r not in theirs:
                continue
            for level in levels:
                mask = M.load_mask(run.level(r, level).mask)  # verified by _files
                density = M.density(mask)
                paired = {lv: (m, M.density(m)) for lv, m in theirs[r].items()}
                near = min(paired, key=lambda lv: (abs(paired[lv][1] - density), lv))
                theirs_mask, their_density = paired[near]
                if sorted(theirs_mask) != sorted(mask):
                    raise TicketlabError(
                        f"--against {other}: its masks cover other tensors than {run.path}'s; compare runs of the "
                        "same model and pruned tensors"
                    )
                base = {
                    "run": str(run.path),
                    "other_run": str(other),
                    "replicate": r,
                    "level": level,
                    "density": density,
                    "other_level": near,
                    "other_density": their_density,
                }
                per_layer = jaccard_per_layer(mask, theirs_mask)
                rows += [{**base, "layer": n, "jaccard": j} for n, j in per_layer.items()]
                rows.append({**base, "layer": "all", "jaccard": jaccard(mask, theirs_mask)})
    if not rows:
        raise TicketlabError(f"--against: no replicate of {', '.join(map(str, others))} pairs with {run.path}'s")
    return rows


def analyze(
    run_dir: str | Path | RunDir,
    *,
    against: list[str | Path] | tuple = (),
    levels: list[int] | None = None,
    grad_iterations: int = 20,
    trajectory_batches: int = 5,
    device: str = "auto",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure what the tickets of the IMP run ``run_dir`` share (see the module docstring) and write
    ``analysis.csv`` (rows: :data:`COLUMNS`) and, with ``against``, ``overlap.csv`` (:data:`OVERLAP_COLUMNS`) into
    it. Returns both lists of rows. ``levels``: the levels to analyse (default: every finished one);
    ``grad_iterations``: the early iterations whose mean |grad| gives the gradient support; ``trajectory_batches``:
    the batches from k whose mean gradient is the gradient at the rewind point. TicketlabError (one line) when
    ``run_dir`` is not a run directory, a level asked for has not finished, or a file is damaged."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if "weights" in run.saved() or "early_bird" in run.saved():
        why = "is an early-bird run (no rewind state); give it as --against" if "early_bird" in run.saved() else ""
        raise TicketlabError(f"{run.path} {why or 'was run on your own model; analyze needs a registered model'}")
    if grad_iterations < 1 or trajectory_batches < 1:
        raise TicketlabError("--grad-iterations and the trajectory batches must be at least 1; use e.g. 20")
    cfg = run.config()
    todo = _levels(run, cfg.imp.replicates, levels, lambda r: run.finished_levels(cfg, r))
    inputs = _files(run, todo)
    settings = {
        "format": _FORMAT,
        "levels": {str(r): lv for r, lv in todo.items()},
        "grad_iterations": grad_iterations,
        "trajectory_batches": trajectory_batches,
    }
    others = [Path(p) for p in against]
    for other in others:
        if not other.is_dir():
            raise TicketlabError(f"--against {other}: no such directory; give a run directory")
    with run.lock():
        rows = _read_back(run, inputs, settings)
        if rows is None:
            rows = _measure(run, todo, inputs, grad_iterations, trajectory_batches, device)
            write_csv(run.path / ANALYSIS_CSV, rows, COLUMNS)
            write_record(
                run.path / RECORD,
                {"inputs": inputs, "settings": settings, "csv": sha256_file(run.path / ANALYSIS_CSV)},
            )
            rows = [_parse(r) for r in read_csv(run.path / ANALYSIS_CSV)]  # as a rerun reads them back
        overlap = overlaps(run, todo, others) if others else []
        if overlap:
            write_csv(run.path / OVERLAP_CSV, overlap, OVERLAP_COLUMNS)
            overlap = [_parse(r) for r in read_csv(run.path / OVERLAP_CSV)]
    return rows, overlap


def _cell(values: list[float | None]) -> str:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "-"
    s = summarize(v)
    return f"{mean_std(s)} (n={s.n})"


def analysis_table(rows: list[dict[str, Any]]) -> str:
    """Per level, each measure of ``analysis.csv`` as mean ± sample std (ddof=1) over replicates, in %, with n."""
    levels = sorted({r["level"] for r in rows})
    head = ["level", *MEASURES]
    lines = [[str(lv)] + [_cell([r[m] for r in rows if r["level"] == lv]) for m in MEASURES] for lv in levels]
    return _layout(f"What tickets share, in % (mean ± {SPREAD}, n replicates)", head, lines)


def overlap_table(rows: list[dict[str, Any]]) -> str:
    """Per other run and level, the overall Jaccard index (layer ``all``), with the paired level and densities."""
    keys = sorted({(r["other_run"], r["level"], r["other_level"]) for r in rows if r["layer"] == "all"})
    head = ["other run", "level", "density %", "other level", "other density %", "jaccard %"]
    lines = []
    for key in keys:
        other, level, near = key
        sel = [r for r in rows if r["layer"] == "all" and (r["other_run"], r["level"], r["other_level"]) == key]
        lines.append(
            [other, str(level), _cell([r["density"] for r in sel]), str(near)]
            + [_cell([r["other_density"] for r in sel]), _cell([r["jaccard"] for r in sel])]
        )
    return _layout(f"Mask overlap with the level of nearest density (mean ± {SPREAD}, n replicates)", head, lines)


def _layout(title: str, head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    rule = fmt.format(*("-" * w for w in widths))
    return "\n".join([title, fmt.format(*head), rule] + [fmt.format(*x) for x in lines])
