"""``ticketlab supermask``: strong lottery tickets as an experiment (LITERATURE.md section 8).

For every width multiplier and replicate, one random network theta_0 is drawn; then
- ``dense``: theta_0 trained as usual (the network a subnetwork has to match);
- each ``--method`` at each ``--k``: a supermask learned over theta_0 frozen (:mod:`ticketlab.supermask`), and a
  random mask of the learned mask's per-layer density on the same frozen weights (``random``, evaluated only).

The run directory reads like the other runs: ``replicate_R/level_00/JOB/`` holds each job's starting weights
(``init``), final state (``final``: for a supermask the frozen weights and the learned scores), its mask, metrics and
``result.json`` (written last, with every file's SHA-256); a finished, intact job is read back, never retrained, so
a killed run resumes where it stopped. ``results.csv`` has one row per (width, replicate, method, k), with a
``method`` column; ``summary.csv`` the mean ± sample std over replicates; two plots, accuracy vs k and vs width.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ticketlab import masks as M
from ticketlab import supermask as SM
from ticketlab.config import ExperimentConfig
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.flops import forward_flops, training_flops
from ticketlab.jobs import Job, Progress, run_jobs, trained_on
from ticketlab.models import model_arguments, model_defaults, signed_constant
from ticketlab.plan import make_plan
from ticketlab.problem import Problem, registry_problem, state_of
from ticketlab.prunable import first_layer_name
from ticketlab.report.html import html_report
from ticketlab.report.plots import pyplot, save_figure
from ticketlab.report.tables import spread_note, summarize
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import atomic_write_text, save_tensors, sha256_bytes, write_csv, write_record
from ticketlab.training import TRAIN_ACC_SAMPLE, train
from ticketlab.training.objectives import CLASSIFICATION, evaluate

COLUMNS = [
    "width",
    "replicate",
    "method",
    "baseline_of",  # random: the method whose learned mask's per-layer density it copies
    "k",
    "weights",
    "density",
    "final_test_acc",
    "best_test_acc",
    "test_acc_expected",
    "train_acc",
    "wall_time_s",
    "train_flops",
]
SUMMARY_COLUMNS = [
    "width",
    "method",
    "baseline_of",
    "k",
    "n",
    "density",
    "test_acc_mean",
    "test_acc_std",
    "expected_mean",
]


@dataclass(frozen=True)
class Options:
    """What a supermask run learns (all of it is part of the run's identity)."""

    methods: tuple[str, ...] = ("edge-popup",)
    ks: tuple[float, ...] = (0.5,)  # fraction of each layer kept (edge-popup, biprop); zhou's initial keep probability
    weights: str = "signed-constant"  # the frozen weights: theta_0 as drawn ("init") or its signed constant
    rescale: bool = False  # zhou's dynamic weight rescaling
    binary_activations: bool = False  # biprop
    widths: tuple[float, ...] = (1.0,)  # width multipliers of the network
    dense_lr: float = 0.0  # the dense baseline's learning rate (0: the run's --lr)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in SM.METHODS]
        if bad or not self.methods:
            raise TicketlabError(f"--method {','.join(bad) or '(none)'}: use one or more of {', '.join(SM.METHODS)}")
        if not self.ks or any(not (0.0 < k <= 1.0) for k in self.ks):
            raise TicketlabError(f"--k {self.ks}: give fractions kept in (0, 1], e.g. 0.3,0.5,0.7")
        for flag, values in (("--method", self.methods), ("--k", self.ks), ("--width-sweep", self.widths)):
            if len(set(values)) < len(values):  # a repeat would be counted as another replicate in summary.csv
                raise TicketlabError(f"{flag} {','.join(map(str, values))}: a value is repeated; give each once")
        if self.weights not in SM.WEIGHTS:
            raise TicketlabError(f"--weights {self.weights!r}: use one of {', '.join(SM.WEIGHTS)}")
        if self.rescale and "zhou" not in self.methods:
            raise TicketlabError("--rescale is zhou's dynamic weight rescaling; add --method zhou or drop it")
        if self.binary_activations and "biprop" not in self.methods:
            raise TicketlabError("--binary-activations is a biprop option; add --method biprop or drop it")
        if not self.widths or any(not (w > 0 and math.isfinite(w)) for w in self.widths):
            raise TicketlabError(f"--width-sweep {self.widths}: give positive width multipliers, e.g. 0.5,1,2")
        if not (self.dense_lr >= 0 and math.isfinite(self.dense_lr)):
            raise TicketlabError(f"--dense-lr {self.dense_lr}: give a positive learning rate (0: the run's --lr)")


def widened(cfg: ExperimentConfig, multiplier: float) -> ExperimentConfig:
    """``cfg`` with every hidden layer ``multiplier`` times as wide: an MLP's widths (rounded, at least 1) or a conv
    net's width multiplier. TicketlabError for a model with neither."""
    if multiplier == 1.0:
        return cfg
    name, args = cfg.model.model, model_arguments(cfg.model.model)
    if "widths" in args:
        base = cfg.model.widths or model_defaults(name)["widths"]
        return cfg.replace(model={"widths": tuple(max(1, round(w * multiplier)) for w in base)})
    if "width" in args:
        return cfg.replace(model={"width": cfg.model.width * multiplier})
    raise TicketlabError(
        f"--width-sweep: model {name} has no width to scale (neither MLP widths nor a --width multiplier); use an MLP "
        "or a model that takes --width (lenet5, conv_2/4/6, VGG, ResNet)"
    )


def _job_name(method: str, k: float, width: float) -> str:
    return f"{method}-k{k:g}-w{width:g}"


def supermask_run(
    config: ExperimentConfig,
    options: Options,
    *,
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool | None = False,
) -> tuple[RunDir, list[dict[str, Any]]]:
    """Run (or resume) the supermask experiment of ``config`` (its data, model, training config for the scores,
    ``imp.replicates`` and ``imp.seed``) and return the run and its rows (``COLUMNS``), also in ``results.csv``.
    TicketlabError for bad options, before anything is written."""
    dev = resolve_device(device)
    data = load_configured(config.data, dev)
    problems = {w: registry_problem(widened(config, w), data) for w in options.widths}
    plans = {w: make_plan(widened(config, w), p) for w, p in problems.items()}  # refuses models without weights
    tag = derive_seed(*sorted(asdict(options).items())) % 16**8
    run = RunDir(Path(out) / f"supermask-{config.model.model}-{config.data.dataset}-{config.run_hash()}-{tag:08x}")
    rows: list[dict[str, Any]] = []
    with run.lock():
        # as the saved record reads back (JSON has lists, not tuples), so that a rerun is recognised
        mine = json.loads(json.dumps(asdict(options)))
        run.claim(config, {**problems[options.widths[0]].identity, "supermask": mine})
        for w in options.widths:
            for r in range(config.imp.replicates):
                rows += _width_replicate(run, config, options, problems[w], plans[w].names, w, r, progress)
        write_csv(run.results_file, rows, COLUMNS)
        summary = summarize_rows(rows)
        write_csv(run.path / "summary.csv", summary, SUMMARY_COLUMNS)
        plot(summary, run.path)
        html_report(run.path)  # RUN/report.html: report/strong_panels.py's panel, the config and every job
    return run, rows


def _width_replicate(run, config, options, problem: Problem, names, width, r, progress) -> list[dict[str, Any]]:
    """The dense baseline and every (method, k) of one width and replicate: run or read back; their rows."""
    cfg = widened(config, width)
    data_seed = derive_seed(config.imp.seed, r, "data")
    dense_cfg = cfg.train if not options.dense_lr else cfg.replace(train={"lr": options.dense_lr}).train

    def dense_start():
        model = problem.init_model(r)
        return model, M.full_mask(model, names)

    dense_files = run.job(r, 0, f"dense-w{width:g}")
    dense = run_jobs(run, [Job(dense_files, dense_start, dense_cfg, problem.data, data_seed, 0)], progress=progress)[0]
    rows = [_row(width, r, "dense", 1.0, "init", dense)]
    for method in options.methods:
        for k in options.ks:
            record = _learned(run, cfg, options, problem, names, width, r, method, k, data_seed, progress)
            rows.append(_row(width, r, method, k, options.weights, record))
            rows.append({**_row(width, r, "random", k, options.weights, record["random"]), "baseline_of": method})
    return rows


def _learned(run, cfg, options, problem, names, width, r, method, k, data_seed, progress) -> dict[str, Any]:
    """One learned supermask job (with its random-mask evaluation), trained unless finished and intact."""
    files = run.job(r, 0, _job_name(method, k, width))
    record = run.finished(files)
    if record is not None:
        return record
    model = problem.init_model(r)
    if options.weights == "signed-constant":
        signed_constant(model, names, k)
    written = {run.rel(files.init): save_tensors(files.init, state_of(model))}
    data = problem.data
    example = data.train.inputs(slice(0, 1))
    first = first_layer_name(model, example, names) if options.binary_activations and method == "biprop" else None
    sm = SM.Supermask(
        model,
        names,
        method,
        k=k,
        rescale=options.rescale and method == "zhou",
        binary_activations=options.binary_activations and method == "biprop",
        first=first,
        seed=derive_seed(cfg.imp.seed, r, "supermask", method, k),
    )
    before = SM.frozen_state(model)
    job = Job(files, lambda: (sm, {}), cfg.train, data, data_seed, 0)
    objective = data.objective or CLASSIFICATION
    bar = Progress(job, sm.mask(), progress)  # the bar shows the starting mask's density
    result = train(sm, data, cfg.train, mask={}, data_seed=data_seed, observers=[bar], kernels="off")
    SM.check_frozen(model, before)  # the weights a supermask learns over are the same bits as they started
    mask = sm.mask()
    expected = SM.expected_accuracy(sm, data.test, objective)
    random = SM.random_like(mask, derive_seed(cfg.imp.seed, r, "random", method, k))
    with sm.using(random):
        random_loss, random_acc = evaluate(sm, data.test, objective)
        _, random_train = evaluate(sm, data.train.head(TRAIN_ACC_SAMPLE), objective)
    written[run.rel(files.final)] = save_tensors(files.final, state_of(sm))
    written[run.rel(files.mask)] = M.save_mask(files.mask, mask)
    metrics = "".join(json.dumps(row) + "\n" for row in result.metrics)
    atomic_write_text(files.metrics, metrics)
    written[run.rel(files.metrics)] = sha256_bytes(metrics.encode())
    dense_fwd = forward_flops(model, example)
    evaluated = len(data.test) + (len(data.val) if data.val is not None else 0)
    record = {
        "replicate": r,
        "width": width,
        "method": method,
        "k": k,
        "options": asdict(options),
        "density": M.density(mask),
        "layer_densities": M.layer_densities(mask),
        **result.summary(),
        "test_acc_expected": expected,
        # the scores train through the dense network: every weight computes, masked or not
        "train_flops": training_flops(
            dense_fwd,
            (result.metrics[-1]["step"]) * cfg.train.batch_size,
            len(result.metrics) * evaluated + min(TRAIN_ACC_SAMPLE, len(data.train)),
        ),
        "random": {
            "density": M.density(random),
            "final_test_acc": random_acc,
            "test_loss": random_loss,
            "train_acc": random_train,
        },
        "trained_on": trained_on(data.train.x.device),
        "files": written,
    }
    write_record(files.result, record)
    return record


def _row(width: float, r: int, method: str, k: float, weights: str, record: dict[str, Any]) -> dict[str, Any]:
    keys = ("density", "final_test_acc", "best_test_acc", "test_acc_expected", "train_acc", "wall_time_s")
    row = {"width": width, "replicate": r, "method": method, "baseline_of": "", "k": k, "weights": weights}
    return {**row, **{key: record.get(key) for key in keys}, "train_flops": record.get("train_flops")}


def summarize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1) over replicates of each (width, method, k)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["width"], row["method"], row["baseline_of"], row["k"]), []).append(row)
    out = []
    for (width, method, of, k), members in groups.items():
        acc = summarize(m["final_test_acc"] for m in members)
        expected = [m["test_acc_expected"] for m in members if m.get("test_acc_expected") is not None]
        out.append(
            {
                "width": width,
                "method": method,
                "baseline_of": of,
                "k": k,
                "n": acc.n,
                "density": summarize(m["density"] for m in members).mean,
                "test_acc_mean": acc.mean,
                "test_acc_std": acc.std,
                "expected_mean": summarize(expected).mean if expected else None,
            }
        )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    """The summary as a text table: test accuracy (%) per width, method and k, mean ± sample std."""
    ns = [s["n"] for s in summary]
    head = f"{'width':>6} {'method':<19} {'k':>5} {'density':>8}  accuracy"
    lines = [f"test accuracy (%), {spread_note(ns)}", head]
    for s in summary:
        acc = f"{100 * s['test_acc_mean']:.2f}" + (f" ± {100 * s['test_acc_std']:.2f}" if s["n"] > 1 else "")
        if s["expected_mean"] is not None:
            acc += f"   (expected mask {100 * s['expected_mean']:.2f})"
        k = "" if s["method"] == "dense" else f"{s['k']:g}"
        name = f"random ({s['baseline_of']})" if s["baseline_of"] else s["method"]
        lines.append(f"{s['width']:>6g} {name:<19} {k:>5} {100 * s['density']:7.1f}%  {acc}")
    return "\n".join(lines)


STYLES = {"dense": "k-", "zhou": "C0o-", "edge-popup": "C1s-", "biprop": "C2^-", "random": "C7x--"}


def plot(summary: list[dict[str, Any]], where: Path) -> list[Path]:
    """``accuracy_vs_k.png`` (at the first width: each method and the random masks against k, the dense network
    as a line) and, with several widths, ``accuracy_vs_width.png`` (each method's best k, random's best, dense)."""
    plt = pyplot()
    widths = sorted({s["width"] for s in summary})
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    first = [s for s in summary if s["width"] == widths[0]]
    for method, of in _series(summary):
        pts = sorted((s["k"], s) for s in first if (s["method"], s["baseline_of"]) == (method, of))
        if not pts or method == "dense":
            continue
        ax.errorbar(
            [k for k, _ in pts],
            [100 * s["test_acc_mean"] for _, s in pts],
            yerr=[_err(s) for _, s in pts],
            fmt=STYLES[method],
            capsize=3,
            label=f"random ({of})" if of else method,
        )
    for s in first:
        if s["method"] == "dense":
            ax.axhline(100 * s["test_acc_mean"], color="k", lw=1, label="dense, trained")
    ax.set_xlabel("k (fraction of each layer kept)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"supermasks on frozen random weights (width x{widths[0]:g})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, where / "accuracy_vs_k.png"))
    if len(widths) > 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for method, of in _series(summary):
            best = []
            for w in widths:
                here = [s for s in summary if s["width"] == w and (s["method"], s["baseline_of"]) == (method, of)]
                if here:
                    best.append((w, max(here, key=lambda s: s["test_acc_mean"])))
            name = f"random ({of})" if of else method
            ax.errorbar(
                [w for w, _ in best],
                [100 * s["test_acc_mean"] for _, s in best],
                yerr=[_err(s) for _, s in best],
                fmt=STYLES[method],
                capsize=3,
                label=name + ("" if method == "dense" else ", best k"),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths)
        ax.set_xticklabels([f"x{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("width multiplier")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("the best subnetwork as the random network widens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, where / "accuracy_vs_width.png"))
    return paths


def _err(s: dict[str, Any]) -> float:
    return 100 * s["test_acc_std"] if s["n"] > 1 else 0.0


def _series(summary: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (method, baseline_of) lines to draw, in the order of ``STYLES``."""
    found = {(s["method"], s["baseline_of"]) for s in summary}
    return sorted(found, key=lambda mo: (list(STYLES).index(mo[0]), mo[1]))
