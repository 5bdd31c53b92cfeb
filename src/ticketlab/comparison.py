"""Which weights to keep, compared: every criterion pruned once to each of a few densities, then trained.

Each (criterion, density) is an ordinary resumable run (one level, ``--target-density``) under ``out``; this
module only chooses how each criterion prunes, and gathers the runs' results into one table and one plot.
Criteria scored on the network (SNIP, GraSP, SynFlow) prune at initialisation; the after-training criteria
prune the trained dense network once and rewind (one-shot), as they need its final weights.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab import scores as S
from ticketlab.config import ExperimentConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import write_csv

MODES = ("auto", "at-init", "one-shot")
COLUMNS = ["criterion", "mode", "target_density", "density", "replicate", "final_test_acc", "best_test_acc"]


def mode_of(criterion: str, mode: str) -> str:
    """How ``criterion`` prunes in the comparison: ``mode``, or by its kind when ``auto``."""
    if mode not in MODES:
        raise TicketlabError(f"unknown mode {mode!r}; use {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "at-init" if S.get(criterion).at_init_default else "one-shot"


def configs(base: ExperimentConfig, criteria: list[str], densities: list[float], mode: str = "auto"):
    """The run of each (criterion, density): one level, no baselines (``random`` is among the criteria)."""
    bad = [c for c in criteria if c not in S.names()]
    if bad:
        raise TicketlabError(f"unknown criteria {bad}; known: {', '.join(S.names())}")
    if not criteria or not densities:
        raise TicketlabError("give at least one criterion and one density")
    if base.prune.units != "none":
        raise TicketlabError("ticketlab criteria compares weight-pruning criteria; drop --units")
    if any(not 0 < d < 1 for d in densities):
        raise TicketlabError(f"densities must be in (0, 1), got {densities}")
    out = []
    for c in criteria:
        how = mode_of(c, mode)
        S.get(c, at_init=how == "at-init")
        for d in densities:
            imp = {"one_shot": how == "one-shot", "at_init": how == "at-init", "target_density": d, "baselines": ()}
            out.append((c, how, d, base.replace(prune={"criterion": c}, imp=imp)))
    return out


def compare(
    base: ExperimentConfig,
    criteria: list[str],
    densities: list[float],
    *,
    mode: str = "auto",
    out: str | Path = "runs",
    device: str = "auto",
    progress: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) every (criterion, density) and write ``criteria.csv`` and ``criteria.png`` into a
    directory named by the comparison; return it and the rows."""
    from ticketlab.imp import imp

    plan = configs(base, criteria, densities, mode)
    key = json.dumps([base.run_hash(), criteria, densities, mode])
    where = (
        Path(out) / f"criteria-{base.model.model}-{base.data.dataset}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    )
    rows: list[dict[str, Any]] = []
    for criterion, how, target, cfg in plan:
        _, run_rows = imp(cfg, out=out, device=device, progress=progress)
        for row in run_rows:
            if row["level"] == 1:
                rows.append({"criterion": criterion, "mode": how, "target_density": target, **row})
            elif criterion == plan[0][0] and target == plan[0][2]:
                rows.append({"criterion": "dense", "mode": "-", "target_density": 1.0, **row})
    write_csv(where / "criteria.csv", rows, COLUMNS)
    plot(rows, where / "criteria.png")
    return where, rows


def summarize(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> dict[str, dict[float, list[float]]]:
    """criterion -> target density -> the metric over replicates."""
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        out[row["criterion"]][float(row["target_density"])].append(float(row[metric]))
    return out


def table(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> str:
    """Criteria down, densities across: test accuracy (%), mean ± std over replicates."""
    summary = summarize(rows, metric)
    densities = sorted({d for s in summary.values() for d in s if d < 1}, reverse=True)
    modes = {row["criterion"]: row["mode"] for row in rows}
    head = ["criterion", "mode"] + [f"{100 * d:g}%" for d in densities]
    lines = []
    for criterion, by_density in summary.items():
        if criterion == "dense":
            continue
        cells = [criterion, modes[criterion]]
        for d in densities:
            v = by_density.get(d)
            cells.append(
                "-" if not v else f"{100 * np.mean(v):.2f}" + (f" ± {100 * np.std(v):.2f}" if len(v) > 1 else "")
            )
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = f"test accuracy (%) after pruning once to each density, then training -- {metric}"
    if "dense" in summary:
        v = summary["dense"][1.0]
        title += f"\ndense network: {100 * np.mean(v):.2f}" + (f" ± {100 * np.std(v):.2f}" if len(v) > 1 else "")
    return "\n".join(
        [title, fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines]
    )


def plot(rows: list[dict[str, Any]], path: Path, metric: str = "final_test_acc") -> Path:
    """Accuracy against density (log x, sparsest right), one line per criterion, the dense network dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows, metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors  # 14 criteria: the default 10-colour cycle would repeat
    for i, (criterion, by_density) in enumerate(summary.items()):
        if criterion == "dense":
            ax.axhline(100 * np.mean(by_density[1.0]), color="k", linestyle=":", label="dense")
            continue
        ds = sorted(by_density, reverse=True)
        ax.errorbar(
            [100 * d for d in ds],
            [100 * np.mean(by_density[d]) for d in ds],
            yerr=[100 * np.std(by_density[d]) for d in ds],
            marker="o",
            ms=3,
            capsize=2,
            label=criterion,
            color=colors[i % len(colors)],
            linestyle="--" if S.get(criterion).at_init_default else "-",
        )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({100 * d for s in summary.values() for d in s if d < 1}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(f"test accuracy (%) [{metric}]")
    ax.set_title("pruning criteria compared (dashed: scored at initialisation)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    from ticketlab.report import save_figure

    return save_figure(fig, path)
