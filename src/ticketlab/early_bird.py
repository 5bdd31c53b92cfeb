"""Early-bird tickets (You et al. 2020, LITERATURE.md section 7): the mask emerges early in dense training.

Every N iterations of dense training, compute the mask the pruning rule gives at the target density -- magnitude
over the prunable weights (layerwise / global / ERK as ``prune.strategy`` says), or the paper's channels ranked by
|BatchNorm gamma| globally -- and keep the last ``fifo`` of them. When the largest normalised Hamming distance
between the newest and each other one is at most ``epsilon``, the ticket has emerged: dense training stops there,
the network is pruned, and the ticket is trained (from the emergence weights over the full schedule, as the paper
retrains, or from theta_0), beside random pruning at the same per-layer densities.

The run directory reads like a one-shot IMP run to a target density: ``replicate_R/level_0/`` holds theta_0, the
dense search job (stopped at emergence: its final weights are the emergence weights) and ``early_bird.json`` (the
checks); ``level_1/mask.safetensors`` is the early-bird mask; ``level_1/ticket`` and ``level_1/random_prune`` are
ordinary jobs. Everything is verified by SHA-256 and recomputed only when missing or damaged.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ticketlab import masks as M
from ticketlab import scores as S
from ticketlab.batched import parse_setting
from ticketlab.config import ExperimentConfig
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.flops import forward_flops, training_flops
from ticketlab.imp import level_groups
from ticketlab.jobs import Job, Progress, finish, run_jobs
from ticketlab.plan import Plan, full_mask, make_plan, random_baseline
from ticketlab.problem import Problem, registry_problem, state_of
from ticketlab.pruning import alive_units, expand, prune
from ticketlab.report.tables import mean_std, summarize
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.steps import Step
from ticketlab.store import load_tensors, read_record, save_tensors, sha256_file, write_csv, write_record
from ticketlab.training import Observer, train

RULES = ("magnitude", "bn-channels")
STARTS = ("emergence", "init")
COLUMNS = [
    "replicate",
    "emerged",
    "emergence_step",
    "emergence_epoch",
    "hamming",
    "ticket_test_acc",
    "random_prune_test_acc",
    "early_bird_flops",
    "imp_flops",
    "imp_flops_source",
    "imp_level",
    "imp_density",
    "imp_ticket_test_acc",
]


@dataclass(frozen=True)
class Options:
    """What an early-bird search does (all of it is part of the run's identity)."""

    density: float  # target density of the mask (of the prunable weights; of the channels with bn-channels)
    every: str = "1ep"  # how often the mask is computed
    fifo: int = 5  # masks kept
    epsilon: float = 0.1  # largest normalised Hamming distance at which the mask counts as emerged
    rule: str = "magnitude"
    start: str = "emergence"  # where the ticket trains from: the emergence weights, or theta_0

    def __post_init__(self) -> None:
        if not (isinstance(self.density, (int, float)) and 0.0 < self.density < 1.0):
            raise TicketlabError(f"--density {self.density}: give a density strictly between 0 and 1, e.g. 0.2")
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise TicketlabError(f"--epsilon {self.epsilon}: give a distance >= 0, e.g. 0.1")
        if not isinstance(self.fifo, int) or self.fifo < 2:
            raise TicketlabError(f"--fifo {self.fifo}: keep at least 2 masks to compare, e.g. 5")
        if Step.parse(self.every).value < 1:
            raise TicketlabError(f"--every {self.every}: give a positive interval, e.g. 1ep or 200it")
        if self.rule not in RULES:
            raise TicketlabError(f"--rule {self.rule!r}: give one of {', '.join(RULES)}")
        if self.start not in STARTS:
            raise TicketlabError(f"--start {self.start!r}: give one of {', '.join(STARTS)}")


class EarlyBird(Observer):
    """Computes ``mask_at(model)`` every ``every`` iterations and at the end, keeps the last ``fifo`` masks, and
    stops training at the first check where the newest is within ``epsilon`` (normalised Hamming distance,
    :func:`ticketlab.masks.hamming`) of every other one, the FIFO being full. ``checks``: one entry per check
    (step, distances from the newest to the older masks, oldest first, and their maximum)."""

    def __init__(self, mask_at: Callable[[nn.Module], M.Mask], every: int, fifo: int = 5, epsilon: float = 0.1):
        self.mask_at, self.every, self.epsilon = mask_at, every, epsilon
        self.masks: deque[M.Mask] = deque(maxlen=fifo)
        self.checks: list[dict[str, Any]] = []
        self.emerged_at: int | None = None
        self.end: int | None = None

    def on_begin(self, model: nn.Module, start: int, end: int) -> None:
        self.end = end

    def wants_model(self, step: int) -> bool:
        return step % self.every == 0 or step == self.end

    def on_step(self, step: int, model: nn.Module) -> None:
        if self.wants_model(step):
            self.see(step, self.mask_at(model))

    def see(self, step: int, mask: M.Mask) -> bool:
        """Take the mask of ``step``; True when the ticket has emerged with it."""
        self.masks.append(mask)
        distances = [M.hamming(mask, old) for old in list(self.masks)[:-1]]
        full = len(self.masks) == self.masks.maxlen
        self.checks.append({"step": step, "distances": distances, "max_distance": max(distances, default=None)})
        if full and self.emerged_at is None and max(distances) <= self.epsilon:
            self.emerged_at = step
        return self.emerged_at == step

    def stop(self, step: int) -> bool:
        return self.emerged_at == step


def rule_mask(cfg: ExperimentConfig, plan: Plan, model: nn.Module, full: M.Mask) -> tuple[M.Mask, M.Mask]:
    """``(compared, mask)``: the mask the pruning rule gives ``model`` at the run's target density, pruned from
    ``full`` with IMP's groups and top-k, and what the stop rule compares (the mask itself; per-layer channel masks
    with bn-channels, as the paper compares them)."""
    groups = level_groups(cfg, plan, full, 1)
    if plan.units is None:  # magnitude of the current weights (large_final with start = end)
        now = {n: p.detach() for n, p in model.named_parameters() if n in full}
        mask = prune(S.score("large_final", mask=full, start=now, end=now), full, groups)
        return mask, mask
    scores = {f"{k}.weight": v for k, v in S.score("bn", model=model, mask=full, units=plan.units).items()}
    alive = {f"{k}.weight": v for k, v in alive_units(plan.units, full).items()}
    kept = {k.removesuffix(".weight"): v for k, v in prune(scores, alive, groups).items()}
    return kept, expand(plan.units, kept, model, full)


def search_config(config: ExperimentConfig, options: Options) -> ExperimentConfig:
    """The run's config: a one-shot prune straight to the density, from iteration 0, with random pruning beside
    the ticket (so other tools read the run like an IMP run); bn-channels prunes BatchNorm units globally."""
    cfg = config.replace(
        imp={"mode": "one-shot", "target_density": options.density, "rewind": "0it", "baselines": ["random_prune"]}
    )
    if options.rule == "bn-channels":
        cfg = cfg.replace(prune={"units": "bn", "strategy": "global", "criterion": "large_final"})
    return cfg


def early_bird(
    config: ExperimentConfig,
    options: Options,
    *,
    against: str | Path | None = None,
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> tuple[RunDir, list[dict[str, Any]]]:
    """Run (or resume) the early-bird search of every replicate, then train the tickets and random pruning;
    returns the run and one row per replicate (``COLUMNS``), also written to ``early_bird.csv``.
    TicketlabError for bad options, before anything is written."""
    cfg = search_config(config, options)
    parse_setting(batch_jobs)
    imp_run = RunDir(against) if against is not None else None
    if imp_run is not None:  # a run directory of the same model and data, before anything runs
        other = None if "weights" in imp_run.saved() else imp_run.config().to_dict()
        if other is None or any(other[k] != cfg.to_dict()[k] for k in ("model", "data")):
            raise TicketlabError(
                f"--against {against}: that run trained another model or dataset; give an IMP run made with the same "
                "model and data flags"
            )
    data = load_configured(cfg.data, resolve_device(device))
    problem = registry_problem(cfg, data)
    try:
        plan = make_plan(cfg, problem)
    except TicketlabError as e:
        if options.rule != "bn-channels":
            raise
        why = f"{cfg.model.model} has no prunable layer with a BatchNorm after it ({e})"
        raise TicketlabError(f"--rule bn-channels: {why}; use --rule magnitude or a model with BatchNorm") from None
    every = Step.parse(options.every).iterations(plan.per_epoch)
    tag = derive_seed(*sorted(asdict(options).items())) % 16**8
    run = RunDir(Path(out) / f"early-bird-{cfg.model.model}-{cfg.data.dataset}-{cfg.run_hash()}-{tag:08x}")
    executor = functools.partial(
        run_jobs, batch_jobs=parse_setting(batch_jobs), kernels=sparse_kernels, tensorboard=tensorboard
    )
    with run.lock():
        run.claim(cfg, {**problem.identity, "early_bird": asdict(options)})
        searches = [_search(cfg, options, plan, problem, run, r, every, progress) for r in range(cfg.imp.replicates)]
        jobs = [job for r, s in enumerate(searches) for job in _ticket_jobs(cfg, options, plan, problem, run, r, s)]
        records = executor(run, jobs, progress=progress)
        run.write_results(run.results(cfg))
    rows = []
    for r, search in enumerate(searches):
        ticket, random = records[2 * r], records[2 * r + 1]
        rows.append(_row(cfg, plan, problem, r, search, ticket, random, imp_run))
    write_csv(run.path / "early_bird.csv", rows, COLUMNS)
    return run, rows


def _search(cfg, options, plan, problem, run, r, every, progress) -> dict[str, Any]:
    """Replicate ``r``'s dense search, run or read back: its result record, with the early-bird record under
    ``"early_bird"`` and the emergence weights' SHA-256 under ``"weights"``."""
    level0 = run.level(r, 0)
    files = run.job(r, 0, "ticket")
    record = run.finished(files)
    if record is None:
        model = problem.init_model(r)
        full = full_mask(model, plan)
        job = Job(files, lambda: (model, full), cfg.train, problem.data, derive_seed(cfg.imp.seed, r, "data"), 0)
        written = {run.rel(level0.init): save_tensors(level0.init, state_of(model))}
        written[run.rel(level0.mask)] = M.save_mask(level0.mask, full)
        bird = EarlyBird(lambda m: rule_mask(cfg, plan, m, full)[0], every, options.fifo, options.epsilon)
        result = train(
            model,
            problem.data,
            cfg.train,
            mask=full,
            data_seed=job.data_seed,
            observers=[bird, Progress(job, full, progress)],
        )
        step = result.metrics[-1]["step"]
        last = bird.checks[-1]
        write_record(
            _bird_file(run, r),
            {
                "replicate": r,
                **asdict(options),
                "every_it": every,
                "per_epoch": plan.per_epoch,
                "checks": bird.checks,
                "emerged": bird.emerged_at is not None,
                "emergence_step": step,
                "hamming": last["max_distance"],
            },
        )
        written[run.rel(_bird_file(run, r))] = sha256_file(_bird_file(run, r))
        record = finish(run, job, model, full, result, written)
    bird = read_record(_bird_file(run, r))  # verified through the job record's SHA-256
    return {**record, "early_bird": bird, "weights": record["files"][run.rel(files.final)]}


def _bird_file(run: RunDir, r: int) -> Path:
    return run.level(r, 0).path / "early_bird.json"


def _ticket_jobs(cfg, options, plan, problem, run, r, search) -> list[Job]:
    """The early-bird mask (read back, or pruned from the emergence weights) and its two jobs: the ticket, and
    random pruning at its per-layer densities, both from the chosen start over the full schedule."""
    device = problem.data.train.x.device
    level0, files = run.level(r, 0), run.job(r, 0, "ticket")
    if options.start == "emergence":
        start_file, start_digest = files.final, search["weights"]
    else:
        start_file, start_digest = level0.init, search["files"][run.rel(level0.init)]
    full = full_mask(problem.init_model(r), plan)
    saved = run.level_mask(r, 1, full, device)
    if saved is None:
        model = problem.init_model(r)
        model.load_state_dict(load_tensors(files.final, device, sha256=search["weights"]))
        mask = rule_mask(cfg, plan, model, full)[1]
        saved = mask, run.save_level_mask(r, 1, mask)
    mask, digest = saved
    inputs = {"mask": digest, "start": start_digest}

    def started(m: M.Mask):
        model = problem.init_model(r)
        model.load_state_dict(load_tensors(start_file, device, sha256=start_digest))
        return M.apply_mask(model, m), m

    def random_prune():
        return started(random_baseline(plan, problem, mask, derive_seed(cfg.imp.seed, r, 1, "random_prune")))

    data_seed = derive_seed(cfg.imp.seed, r, "data")
    random_files = run.job(r, 1, "random_prune")
    return [
        Job(run.job(r, 1, "ticket"), lambda: started(mask), cfg.train, problem.data, data_seed, 0, inputs),
        Job(random_files, random_prune, cfg.train, problem.data, data_seed, 0, inputs, mask_file=random_files.mask),
    ]


def _row(cfg, plan, problem, r, search, ticket, random, imp_run) -> dict[str, Any]:
    """One replicate's line: emergence, accuracies, and the early-bird route's FLOPs against IMP's."""
    bird = search["early_bird"]
    row = {
        "replicate": r,
        "emerged": bird["emerged"],
        "emergence_step": bird["emergence_step"],
        "emergence_epoch": bird["emergence_step"] / plan.per_epoch,
        "hamming": bird["hamming"],
        "ticket_test_acc": ticket["final_test_acc"],
        "random_prune_test_acc": random["final_test_acc"],
        "early_bird_flops": search["train_flops"] + ticket["train_flops"],
    }
    if imp_run is None:
        levels, flops = estimate_imp(cfg, plan, problem)
        return {**row, "imp_flops": flops, "imp_flops_source": "estimate", "imp_level": levels}
    return {**row, **recorded_imp(imp_run, r, cfg.imp.target_density)}


def estimate_imp(cfg: ExperimentConfig, plan: Plan, problem: Problem) -> tuple[int, int]:
    """``(L, FLOPs)``: the iterative levels L at which IMP with the config's per-level fractions first keeps at
    most the target density, and (L + 1) full dense trainings (level 0 and L levels) -- an upper estimate."""
    model = problem.init_model(0)
    sizes = {n: int(m.numel()) for n, m in full_mask(model, plan).items()}
    weights = [(sum(sizes[n] for n in g.members), g.fraction) for g in plan.groups]
    total = sum(n for n, _ in weights)
    levels = 0
    while sum(n * (1.0 - f) ** levels for n, f in weights) / total > cfg.imp.target_density and levels < 1000:
        levels += 1
    data = problem.data
    evaluated = len(data.test) + (len(data.val) if data.val is not None else 0)
    evals = plan.total // cfg.train.eval_every.iterations(plan.per_epoch) + 2
    one = training_flops(
        forward_flops(model, data.train.inputs(slice(0, 1))), plan.total * cfg.train.batch_size, evals * evaluated
    )
    return levels, (levels + 1) * one


def recorded_imp(imp_run: RunDir, r: int, density: float) -> dict[str, Any]:
    """From an IMP run: the ticket level whose density is nearest ``density`` (replicate ``r``), the recorded
    ``train_flops`` of the trunk's ticket jobs through it (level 0 and that level, for one-shot / at-init), and its
    ticket's accuracy."""
    config = imp_run.config()
    tickets = {
        row["level"]: row for row in imp_run.rows(quiet=True) if row["branch"] == "ticket" and row["replicate"] == r
    }
    pruned = [lv for lv in tickets if lv > 0]
    if not pruned or 0 not in tickets:
        return {"imp_flops_source": "missing"}
    best = min(pruned, key=lambda lv: (abs(tickets[lv]["density"] - density), lv))
    through = [0, best] if config.imp.prunes_from_dense else [lv for lv in sorted(tickets) if lv <= best]
    if not config.imp.prunes_from_dense and through != list(range(best + 1)):
        return {"imp_flops_source": "missing"}
    return {
        "imp_flops": sum(tickets[lv]["train_flops"] for lv in through),
        "imp_flops_source": "recorded",
        "imp_level": best,
        "imp_density": tickets[best]["density"],
        "imp_ticket_test_acc": tickets[best]["final_test_acc"],
    }


def table(rows: list[dict[str, Any]], per_epoch_note: str = "") -> str:
    """Per replicate and mean ± sample std (ddof=1) over the replicates: emergence, accuracies and FLOPs."""
    head = ["replicate", "emerged", "step (it)", "epoch", "hamming", "ticket acc", "random acc", "EB GFLOPs",
            "IMP GFLOPs", "saving", "IMP level", "IMP density", "IMP acc"]  # fmt: skip

    def cells(vals: dict[str, Any]) -> list[str]:
        def num(key: str, fmt: str, scale: float = 1.0) -> str:
            v = vals.get(key)
            return "-" if v is None or v == "" else fmt.format(scale * v if scale != 1.0 else v)

        saving = vals["imp_flops"] / vals["early_bird_flops"] if vals.get("imp_flops") else None
        return [str(vals["replicate"]), str(vals["emerged"]), num("emergence_step", "{:.0f}"),
                num("emergence_epoch", "{:.2f}"), num("hamming", "{:.4f}"), num("ticket_test_acc", "{:.2f}", 100),
                num("random_prune_test_acc", "{:.2f}", 100), num("early_bird_flops", "{:.3g}", 1e-9),
                num("imp_flops", "{:.3g}", 1e-9) + ("*" if vals.get("imp_flops_source") == "estimate" else ""),
                "-" if saving is None else f"{saving:.2f}x", num("imp_level", "{}"), num("imp_density", "{:.4f}"),
                num("imp_ticket_test_acc", "{:.2f}", 100)]  # fmt: skip

    lines = [cells(row) for row in rows]
    summary = ["mean ± std", f"{sum(bool(r['emerged']) for r in rows)}/{len(rows)}"]
    for key, scale in [("emergence_step", 1), ("emergence_epoch", 1), ("hamming", 1), ("ticket_test_acc", 100),
                       ("random_prune_test_acc", 100), ("early_bird_flops", 1e-9), ("imp_flops", 1e-9)]:  # fmt: skip
        values = [row[key] for row in rows if row.get(key) is not None]
        summary.append(mean_std(summarize(values), scale) if values else "-")
    savings = [row["imp_flops"] / row["early_bird_flops"] for row in rows if row.get("imp_flops")]
    summary.append(mean_std(summarize(savings), 1) + "x" if savings else "-")
    summary.append("-")
    for key, scale in [("imp_density", 1), ("imp_ticket_test_acc", 100)]:
        values = [row[key] for row in rows if row.get(key) is not None]
        summary.append(mean_std(summarize(values), scale) if values else "-")
    lines.append(summary)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*c) for c in lines)]
    notes = [f"n={len(rows)} replicates; spread: sample std (ddof=1); accuracy: final test accuracy in %"]
    if any(row.get("imp_flops_source") == "estimate" for row in rows):
        notes.append("* IMP FLOPs estimated: (L + 1) full dense trainings, L the levels the plan needs (no --against)")
    if any(not row["emerged"] for row in rows):
        notes.append("emerged False: the mask never converged; the mask at the end of dense training was used")
    return "\n".join([*out, *notes])
