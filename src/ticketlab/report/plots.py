"""Results as plots: accuracy against weights remaining (log x, sparsest on the right), error bars the sample std
of ``report.tables.summarize``. PNGs are written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ticketlab.report.tables import LABELS, SPREAD, Summary, branch_order, criteria_summary, imp_summary
from ticketlab.store import atomic_write_bytes


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend; imported here, not at the top: it takes ~0.5 s and the
    CLI loads this module for commands that only print a table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(s: Summary) -> float:
    """An error bar in %: the sample std, none for a single replicate."""
    return 100 * s.std if s.n > 1 else 0.0


def imp_plot(rows: list[dict[str, Any]], path: Path, metric: str = "final_test_acc", title: str = "") -> Path:
    """Test accuracy vs weights remaining, one line per branch, mean ± sample std over replicates."""
    plt = _pyplot()
    summary = imp_summary(rows, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = summary.get(0, {}).get("branches", {}).get("ticket")
    for branch in branch_order(summary):
        pts = [(100 * s["density"], s["branches"][branch]) for s in summary.values() if branch in s["branches"]]
        if branch != "ticket" and dense is not None:
            pts = [(100.0, dense)] + pts  # every baseline starts from the same dense network
        if not pts:
            continue
        ax.errorbar(
            [p[0] for p in pts],
            [100 * p[1].mean for p in pts],
            yerr=[_err(p[1]) for p in pts],
            marker="o",
            ms=4,
            capsize=3,
            label=LABELS.get(branch, branch),
            linestyle="-" if branch == "ticket" else "--",
        )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(f"test accuracy (%) [{metric}]\nmean ± {SPREAD}")
    ax.set_title(title or "lottery tickets vs baselines")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ticks = sorted({round(100 * s["density"], 1) for s in summary.values()}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45, fontsize=8)
    ax.minorticks_off()
    return save_figure(fig, path)


def criteria_plot(rows: list[dict[str, Any]], path: Path, metric: str = "final_test_acc") -> Path:
    """Accuracy against density, one line per criterion (dashed: pruned at initialisation), the dense network
    dotted."""
    plt = _pyplot()
    summary = criteria_summary(rows, metric)
    modes = {row["criterion"]: row["mode"] for row in rows}
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors  # 14 criteria: the default 10-colour cycle would repeat
    for i, (criterion, by_density) in enumerate(summary.items()):
        if criterion == "dense":
            ax.axhline(100 * by_density[1.0].mean, color="k", linestyle=":", label="dense")
            continue
        ds = sorted(by_density, reverse=True)
        ax.errorbar(
            [100 * d for d in ds],
            [100 * by_density[d].mean for d in ds],
            yerr=[_err(by_density[d]) for d in ds],
            marker="o",
            ms=3,
            capsize=2,
            label=criterion,
            color=colors[i % len(colors)],
            linestyle="--" if modes[criterion] == "at-init" else "-",
        )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({100 * d for s in summary.values() for d in s if d < 1}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(f"test accuracy (%) [{metric}]\nmean ± {SPREAD}")
    ax.set_title("pruning criteria compared (dashed: scored at initialisation)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
