"""Summaries of a run: a table of accuracy by density and branch, and a plot (mean +- std over replicates)."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.store import atomic_write_bytes, read_json

BRANCH_ORDER = ("ticket", "reinit", "random_prune")
LABELS = {"ticket": "ticket (rewound)", "reinit": "random re-init", "random_prune": "random pruning"}


def summarize(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> dict[int, dict[str, Any]]:
    """Per level: mean density and, per branch, mean/std/n of ``metric`` over replicates."""
    by_level: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    dens: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        level = int(row["level"])
        by_level[level][row["branch"]].append(float(row[metric]))
        if row["branch"] == "ticket":
            dens[level].append(float(row["density"]))
    out = {}
    for level in sorted(by_level):
        branches = {
            b: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for b, v in by_level[level].items()
        }
        out[level] = {"density": float(np.mean(dens[level])) if dens[level] else float("nan"), "branches": branches}
    return out


def _branches(summary: dict[int, dict[str, Any]]) -> list[str]:
    """The trunk's branches in their order, then any others (``ticketlab branch``) by name."""
    present = {b for s in summary.values() for b in s["branches"]}
    return [b for b in BRANCH_ORDER if b in present] + sorted(present - set(BRANCH_ORDER))


def table(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> str:
    """A plain-text table: level, weights remaining, and each branch's accuracy (mean +- std, in %)."""
    summary = summarize(rows, metric)
    branches = _branches(summary)
    head = ["level", "weights left"] + [LABELS.get(b, b) for b in branches]
    lines = []
    for level, s in summary.items():
        cells = [str(level), f"{100 * s['density']:.2f}%"]
        for b in branches:
            st = s["branches"].get(b)
            if st is None:
                cells.append("-")
            elif st["n"] > 1:
                cells.append(f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f}")
            else:
                cells.append(f"{100 * st['mean']:.2f}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    title = f"test accuracy (%) by weights remaining -- {metric}"
    return "\n".join(
        [title, fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines]
    )


def plot(rows: list[dict[str, Any]], path: Path, metric: str = "final_test_acc", title: str = "") -> Path:
    """Test accuracy vs weights remaining (log x, sparsest on the right), one line per branch, error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = summary.get(0, {}).get("branches", {}).get("ticket")
    for branch in _branches(summary):
        pts = [(100 * s["density"], s["branches"][branch]) for s in summary.values() if branch in s["branches"]]
        if branch != "ticket" and dense is not None:
            pts = [(100.0, dense)] + pts  # every baseline starts from the same dense network
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [100 * p[1]["mean"] for p in pts]
        err = [100 * p[1]["std"] for p in pts]
        ax.errorbar(
            x,
            y,
            yerr=err,
            marker="o",
            ms=4,
            capsize=3,
            label=LABELS.get(branch, branch),
            linestyle="-" if branch == "ticket" else "--",
        )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(f"test accuracy (%) [{metric}]")
    ax.set_title(title or "lottery tickets vs baselines")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ticks = sorted({round(100 * s["density"], 1) for s in summary.values()}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45, fontsize=8)
    ax.minorticks_off()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def report(run_dir: Path, metric: str = "final_test_acc") -> tuple[str, Path]:
    """Table and plot for a run directory, finished or not (rows come from the jobs that completed), or for
    a comparison of criteria."""
    from ticketlab.config import from_dict
    from ticketlab.errors import TicketlabError
    from ticketlab.imp import collect_results

    run_dir = Path(run_dir)
    if (run_dir / "criteria.csv").exists():  # a comparison of criteria (`ticketlab criteria`)
        from ticketlab import comparison
        from ticketlab.store import read_csv

        rows = read_csv(run_dir / "criteria.csv")
        return comparison.table(rows, metric), comparison.plot(rows, run_dir / "criteria.png", metric)
    if not (run_dir / "config.json").exists():
        raise TicketlabError(f"{run_dir} has no config.json: is it a ticketlab run directory?")
    rows = collect_results(run_dir, from_dict(read_json(run_dir / "config.json")["config"]))
    if not rows:
        raise TicketlabError(f"{run_dir}: no job has finished yet")
    return table(rows, metric), plot(rows, run_dir / "plot.png", metric, title=run_dir.name)
