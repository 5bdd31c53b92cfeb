"""Results as plots: accuracy against weights remaining (log x, sparsest on the right), error bars the sample std
of ``report.tables.summarize``. PNGs are written atomically."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from ticketlab.report.tables import LABELS, SPREAD, Summary, branch_order, criteria_summary, imp_summary
from ticketlab.store import atomic_write_bytes


def pyplot():
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
    """Test accuracy vs weights remaining, one line per branch, mean ± sample std over replicates, as a PNG."""
    return save_figure(imp_figure(rows, metric, title), path)


def _density_axis(ax, summary: dict[int, dict[str, Any]]) -> None:
    """Log x in weights remaining (%), 100% on the left, a tick at each level's density."""
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.grid(True, which="both", alpha=0.3)
    ticks = sorted({round(100 * s["density"], 1) for s in summary.values()}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45, fontsize=8)
    ax.minorticks_off()


def imp_figure(rows: list[dict[str, Any]], metric: str = "final_test_acc", title: str = "", bands: bool = False):
    """The figure of :func:`imp_plot` (a matplotlib Figure); ``bands``: the sample std as a shaded band (as in the
    LTH paper) rather than error bars."""
    plt = pyplot()
    summary = imp_summary(rows, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = summary.get(0, {}).get("branches", {}).get("ticket")
    for branch in branch_order(summary):
        pts = [(100 * s["density"], s["branches"][branch]) for s in summary.values() if branch in s["branches"]]
        if branch != "ticket" and dense is not None:
            pts = [(100.0, dense)] + pts  # every baseline starts from the same dense network
        if not pts:
            continue
        xs, ys, errs = [p[0] for p in pts], [100 * p[1].mean for p in pts], [_err(p[1]) for p in pts]
        style = {"marker": "o", "ms": 4, "label": LABELS.get(branch, branch)}
        style["linestyle"] = "-" if branch == "ticket" else "--"
        if bands:
            (line,) = ax.plot(xs, ys, **style)
            lo, hi = [y - e for y, e in zip(ys, errs)], [y + e for y, e in zip(ys, errs)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            ax.errorbar(xs, ys, yerr=errs, capsize=3, **style)
    _density_axis(ax, summary)
    ax.set_ylabel(f"test accuracy (%) [{metric}]\nmean ± {SPREAD}")
    ax.set_title(title or "lottery tickets vs baselines")
    ax.legend()
    return fig


def criteria_plot(rows: list[dict[str, Any]], path: Path, metric: str = "final_test_acc") -> Path:
    """Accuracy against density, one line per criterion (dashed: pruned at initialisation), the dense network
    dotted, as a PNG."""
    return save_figure(criteria_figure(rows, metric), path)


def criteria_figure(rows: list[dict[str, Any]], metric: str = "final_test_acc"):
    """The figure of :func:`criteria_plot` (a matplotlib Figure)."""
    plt = pyplot()
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
    return fig


def early_stop_figure(rows: list[dict[str, Any]], title: str = ""):
    """Early-stop iteration (the step of the lowest validation loss, else test loss) vs weights remaining, one
    line per branch, mean ± sample std over replicates as a band; None when no row records it."""
    rows = [r for r in rows if r.get("early_stop_step") not in (None, "")]
    if not rows:
        return None
    plt = pyplot()
    summary = imp_summary(rows, "early_stop_step")
    fig, ax = plt.subplots(figsize=(7, 4))
    for branch in branch_order(summary):
        pts = [(100 * s["density"], s["branches"][branch]) for s in summary.values() if branch in s["branches"]]
        xs, ys = [p[0] for p in pts], [p[1].mean for p in pts]
        errs = [p[1].std if p[1].n > 1 else 0.0 for p in pts]
        ls = "-" if branch == "ticket" else "--"
        (line,) = ax.plot(xs, ys, marker="o", ms=4, linestyle=ls, label=LABELS.get(branch, branch))
        ax.fill_between(xs, [y - e for y, e in zip(ys, errs)], [y + e for y, e in zip(ys, errs)],
                        color=line.get_color(), alpha=0.2, linewidth=0)  # fmt: skip
    _density_axis(ax, summary)
    ax.set_ylabel(f"early-stop iteration\nmean ± {SPREAD}")
    ax.set_title(title or "early-stop iteration")
    ax.legend()
    return fig


def curves_figure(curves: dict[int, dict[str, list[tuple[int, float]]]], densities: dict[int, float]):
    """Test accuracy and test loss vs step, one line per level (``curves[level][key]``: (step, value) pairs,
    already averaged over replicates), coloured from dense (dark) to sparsest (light)."""
    plt = pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    cmap = plt.get_cmap("viridis")
    levels = sorted(curves)
    for i, level in enumerate(levels):
        color = cmap(i / max(1, len(levels) - 1))
        label = f"level {level} ({100 * densities.get(level, 1.0):.3g}%)"
        for ax, key in ((acc_ax, "test_acc"), (loss_ax, "test_loss")):
            pts = curves[level].get(key, [])
            if pts:
                scale = 100 if key == "test_acc" else 1
                ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], color=color, label=label, lw=1.2)
    acc_ax.set_ylabel("test accuracy (%)")
    loss_ax.set_ylabel("test loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("training step (iterations)")
        ax.grid(True, alpha=0.3)
    acc_ax.legend(fontsize=7, ncol=2)
    fig.suptitle("ticket training curves per level (mean over replicates)")
    return fig


def density_heatmap(densities: dict[int, dict[str, float]]):
    """Per-layer density (%) of the ticket at each level: levels down, layers across, each cell labelled."""
    plt = pyplot()
    levels = sorted(densities)
    layers = list(dict.fromkeys(name for lv in levels for name in densities[lv]))
    grid = [[100 * densities[lv].get(name, float("nan")) for name in layers] for lv in levels]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(layers) + 2), max(3, 0.35 * len(levels) + 1.5)))
    image = ax.imshow(grid, aspect="auto", cmap="magma", vmin=0, vmax=100)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(levels)))
    ax.set_yticklabels([f"level {lv}" for lv in levels], fontsize=8)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color="w" if value < 50 else "k")
    fig.colorbar(image, ax=ax, label="weights remaining (%)")
    ax.set_title("per-layer density of the ticket (replicate 0)")
    return fig


def figure_svg(fig) -> str:
    """A matplotlib figure as an inline ``<svg>`` element (no XML prologue, text as paths: no fonts needed), and
    close it; its RDF metadata block is dropped. Ids are salted with a fixed string: one figure, one text."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": "ticketlab", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], count=1, flags=re.S)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
