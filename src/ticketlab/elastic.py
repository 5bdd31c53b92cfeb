"""Elastic lottery tickets (Chen et al., NeurIPS 2021, "The Elastic Lottery Ticket Hypothesis"): a ticket found by
IMP on one CIFAR ResNet is stretched to a deeper family member by replicating residual blocks with their masks, or
squeezed to a shallower one by dropping blocks, then trained at the target depth.

The transformation (an Elastic Ticket Transformation, ETT), per stage, source with ``s`` blocks, target with ``t``:

- block 0, the stage's downsampling block, is always kept as it is (Chen et al. never replicate or drop it);
- stretch (t > s): the source's blocks in order, then its non-downsampling blocks 1..s-1 appended again, in order,
  as often as needed (the last ones when they do not divide): s=3, t=5 gives source blocks [0, 1, 2, 1, 2]. A stage
  of one block (ResNet-8) has only block 0 to replicate; a replica of it in stage 2 or 3 has twice the input
  channels and no shortcut, so its ``conv1`` mask is the source's tiled along input channels (same density);
- squeeze (t < s): the first t blocks are kept and the later ones dropped, so squeezing a stretched ticket back
  gives the original one.

Chen et al. compare several orders (replicating / dropping first, last, or spread-out blocks); we could not check
from the sources at hand which one they rank best, so we use the one that keeps the source's block order and
replicates consecutive trailing blocks. The stem ``conv``, the output layer ``fc`` and every shortcut conv are copied.

As in the paper, only the mask is transferred: the weights are the target network's own theta_k -- its seeded
theta_0 (the same one the target depth's own IMP run with the same config starts from), trained densely to the
source run's rewind step k when k > 0 (the dense training replayed, as ``ticketlab branch rewind`` does), theta_0
itself when k = 0. Each (replicate, level) trains the elastic ticket and a random mask at the same per-layer
densities, as resumable jobs in the elastic run's own directory.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab import masks as M
from ticketlab.branches import dense_at
from ticketlab.branches.base import mask_job
from ticketlab.config import ExperimentConfig
from ticketlab.data import load_configured
from ticketlab.device import resolve_device
from ticketlab.errors import TicketlabError
from ticketlab.imp import mask_digest
from ticketlab.jobs import run_jobs
from ticketlab.models.resnet import ResNet
from ticketlab.plan import Plan, make_plan
from ticketlab.problem import Problem, registry_problem, state_of
from ticketlab.pruning import random_mask
from ticketlab.report.tables import Summary, mean_std, summarize
from ticketlab.rundir import RunDir
from ticketlab.seeds import derive_seed
from ticketlab.store import save_tensors, write_csv

RESNET = re.compile(r"resnet(\d+)")
JOBS = ("elastic", "random")  # the two jobs of each (replicate, level)
COLUMNS = ["level", "density", "n", "elastic_acc_mean", "elastic_acc_std", "random_acc_mean", "random_acc_std"]


def resnet_depth(model: str, what: str = "model") -> int:
    """The depth of a CIFAR ResNet name (``resnet32`` -> 32); TicketlabError for any other model."""
    found = RESNET.fullmatch(model)
    if not found or (int(found[1]) - 2) % 6:
        raise TicketlabError(
            f"elastic tickets stretch or squeeze CIFAR ResNets (resnet8/14/20/32/44/56); the {what} is {model!r}"
        )
    return int(found[1])


def block_sources(source_blocks: int, target_blocks: int) -> list[int]:
    """For each block of a target stage, the source block (index within the stage) whose mask it takes.

    >>> block_sources(3, 5), block_sources(5, 3), block_sources(1, 3)
    ([0, 1, 2, 1, 2], [0, 1, 2], [0, 0, 0])
    """
    if source_blocks < 1 or target_blocks < 1:
        raise TicketlabError(f"a ResNet stage has at least one block, not {source_blocks} / {target_blocks}")
    if target_blocks <= source_blocks:  # squeeze: drop the later blocks
        return list(range(target_blocks))
    pool = list(range(1, source_blocks)) or [0]  # block 0 downsamples; replicate it only when it is all there is
    extra = target_blocks - source_blocks
    return list(range(source_blocks)) + (pool * math.ceil(extra / len(pool)))[-extra:]


def transform(mask: M.Mask, source_model: nn.Module, target_model: nn.Module) -> M.Mask:
    """The source ResNet's ``mask`` (name -> bool tensor) moved to ``target_model``'s depth (see the module's rule).

    Returns a mask over the target's tensors that correspond to the source's masked ones, each of its exact shape,
    on the source mask's device. TicketlabError when either model is not a CIFAR ResNet of this package or the two
    differ in anything but depth (width, input channels, class count)."""
    for what, model in (("source", source_model), ("target", target_model)):
        if not isinstance(model, ResNet):
            raise TicketlabError(f"elastic tickets need CIFAR ResNets; the {what} model is a {type(model).__name__}")
    s, t = len(source_model.blocks) // 3, len(target_model.blocks) // 3
    sources = block_sources(s, t)
    src_shapes = {n: p.shape for n, p in source_model.named_parameters()}
    out: M.Mask = {}
    for name, p in target_model.named_parameters():
        parts = name.split(".")
        if parts[0] == "blocks":
            stage, j = divmod(int(parts[1]), t)
            parts[1] = str(stage * s + sources[j])
        src = ".".join(parts)
        if src not in mask:
            continue
        if parts[0] != "blocks" and src_shapes[src] != p.shape:
            raise TicketlabError(
                f"elastic: {name} has shape {tuple(p.shape)} in the target, {tuple(src_shapes[src])} in the source; "
                "the two ResNets must differ only in depth (same width, input and classes)"
            )
        out[name] = _fit(mask[src], p.shape, name)
    return out


def _fit(m: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """``m`` at ``shape``: itself, or tiled along the dimensions that are a whole multiple larger (a replica of a
    downsampling block's ``conv1``, which reads twice the channels in the target), which keeps its density."""
    if m.shape == shape:
        return m.clone()
    if len(m.shape) != len(shape) or any(b % a for a, b in zip(m.shape, shape)):
        raise TicketlabError(f"elastic: cannot fit a mask of shape {tuple(m.shape)} to {name} {tuple(shape)}")
    return m.repeat(*(b // a for a, b in zip(m.shape, shape)))


def elastic(
    source: str | Path,
    to: str,
    *,
    levels: Sequence[int] | None = None,
    against: Sequence[str | Path] = (),
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    batch_jobs: str | int = "auto",
    sparse_kernels: str = "auto",
    tensorboard: str | Path | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Transform the tickets of the finished IMP run ``source`` (every finished level, or ``levels``) to the ResNet
    ``to``, train each beside a random mask at its per-layer densities (resumable jobs), and write ``elastic.csv``
    (one row per level, accuracies mean and sample std over replicates) in a directory under ``out`` (default: the
    source run's parent). ``against``: runs at the target depth (its own IMP run, SNIP / SynFlow at init) whose
    tickets join each row at the nearest density. Returns the directory and the rows."""
    src = RunDir(source)
    if "weights" in src.saved():
        raise TicketlabError(f"{src.path} was run on your own model; elastic tickets need a registered ResNet")
    cfg = src.config()
    resnet_depth(cfg.model.model, "source run's model")
    resnet_depth(to, "--to model")
    if cfg.prune.units != "none":
        raise TicketlabError("elastic tickets move weight masks; the source run prunes whole units (--units)")
    target = cfg.replace(model={"model": to})
    dev = resolve_device(device)
    data = load_configured(cfg.data, dev)
    src_problem, problem = registry_problem(cfg, data), registry_problem(target, data)
    plan = make_plan(target, problem)
    levels = _levels(src, cfg, levels)
    others = [_against_run(path, to, cfg) for path in against]  # checked before anything trains
    key = hashlib.sha256(f"{cfg.run_hash()} {to}".encode()).hexdigest()[:10]
    where = Path(out) if out is not None else src.path.parent
    run = RunDir(where / f"elastic-{cfg.model.model}-to-{to}-{cfg.data.dataset}-{key}")
    with run.lock():
        run.claim(target, {**problem.identity, "elastic_from": cfg.run_hash()})
        jobs = []
        for r in range(cfg.imp.replicates):
            rewind, rewind_sha = _theta_k(run, target, problem, plan, r)
            source_model, target_model = src_problem.init_model(r), problem.init_model(r)
            for level in levels:
                ticket = transform(src.ticket(level, r, dev).mask, source_model, target_model)
                if sorted(ticket) != sorted(plan.names):
                    raise TicketlabError(
                        f"elastic: the transformed ticket masks {sorted(set(ticket) ^ set(plan.names))} differently "
                        f"from what {to} prunes under the source run's settings"
                    )
                seed = derive_seed(cfg.imp.seed, r, level, "elastic random")
                chance = random_mask(ticket, seed, [(n,) for n in sorted(ticket)])
                for name, m in zip(JOBS, (ticket, chance)):
                    inputs = {"mask": mask_digest(m), "rewind": rewind_sha}  # data order: the target's own IMP run's
                    jobs.append(mask_job(run, target, problem, plan, r, level, name, m, rewind, inputs))
        records = run_jobs(
            run, jobs, progress=progress, batch_jobs=batch_jobs, kernels=sparse_kernels, tensorboard=tensorboard
        )
    rows = _rows(records)
    columns = list(COLUMNS)
    for label, table in _labelled(others):
        columns += [f"{label}_density", f"{label}_acc_mean", f"{label}_acc_std", f"{label}_n"]
        for row in rows:
            nearest = min(table, key=lambda lv: abs(table[lv][0] - row["density"]))
            density, acc = table[nearest]
            row.update({f"{label}_density": density, f"{label}_acc_mean": acc.mean, f"{label}_acc_std": acc.std})
            row[f"{label}_n"] = acc.n
    blank = [{k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows]
    write_csv(run.path / "elastic.csv", blank, columns)  # a std of one replicate is left empty, as in sanity.csv
    return run.path, rows


def _levels(src: RunDir, cfg: ExperimentConfig, levels: Sequence[int] | None) -> list[int]:
    finished = src.finished_levels(cfg)
    if levels is None and not finished:
        raise TicketlabError(
            f"{src.path} has no finished pruned level (is it an IMP run?); run the source's `ticketlab imp` further"
        )
    levels = finished if levels is None else sorted(set(levels))  # a level given twice is trained and counted once
    missing = [lv for lv in levels if lv not in finished]
    if missing or not levels:
        raise TicketlabError(
            f"--levels {missing or levels} of {src.path} have not finished (finished: {finished or 'none'}); "
            "run the source's `ticketlab imp` further first"
        )
    return levels


def _theta_k(run: RunDir, cfg: ExperimentConfig, problem: Problem, plan: Plan, r: int) -> tuple[dict, str]:
    """The target network's theta_k for replicate ``r`` and its digest: theta_0 saved in level 0 (with a dense
    mask), and the dense training replayed to k when k > 0."""
    level0 = run.level(r, 0)
    model = problem.init_model(r)
    init_sha = save_tensors(level0.init, state_of(model))  # the same bytes every time: seeded
    M.save_mask(level0.mask, M.full_mask(model, plan.names))
    state = dense_at(run, cfg, problem, r, plan.k, init_sha256=init_sha)
    return state, mask_digest(state)


def _rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per level: the elastic tickets' mean density, and both jobs' accuracy over replicates."""
    rows = []
    for level in sorted({rec["level"] for rec in records}):
        here = {name: [rec for rec in records if rec["level"] == level and rec["branch"] == name] for name in JOBS}
        row: dict[str, Any] = {
            "level": level,
            "density": sum(rec["density"] for rec in here["elastic"]) / len(here["elastic"]),
            "n": len(here["elastic"]),
        }
        for name in JOBS:
            acc = summarize(rec["final_test_acc"] for rec in here[name])
            row[f"{name}_acc_mean"], row[f"{name}_acc_std"] = acc.mean, acc.std
        rows.append(row)
    return rows


def _against_run(path: str | Path, to: str, source: ExperimentConfig) -> tuple[str, dict[int, tuple[float, Summary]]]:
    """A run to compare with: its label (``imp``, or the criterion it pruned at init with) and, per pruned level,
    its tickets' mean density and accuracy summary. TicketlabError unless it is a ``to`` run on the ``source``
    run's data (same data config) at the same width."""
    run = RunDir(path)
    cfg = run.config()
    if cfg.model.model != to:
        raise TicketlabError(f"--against {path} is a {cfg.model.model} run; compare with {to} runs")
    if cfg.data != source.data or cfg.model.width != source.model.width:
        raise TicketlabError(
            f"--against {path} is on other data or at another width ({cfg.data.dataset}, width {cfg.model.width}) "
            f"than the source run ({source.data.dataset}, width {source.model.width}); compare runs of the same setup"
        )
    mode, criterion = cfg.imp.mode, cfg.prune.criterion
    label = "imp" if mode == "iterative" and criterion == "large_final" else criterion
    label = label if mode in ("iterative", "at-init") else f"{label}_{mode.replace('-', '_')}"
    tickets = [row for row in run.rows(quiet=True) if row["branch"] == "ticket" and int(row["level"]) > 0]
    if not tickets:
        raise TicketlabError(f"--against {path} has no finished pruned level")
    table = {}
    for level in sorted({int(row["level"]) for row in tickets}):
        mine = [row for row in tickets if int(row["level"]) == level]
        table[level] = (
            sum(float(row["density"]) for row in mine) / len(mine),
            summarize(row["final_test_acc"] for row in mine),
        )
    return label, table


def _labelled(others: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The runs compared with, their labels made unique (``imp``, ``imp_2``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for label, table in others:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}_{seen[label]}", table))
    return out


def elastic_table(rows: list[dict[str, Any]]) -> str:
    """``elastic.csv`` as text: per level the density and each accuracy as mean ± sample std (ddof=1), in %."""
    labels = [c.removesuffix("_acc_mean") for c in (rows[0] if rows else {}) if c.endswith("_acc_mean")]
    head = ["level", "density", "n", *labels]
    lines = ["  ".join(f"{h:>18}" for h in head)]
    for row in rows:
        cells = [str(row["level"]), f"{100 * row['density']:.2f}%", str(row["n"])]
        for label in labels:
            s = Summary(row[f"{label}_acc_mean"], row[f"{label}_acc_std"], row.get(f"{label}_n", row["n"]))
            near = f" @{100 * row[f'{label}_density']:.1f}%" if f"{label}_density" in row else ""
            cells.append(mean_std(s) + near)
        lines.append("  ".join(f"{c:>18}" for c in cells))
    return (
        "\n".join(lines)
        + "\n(test accuracy %, mean ± sample std (ddof=1) over n replicates; @: the compared run's density)"
    )
