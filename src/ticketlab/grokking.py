"""``ticketlab grokking``: grokking tickets (Minegishi et al., ICLR 2025; LITERATURE.md section 12).

Per replicate r, theta_0 is drawn and the dense network trained, evaluated every ``eval_every`` on the whole training
set and on the test set. The memorisation step is the first evaluation with train accuracy >= ``memorised_at``, the
generalisation step the first with test accuracy >= ``generalised_at`` (:func:`phases`); the weights at both are
kept (``memorised.safetensors``, ``generalised.safetensors`` in the dense job; when a phase is never reached, the
final weights, flagged in the record). At each density, five masks are then trained from the same theta_0 on the same
data order: ``generalised`` and ``memorised`` (magnitude of those weights), ``snip`` and ``synflow`` (at theta_0), and
``random`` (mask ``generalised``'s per-layer counts). Every mask's per-layer counts follow the run's pruning rules
(``--strategy``, per-layer fractions, keep-dense) through :func:`ticketlab.pruning.one_shot_groups`.

Jobs live in ``replicate_R/level_00/{dense,MASK-dD}/`` with ``result.json`` written last (every file's SHA-256): a
finished job is read back, never retrained. ``results.csv`` (one row per replicate, mask, density; no wall times, so
the same seed gives the same bytes), ``summary.csv`` (mean ± sample std, ddof=1), ``curves.png`` (test accuracy vs
step, mean over replicates).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab import scores as S
from ticketlab.config import ExperimentConfig
from ticketlab.data import Dataset, batches, load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.jobs import Job, Progress, trained_on
from ticketlab.plan import Plan, make_plan
from ticketlab.problem import Problem, registry_problem, state_of
from ticketlab.pruning import one_shot_groups, prune, prune_in_rounds, random_mask
from ticketlab.report.plots import pyplot, save_figure
from ticketlab.report.tables import spread_note, summarize
from ticketlab.rundir import JobFiles, RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import (
    atomic_write_text,
    load_tensors,
    save_tensors,
    sha256_bytes,
    write_csv,
    write_record,
)
from ticketlab.training import Observer, train
from ticketlab.training.objectives import CLASSIFICATION, evaluate

MASKS = ("generalised", "memorised", "snip", "synflow", "random")
COLUMNS = [
    "replicate",
    "mask",
    "target_density",
    "density",
    "memorised_step",
    "generalised_step",
    "final_test_acc",
    "final_train_acc",
    "note",
]
SUMMARY_COLUMNS = [
    "mask",
    "target_density",
    "n",
    "generalised",
    "generalised_step_mean",
    "generalised_step_std",
    "test_acc_mean",
    "test_acc_std",
    "train_acc_mean",
    "density",
    "wall_time_s",
]


@dataclass(frozen=True)
class Options:
    """What a grokking run measures (part of the run's identity)."""

    densities: tuple[float, ...] = (0.4,)  # fraction of the prunable weights kept
    memorised_at: float = 0.99  # train accuracy that counts as memorised
    generalised_at: float = 0.95  # test accuracy that counts as generalised

    def __post_init__(self) -> None:
        if not self.densities or any(not (0.0 < d < 1.0) for d in self.densities):
            raise TicketlabError(f"--density {self.densities}: give fractions kept in (0, 1), e.g. 0.4 or 0.2,0.4")
        if len(set(self.densities)) < len(self.densities):
            raise TicketlabError(f"--density {self.densities}: a value is repeated; give each once")
        for flag, value in (("--memorised-at", self.memorised_at), ("--generalised-at", self.generalised_at)):
            if not (0.0 < value <= 1.0):
                raise TicketlabError(f"{flag} {value}: give an accuracy in (0, 1], e.g. 0.95")


@dataclass(frozen=True)
class Phases:
    """The steps at which a curve memorised and generalised (None: never)."""

    memorised: int | None
    generalised: int | None


def first_at(rows: list[dict[str, Any]], key: str, threshold: float) -> int | None:
    """The ``step`` of the first row whose ``key`` is >= ``threshold`` (rows without ``key`` are skipped); None when
    no row reaches it."""
    return next((int(r["step"]) for r in rows if key in r and r[key] >= threshold), None)


def phases(rows: list[dict[str, Any]], memorised_at: float = 0.99, generalised_at: float = 0.95) -> Phases:
    """Memorisation (first ``train_acc`` >= ``memorised_at``) and generalisation (first ``test_acc`` >=
    ``generalised_at``) steps of evaluation rows ``{"step", "train_acc", "test_acc"}``, in order of step."""
    return Phases(first_at(rows, "train_acc", memorised_at), first_at(rows, "test_acc", generalised_at))


class Curves(Observer):
    """Adds ``train_acc`` on the whole training set to every evaluation row; with ``keep``, also keeps a copy of the
    weights at the first evaluation reaching each threshold (``memorised`` / ``generalised``: (step, state))."""

    def __init__(self, data: Dataset, options: Options, *, keep: bool = False):
        self.data, self.options, self.keep = data, options, keep
        self.objective = data.objective or CLASSIFICATION
        self.model: nn.Module | None = None
        self.kept: dict[str, tuple[int, dict[str, torch.Tensor]]] = {}

    def on_begin(self, model: nn.Module, start: int, end: int) -> None:
        self.model = model

    def wants_model(self, step: int) -> bool:
        return True  # evaluated mid-training: the network trains as it is (no sparse swap, no compaction)

    def on_eval(self, step: int, row: dict[str, Any]) -> None:
        _, row["train_acc"] = evaluate(self.model, self.data.train, self.objective)
        if not self.keep:
            return
        for name, key, at in (
            ("memorised", "train_acc", self.options.memorised_at),
            ("generalised", "test_acc", self.options.generalised_at),
        ):
            if name not in self.kept and row[key] >= at:
                self.kept[name] = (step, state_of(self.model))


def grokking_run(
    config: ExperimentConfig,
    options: Options,
    *,
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool | None = False,
) -> tuple[RunDir, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run (or resume) the grokking-ticket experiment of ``config`` (data, model, train, the pruning rules,
    ``imp.replicates`` and ``imp.seed``); returns the run, its rows (``COLUMNS``, also ``results.csv``) and its summary
    (``SUMMARY_COLUMNS``, also ``summary.csv``). TicketlabError for bad options, before anything is written."""
    if config.prune.units != "none":
        raise TicketlabError("--units: grokking tickets prune weights, not neurons; drop --units")
    dev = resolve_device(device)
    data = load_configured(config.data, dev)
    problem = registry_problem(config, data)
    plan = make_plan(config, problem)
    tag = derive_seed(*sorted(asdict(options).items())) % 16**8
    run = RunDir(Path(out) / f"grokking-{config.model.model}-{config.data.dataset}-{config.run_hash()}-{tag:08x}")
    rows: list[dict[str, Any]] = []
    records: list[tuple[str, float, dict[str, Any]]] = []
    with run.lock():
        run.claim(config, {**problem.identity, "grokking": json.loads(json.dumps(asdict(options)))})
        for r in range(config.imp.replicates):
            for name, d, record in _replicate(run, config, options, problem, plan, r, progress):
                rows.append(_row(r, name, d, record))
                records.append((name, d, record))
        write_csv(run.results_file, rows, COLUMNS)
        summary = summarize_rows(rows, [rec["wall_time_s"] for _, _, rec in records])
        write_csv(run.path / "summary.csv", summary, SUMMARY_COLUMNS)
        plot_curves(records, run.path / "curves.png", options.generalised_at)
    return run, rows, summary


def _replicate(run, cfg, options, problem: Problem, plan: Plan, r: int, progress) -> list[tuple[str, float, dict]]:
    """The dense job and every (mask, density) of replicate ``r``: trained, or read back when finished."""
    data_seed = derive_seed(cfg.imp.seed, r, "data")
    dense_files = run.job(r, 0, "dense")
    model = problem.init_model(r)
    dense = _train_job(
        run, dense_files, model, M.full_mask(model, plan.names), problem.data, cfg, options, data_seed, progress
    )
    out = [("dense", 1.0, dense)]
    for d in options.densities:
        files = {name: run.job(r, 0, f"{name}-d{d:g}") for name in MASKS}
        done = {name: run.finished(f) for name, f in files.items()}
        masks = _masks(run, cfg, problem, plan, r, d, dense_files, dense) if None in done.values() else {}
        for name in MASKS:
            record = done[name]
            if record is None:
                record = _train_job(
                    run,
                    files[name],
                    problem.init_model(r),
                    masks[name],
                    problem.data,
                    cfg,
                    options,
                    data_seed,
                    progress,
                    d,
                )
            out.append((name, d, record))
    return out


def mask_groups(plan: Plan, mask: M.Mask, density: float):
    """The run's pruning groups with the one-shot fractions that keep ``density`` of the prunable weights."""
    return one_shot_groups(plan.groups, {n: m.numel() for n, m in mask.items()}, density)


def _masks(run, cfg, problem: Problem, plan: Plan, r: int, density: float, dense_files: JobFiles, dense: dict):
    """The five masks of replicate ``r`` at ``density``, by name (:data:`MASKS`)."""
    model = problem.init_model(r)
    full = M.full_mask(model, plan.names)
    groups = mask_groups(plan, full, density)
    theta0 = {n: p.detach() for n, p in model.named_parameters() if n in full}
    device = next(model.parameters()).device
    out: dict[str, M.Mask] = {}
    for name in ("generalised", "memorised"):
        path = dense_files.path / f"{name}.safetensors"
        state = load_tensors(path, device, sha256=dense["files"][run.rel(path)])
        scores = S.score("large_final", mask=full, start=theta0, end={n: state[n] for n in full})
        out[name] = prune(scores, full, groups)
    data, bs = problem.data, cfg.train.batch_size
    seed = derive_seed(cfg.imp.seed, r, "score")
    examples = S.Examples(
        data.input_shape,
        lambda: ((x, y) for _, x, y in batches(data.train, bs, seed, 0, cfg.prune.score_batches)),
        data.objective,
        tokens=not data.train.inputs(slice(0, 1)).is_floating_point(),
    )
    for name in ("snip", "synflow"):

        def score(current: M.Mask, name: str = name) -> dict[str, torch.Tensor]:
            return S.score(name, model=model, mask=current, examples=examples)

        out[name] = prune_in_rounds(score, full, groups, cfg.prune.rounds or S.get(name).rounds)
    pools = [(n,) for n in out["generalised"]]  # per layer: mask (a)'s counts, layer by layer
    out["random"] = random_mask(out["generalised"], derive_seed(cfg.imp.seed, r, "random", density), pools)
    total = sum(m.numel() for m in full.values())
    for name, mask in out.items():  # each pool rounds its count once: at most half a weight per pool off
        if abs(M.count(mask) - density * total) > 0.5 * len(groups) + 1e-9:
            raise AssertionError(f"mask {name} keeps {M.density(mask):.6f}, not the requested {density}")
    return out


def _train_job(run, files: JobFiles, model, mask, data, cfg, options, data_seed, progress, target=None) -> dict:
    """Train one job from ``model`` (theta_0) under ``mask`` and write it (result.json last), unless finished."""
    record = run.finished(files)
    if record is not None:
        return record
    written = {run.rel(files.init): save_tensors(files.init, state_of(model))}
    dense = target is None
    if not dense:
        written[run.rel(files.mask)] = M.save_mask(files.mask, mask)
    curves = Curves(data, options, keep=dense)
    job = Job(files, lambda: (model, mask), cfg.train, data, data_seed, 0)
    bar = Progress(job, mask, progress)
    result = train(model, data, cfg.train, mask=mask, data_seed=data_seed, observers=[curves, bar], kernels="off")
    written[run.rel(files.final)] = save_tensors(files.final, state_of(model))
    metrics = "".join(json.dumps(row) + "\n" for row in result.metrics)
    atomic_write_text(files.metrics, metrics)
    written[run.rel(files.metrics)] = sha256_bytes(metrics.encode())
    found = phases(result.metrics, options.memorised_at, options.generalised_at)
    record: dict[str, Any] = {
        "replicate": files.replicate,
        "branch": files.branch,
        "target_density": 1.0 if dense else target,
        "density": M.density(mask),
        "layer_densities": M.layer_densities(mask),
        "memorised_step": found.memorised,
        "generalised_step": found.generalised,
        **result.summary(),
        "final_train_acc": result.metrics[-1]["train_acc"],
        "curve": {k: [row[k] for row in result.metrics] for k in ("step", "train_acc", "test_acc")},
        "trained_on": trained_on(data.train.x.device),
    }
    if dense:
        for name in ("memorised", "generalised"):
            path = files.path / f"{name}.safetensors"
            step, state = curves.kept.get(name, (result.metrics[-1]["step"], state_of(model)))
            written[run.rel(path)] = save_tensors(path, state)
            record[f"{name}_weights_step"] = step
            record[f"{name}_weights_reached"] = name in curves.kept
        record["note"] = _dense_note(found)
    else:
        record["note"] = "" if found.generalised is not None else "never generalised"
    record["files"] = written
    write_record(files.result, record)
    return record


def _dense_note(found: Phases) -> str:
    """What the dense network's kept weights are, in words, when they are not simply the two phases."""
    notes = []
    if found.memorised is None:
        notes.append("never memorised: memorised weights are the final ones")
    elif found.generalised is not None and found.generalised <= found.memorised:
        notes.append("generalised by the memorisation step: the memorised weights generalise too")
    if found.generalised is None:
        notes.append("never generalised: generalised weights are the final ones")
    return "; ".join(notes)


def _row(r: int, name: str, density: float, record: dict[str, Any]) -> dict[str, Any]:
    keys = ("density", "memorised_step", "generalised_step", "final_test_acc", "final_train_acc", "note")
    return {"replicate": r, "mask": name, "target_density": density, **{k: record.get(k) for k in keys}}


def summarize_rows(rows: list[dict[str, Any]], wall_times: list[float] | None = None) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1) over replicates of each (mask, density); ``generalised``: how many replicates
    generalised (the step's mean and std are over those); ``wall_times``: each row's, averaged (None: left empty)."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row["mask"], float(row["target_density"])), []).append(i)
    out = []
    for (name, density), members in groups.items():
        acc = summarize(rows[i]["final_test_acc"] for i in members)
        steps = [float(rows[i]["generalised_step"]) for i in members if rows[i]["generalised_step"] not in (None, "")]
        step = summarize(steps) if steps else None
        out.append(
            {
                "mask": name,
                "target_density": density,
                "n": acc.n,
                "generalised": len(steps),
                "generalised_step_mean": step.mean if step else None,
                "generalised_step_std": step.std if step else None,
                "test_acc_mean": acc.mean,
                "test_acc_std": acc.std,
                "train_acc_mean": summarize(rows[i]["final_train_acc"] for i in members).mean,
                "density": summarize(rows[i]["density"] for i in members).mean,
                "wall_time_s": summarize(wall_times[i] for i in members).mean if wall_times else None,
            }
        )
    return out


def _pm(mean: float | None, std: float | None, n: int, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if n > 1 and std is not None and math.isfinite(std) else "")


def table(summary: list[dict[str, Any]]) -> str:
    """The summary as a text table: per mask and density, steps to generalise (over the replicates that did, and
    how many did), final test and train accuracy (%), mean ± sample std."""
    head = f"{'mask':<12} {'density':>8} {'generalised':>11}  {'steps to generalise':<22} {'test acc %':<16} train %"
    lines = [f"grokking tickets, {spread_note(s['n'] for s in summary)}", head]
    for s in summary:
        k = s["generalised"]
        steps = _pm(s["generalised_step_mean"], s["generalised_step_std"], k, digits=0)
        acc = _pm(s["test_acc_mean"], s["test_acc_std"], s["n"], 100)
        lines.append(
            f"{s['mask']:<12} {100 * s['density']:7.1f}% {str(k) + '/' + str(s['n']):>11}  {steps:<22} {acc:<16} "
            f"{100 * s['train_acc_mean']:.2f}"
        )
    return "\n".join(lines)


def plot_curves(records: list[tuple[str, float, dict[str, Any]]], path: Path, generalised_at: float) -> Path:
    """``curves.png``: test accuracy vs step of every (mask, density), mean over replicates (the steps of the
    first replicate; all share the schedule), the dense network in black, the generalisation threshold dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.3))
    series: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for name, density, record in records:
        series.setdefault((name, density), []).append(record["curve"])
    several = len({d for _, d in series if d < 1.0}) > 1
    for i, ((name, density), curves) in enumerate(series.items()):
        length = min(len(c["step"]) for c in curves)
        mean = [100 * sum(c["test_acc"][j] for c in curves) / len(curves) for j in range(length)]
        label = name if name == "dense" or not several else f"{name} ({100 * density:g}%)"
        style = {"color": "k", "lw": 2} if name == "dense" else {"color": f"C{i % 10}"}
        ax.plot(curves[0]["step"][:length], mean, label=label, **style)
    ax.axhline(100 * generalised_at, color="grey", ls="--", lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("grokking tickets: test accuracy during training (mean over replicates)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
