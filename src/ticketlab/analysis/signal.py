"""Signal propagation in a (masked) network at initialisation: the ReLU mean-field recursion of the pre-activation
variance, and what one forward and backward pass measures layer by layer (issue 17, item 1; LITERATURE.md section 9).

Mean-field theory (Poole et al. 2016; Schoenholz et al. 2017; He et al. 2015 for ReLU): a layer ``h = W x`` whose
weights are drawn with variance ``sigma_w^2 / fan_in`` and of which a share ``d`` (its density, ``1 - s``) is kept
multiplies the second moment of its input by ``d sigma_w^2``; a ReLU halves the second moment of a zero-mean
symmetric pre-activation. Hence ``q_{l+1} = d_{l+1} sigma_w^2 q_l / 2``: with He init (``sigma_w^2 = 2``) the dense
variance is constant with depth and each sparse layer multiplies it by its density, so a uniformly sparse deep
network loses its signal geometrically.

:func:`signal` runs this on an IMP run: each level's ticket (its mask on its rewind-point weights) and a random mask
of the same per-layer densities on the same weights, against the prediction anchored at the dense network's first
layer; ``signal.csv`` in the run directory (:data:`COLUMNS`). With ``sparse_aware=True`` both masks are measured at
sparsity-aware scale (:func:`ticketlab.models.sparse_aware`), against the flat prediction, in
``signal_sparse_aware.csv``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.config import ExperimentConfig
from ticketlab.data import batches, load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.models import sparse_aware as rescaled
from ticketlab.problem import Problem, registry_problem
from ticketlab.prunable import forward_order, owner_name
from ticketlab.pruning.topk import random_mask
from ticketlab.report.plots import pyplot, save_figure
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import load_tensors, write_csv
from ticketlab.training.objectives import CLASSIFICATION, Objective

__all__ = [
    "COLUMNS",
    "SIGNAL_CSV",
    "SIGNAL_SPARSE_AWARE_CSV",
    "mean_field",
    "propagation",
    "signal",
    "signal_figure",
    "signal_table",
]

SIGNAL_CSV = "signal.csv"
SIGNAL_SPARSE_AWARE_CSV = "signal_sparse_aware.csv"  # the same columns, both masks at sparsity-aware scale
COLUMNS = [
    "replicate",
    "level",
    "layer",
    "density",
    "variance_ticket",
    "variance_random",
    "mean_field",
    "grad_norm_ticket",
    "grad_norm_random",
]


def mean_field(q0: float, densities: list[float], sigma_w2: float = 2.0) -> list[float]:
    """The mean-field pre-activation variance of each layer of a ReLU network whose layers keep ``densities``.

    Convention: layers are numbered 1..L in forward order; ``q_l`` is the second moment E[h_l^2] of layer l's
    output (its pre-activation, before the ReLU) over inputs and weights; ``q0`` is the first layer's ``q`` in the
    *dense* network (every weight kept; it already holds ``sigma_w^2`` and the input's second moment). Then

        q_1 = d_1 q0,        q_{l+1} = d_{l+1} sigma_w^2 q_l / 2   (d_l = 1 - s_l, the density of layer l),

    the first layer being linear in its input and every later one seeing a ReLU of the previous pre-activation.
    Sparsity-aware init (:func:`ticketlab.models.sparse_aware`) draws layer l with ``sigma_w^2 / d_l``, which cancels
    ``d_l`` in both lines: ``q_l = q0`` for every layer, i.e. ``mean_field(q0, [1.0] * L)`` (an empty layer, d = 0,
    still zeroes every later one: give it density 0).
    Returns ``[q_1, ..., q_L]`` (one per density). TicketlabError when a density is outside [0, 1] or
    ``sigma_w2`` / ``q0`` is negative."""
    if q0 < 0 or sigma_w2 < 0:
        raise TicketlabError(f"mean_field: q0 ({q0}) and sigma_w2 ({sigma_w2}) must be >= 0")
    bad = [d for d in densities if not 0.0 <= d <= 1.0]
    if bad:
        raise TicketlabError(f"mean_field: densities {bad} are outside [0, 1]; give kept shares, e.g. 0.25")
    out: list[float] = []
    for i, d in enumerate(densities):
        out.append(d * q0 if i == 0 else d * sigma_w2 * out[-1] / 2)
    return out


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for o in output:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def propagation(
    model: nn.Module,
    mask: M.Mask,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    objective: Objective | None = None,
) -> list[dict[str, Any]]:
    """One forward and backward pass of ``model`` with ``mask`` applied, on the batch ``inputs`` (B, ...) with
    ``targets`` (B,) under ``objective`` (default: classification cross-entropy), on a copy: the caller's model,
    its weights and its BatchNorm statistics are unchanged. The copy runs in train mode (as training's first step).

    Returns one row per weight of ``mask`` whose module is called on the batch, in forward order
    (:func:`ticketlab.prunable.forward_order`): ``layer`` (the weight's name), ``density`` (kept share),
    ``variance`` (the mean of h^2 over the batch and every output unit/position of the module: the variance about
    zero that mean-field theory's q is, see :func:`mean_field`) and ``grad_norm`` (the L2 norm of the loss gradient
    w.r.t. the weight, over the kept weights: the step training takes). TicketlabError when the mask names a
    tensor the model lacks or gives one another shape."""
    objective = objective or CLASSIFICATION
    net = copy.deepcopy(model)
    params = dict(net.named_parameters())
    missing = sorted(set(mask) - set(params))
    if missing:
        raise TicketlabError(f"propagation: the mask names {missing[:3]}, which the model lacks; give its own mask")
    wrong = [n for n in mask if tuple(mask[n].shape) != tuple(params[n].shape)]
    if wrong:
        n = wrong[0]
        raise TicketlabError(
            f"propagation: mask[{n!r}] has shape {tuple(mask[n].shape)}, the weight {tuple(params[n].shape)}; "
            "give the model's own mask"
        )
    M.apply_mask(net, mask)
    names = forward_order(net, list(mask), inputs)
    modules = dict(net.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            out = _first_tensor(output)
            if out is not None and name not in seen:  # the first call (a module used twice: its first use)
                seen[name] = out.detach().float().pow(2).mean()

        return record

    handles = [modules[owner_name(net, n)].register_forward_hook(hook(n)) for n in names]
    try:
        net.train()
        net.zero_grad(set_to_none=True)
        loss = objective.loss(net(inputs), targets)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    rows = []
    for n in names:
        if n not in seen:
            continue
        keep = mask[n].to(params[n].device, torch.bool)
        grad = params[n].grad
        gnorm = float((grad * keep).norm()) if grad is not None else math.nan
        rows.append({"layer": n, "density": float(keep.float().mean()), "variance": float(seen[n]), "grad_norm": gnorm})
    return rows


def signal(
    run_dir: str | Path | RunDir,
    *,
    levels: list[int] | None = None,
    replicates: list[int] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    sparse_aware: bool = False,
) -> list[dict[str, Any]]:
    """Signal propagation of the IMP run ``run_dir``'s tickets at their rewind point, per replicate of
    ``replicates`` (default: every replicate), per level of ``levels`` (default: every pruned level finished in
    every replicate) and per prunable layer: the measured variance (:func:`propagation`) of the ticket and of a
    random mask with the same per-layer densities on the same weights, the mean-field prediction
    (:func:`mean_field`, ``sigma_w^2 = 2``, anchored at the replicate's dense network's first-layer variance at the
    rewind point) and both gradient norms; on the replicate's first training batch (``batch_size`` examples;
    default: the run's). Writes ``signal.csv`` (:data:`COLUMNS`) and its plot ``signal.png`` (:func:`signal_figure`)
    into the run directory; returns the rows.
    ``sparse_aware``: both masks' weights scaled by 1/sqrt(layer density) first (:func:`ticketlab.models.sparse_aware`)
    and the flat mean-field prediction q_l = q0; ``signal_sparse_aware.csv`` and ``.png`` instead (``signal.csv`` is
    untouched). TicketlabError (one line) when a level or replicate asked for has not finished."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if "weights" in run.saved() or "early_bird" in run.saved():
        raise TicketlabError(f"{run.path}: --signal needs an IMP run of a registered model")
    cfg = run.config()
    if sparse_aware and cfg.prune.units != "none":  # as branch --init sparse_aware refuses it
        raise TicketlabError(f"{run.path}: --sparse-aware scales weights by layer density; not for a --units run")
    replicates = list(range(cfg.imp.replicates)) if replicates is None else sorted(set(replicates))
    done = sorted(set.intersection(*(set(run.finished_levels(cfg, r)) for r in replicates))) if replicates else []
    if levels is None:
        levels = done
    missing = [lv for lv in levels if lv not in done]
    if missing or not levels:
        raise TicketlabError(
            f"--levels: level(s) {missing or levels} of replicate(s) {replicates} in {run.path} have not finished "
            f"(finished in all: {done or 'none'}); pass --levels among the finished ones"
        )
    dev = resolve_device(device)
    problem = registry_problem(cfg, load_configured(cfg.data, dev))
    rows = []
    for replicate in replicates:
        rows += _replicate_rows(run, cfg, problem, replicate, sorted(set(levels)), batch_size, sparse_aware)
    name = SIGNAL_SPARSE_AWARE_CSV if sparse_aware else SIGNAL_CSV
    write_csv(run.path / name, rows, COLUMNS)
    save_figure(signal_figure(rows, sparse_aware), (run.path / name).with_suffix(".png"))
    return rows


def _replicate_rows(
    run: RunDir,
    cfg: ExperimentConfig,
    problem: Problem,
    replicate: int,
    levels: list[int],
    batch_size: int | None,
    sparse_aware: bool,
) -> list[dict[str, Any]]:
    """:func:`signal`'s rows of one replicate."""
    dev = problem.data.train.x.device
    objective = problem.data.objective or CLASSIFICATION
    size = batch_size or cfg.train.batch_size
    seed = derive_seed(cfg.imp.seed, replicate, "data")  # the trunk's data order: its first batch
    _, x, y = next(batches(problem.data.train, min(size, len(problem.data.train)), seed, 0, 1))
    model = problem.init_model(replicate)  # the dense network at the rewind point (theta_k; theta_0 when k = 0)
    dense = run.ticket(0, replicate, dev)
    record = run.finished(run.job(replicate, 0, "ticket"), quiet=True, repair=False) or {}
    rewind = run.level(replicate, 0).rewind
    digest = record.get("files", {}).get(run.rel(rewind))
    model.load_state_dict(load_tensors(rewind, dev, sha256=digest) if rewind.exists() else dense.state)
    full = {n: torch.ones_like(m) for n, m in dense.mask.items()}
    q0 = propagation(model, full, x, y, objective)[0]["variance"]
    net = problem.init_model(replicate)
    rows = []
    for level in levels:
        ticket = run.ticket(level, replicate, dev)
        ticket.load_into(net)  # the weights the ticket trains from
        # the random mask keeps as many weights per layer, on the dense rewind-point weights
        other = random_mask(
            ticket.mask, derive_seed(cfg.imp.seed, replicate, level, "signal"), [(n,) for n in ticket.mask]
        )
        rnd = model
        if sparse_aware:  # both at sparsity-aware scale; the prediction is flat (an empty layer still cuts it)
            net.load_state_dict(rescaled(net.state_dict(), ticket.mask))
            rnd = copy.deepcopy(model)
            rnd.load_state_dict(rescaled(model.state_dict(), other))
        mine, theirs = propagation(net, ticket.mask, x, y, objective), propagation(rnd, other, x, y, objective)
        kept = [(1.0 if r["density"] > 0 else 0.0) if sparse_aware else r["density"] for r in mine]
        predicted = mean_field(q0, kept)
        by_layer = {r["layer"]: r for r in theirs}
        for r, q in zip(mine, predicted):
            rnd = by_layer.get(r["layer"], {})
            rows.append(
                {
                    "replicate": replicate,
                    "level": level,
                    "layer": r["layer"],
                    "density": r["density"],
                    "variance_ticket": r["variance"],
                    "variance_random": rnd.get("variance"),
                    "mean_field": q,
                    "grad_norm_ticket": r["grad_norm"],
                    "grad_norm_random": rnd.get("grad_norm"),
                }
            )
    return rows


def _means(rows: list[dict[str, Any]], level: int) -> list[dict[str, Any]]:
    """Level ``level``'s rows averaged over replicates, layer by layer (forward order), with ``n``."""
    layers: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["level"] == level:
            layers.setdefault(r["layer"], []).append(r)
    out = []
    for layer, group in layers.items():
        mean = {"layer": layer, "n": len(group)}
        for key in COLUMNS[3:]:
            values = [float(r[key]) for r in group if r[key] is not None]
            mean[key] = sum(values) / len(values) if values else None
        out.append(mean)
    return out


def signal_table(rows: list[dict[str, Any]]) -> str:
    """One table per level: layer, density, measured variance (ticket, random), mean-field prediction, gradient
    norms (ticket, random), each the mean over the replicates (n in the title)."""
    head = ["layer", "density %", "var ticket", "var random", "mean-field", "|grad| ticket", "|grad| random"]
    parts = []

    def g(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    for level in sorted({r["level"] for r in rows}):
        means = _means(rows, level)
        lines = [
            [r["layer"], f"{100 * r['density']:.1f}", g(r["variance_ticket"]), g(r["variance_random"])]
            + [g(r["mean_field"]), g(r["grad_norm_ticket"]), g(r["grad_norm_random"])]
            for r in means
        ]
        widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        body = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines]
        n = min(r["n"] for r in means)
        title = f"Signal propagation at the rewind point, level {level} (mean over n={n} replicates)"
        parts.append("\n".join([title, *body]))
    return "\n\n".join(parts)


def signal_figure(rows: list[dict[str, Any]], sparse_aware: bool = False) -> Any:
    """Pre-activation variance (log scale) against depth, one panel per level: the ticket and the random mask
    (mean over replicates) and the mean-field prediction. A matplotlib Figure."""
    plt = pyplot()
    levels = sorted({r["level"] for r in rows})
    cols = min(4, len(levels))
    fig, axes = plt.subplots(
        -(-len(levels) // cols), cols, figsize=(3.2 * cols, 2.8 * -(-len(levels) // cols)), squeeze=False
    )
    for ax, level in zip(axes.flat, levels):
        means = _means(rows, level)
        depth = list(range(1, len(means) + 1))
        for key, label, style in (
            ("variance_ticket", "ticket", "o-"),
            ("variance_random", "random mask", "s-"),
            ("mean_field", "mean field", "k--"),
        ):
            ys = [r[key] if r[key] and r[key] > 0 else float("nan") for r in means]
            ax.plot(depth, ys, style, label=label, markersize=3)
        ax.set_yscale("log")
        ax.set_title(f"level {level}: {100 * means[0]['density']:.3g}% (layer 1)", fontsize=9)
        ax.set_xlabel("layer")
    for ax in list(axes.flat)[len(levels) :]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("pre-activation variance")
    axes.flat[0].legend(fontsize=7)
    init = "sparse-aware init (kept weights x 1/sqrt(density))" if sparse_aware else "as initialised"
    fig.suptitle(f"Signal propagation at the rewind point, {init}", fontsize=10)
    fig.tight_layout()
    return fig
