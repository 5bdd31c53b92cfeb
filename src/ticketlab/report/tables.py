"""Results as plain-text tables. Every table and plot summarises replicates with the one ``summarize`` here (mean,
*sample* std, n) and writes them with the one ``mean_std``: over three replicates the population std is 18% low.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

BRANCH_ORDER = ("ticket", "reinit", "random_prune")
LABELS = {"ticket": "ticket (rewound)", "reinit": "random re-init", "random_prune": "random pruning"}
SPREAD = "sample std (ddof=1)"


@dataclass(frozen=True)
class Summary:
    """Replicates of one cell: their mean, sample standard deviation (ddof=1; nan for a single value) and count."""

    mean: float
    std: float
    n: int


def summarize(values: Iterable[float]) -> Summary:
    """Mean, sample std (ddof=1, nan when there is one value) and n of ``values``."""
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size == 0:
        raise ValueError("summarize needs at least one value")
    std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
    return Summary(float(np.mean(v)), std, int(v.size))


def mean_std(s: Summary, scale: float = 100.0) -> str:
    """``64.87 ± 1.14`` (mean ± sample std, times ``scale``: percent by default); the mean alone when n = 1."""
    text = f"{scale * s.mean:.2f}"
    return text if s.n < 2 else f"{text} ± {scale * s.std:.2f}"


def spread_note(ns: Iterable[int]) -> str:
    """What the cells of a table hold, for its header: mean ± sample std and over how many replicates."""
    ns = set(ns)
    if not ns:
        return "no results"
    lo, hi = min(ns), max(ns)
    if hi == 1:
        return "one replicate (n=1), no spread"
    if lo == hi:
        return f"mean ± {SPREAD} over n={hi} replicates"
    return f"mean ± {SPREAD} over n={lo}-{hi} replicates (n varies by cell; shown where below {hi})"


def _cell(s: Summary | None, top: int, scale: float = 100.0) -> str:
    """One table cell: ``-`` when missing, n appended when the cell has fewer replicates than the table's most."""
    if s is None:
        return "-"
    return mean_std(s, scale) + (f" (n={s.n})" if s.n < top else "")


def _layout(title: str, head: list[str], lines: list[list[str]], left: int = 0) -> str:
    """Title, header, rule and rows in columns; the first ``left`` columns aligned left, the rest right."""
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < left else f"{{:>{w}}}" for i, w in enumerate(widths))
    rule = fmt.format(*("-" * w for w in widths))
    return "\n".join([title, fmt.format(*head), rule] + [fmt.format(*c) for c in lines])


def imp_summary(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> dict[int, dict[str, Any]]:
    """Per level: ``density`` (the tickets' mean; the other rows' without a ticket row) and ``branches``, each
    branch's Summary of ``metric``."""
    by_level: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    dens: dict[int, list[float]] = defaultdict(list)
    others: dict[int, list[float]] = defaultdict(list)  # when a level's ticket row is missing (a damaged job)
    for row in rows:
        level = int(row["level"])
        by_level[level][row["branch"]].append(float(row[metric]))
        (dens if row["branch"] == "ticket" else others)[level].append(float(row["density"]))
    return {
        level: {
            "density": float(np.mean(dens[level] or others[level])),
            "branches": {b: summarize(v) for b, v in by_level[level].items()},
        }
        for level in sorted(by_level)
    }


def branch_order(summary: dict[int, dict[str, Any]]) -> list[str]:
    """The trunk's branches in their order, then any others (``ticketlab branch``) by name."""
    present = {b for s in summary.values() for b in s["branches"]}
    return [b for b in BRANCH_ORDER if b in present] + sorted(present - set(BRANCH_ORDER))


def imp_table(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> str:
    """Level, weights remaining, and each branch's test accuracy (%), mean ± sample std over replicates; a language
    model's perplexity (exp of the per-token test loss, lower is better) for ``final_test_ppl`` / ``best_test_ppl``."""
    ppl = metric.endswith("_ppl")
    summary = imp_summary(rows, metric)
    branches = branch_order(summary)
    cells = [s["branches"][b] for s in summary.values() for b in branches if b in s["branches"]]
    top = max((c.n for c in cells), default=1)
    head = ["level", "weights left"] + [LABELS.get(b, b) for b in branches]
    lines = [
        [str(level), f"{100 * s['density']:.2f}%"]
        + [_cell(s["branches"].get(b), top, 1.0 if ppl else 100.0) for b in branches]
        for level, s in summary.items()
    ]
    what = "test perplexity (lower is better)" if ppl else "test accuracy (%)"
    title = f"{what} by weights remaining, {spread_note(c.n for c in cells)} -- {metric}"
    return _layout(title, head, lines)


def imp_tables(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> str:
    """:func:`imp_table` of ``metric``, followed for a language model's run by the same table of its perplexity
    (``final_test_ppl`` for a final metric, ``best_test_ppl`` for an early-stop one)."""
    text = imp_table(rows, metric)
    ppl = metric.replace("_acc", "_ppl")
    if ppl != metric and rows and all(row.get(ppl) not in (None, "") for row in rows):
        text += "\n\n" + imp_table(rows, ppl)
    return text


def criteria_summary(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> dict[str, dict[float, Summary]]:
    """Criterion -> target density -> Summary of ``metric`` over replicates (``dense``: the unpruned network)."""
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        values[row["criterion"]][float(row["target_density"])].append(float(row[metric]))
    return {c: {d: summarize(v) for d, v in by_density.items()} for c, by_density in values.items()}


def criteria_table(rows: list[dict[str, Any]], metric: str = "final_test_acc") -> str:
    """Criteria down, densities across: test accuracy (%), mean ± sample std over replicates; the dense network
    on the line under the title."""
    summary = criteria_summary(rows, metric)
    densities = sorted({d for s in summary.values() for d in s if d < 1}, reverse=True)
    modes = {row["criterion"]: row["mode"] for row in rows}
    top = max((s.n for by_density in summary.values() for s in by_density.values()), default=1)
    head = ["criterion", "mode"] + [f"{100 * d:g}%" for d in densities]
    lines = [
        [criterion, modes[criterion]] + [_cell(by_density.get(d), top) for d in densities]
        for criterion, by_density in summary.items()
        if criterion != "dense"
    ]
    note = spread_note(s.n for by_density in summary.values() for s in by_density.values())
    title = f"test accuracy (%) after pruning once to each density, then training, {note} -- {metric}"
    if "dense" in summary:
        title += f"\ndense network: {_cell(summary['dense'][1.0], top)}"
    return _layout(title, head, lines, left=2)


def disjoint_table(rows: list[dict[str, Any]]) -> str:
    """One line per round of ``ticketlab disjoint`` (one replicate): the share of weights earlier tickets hold,
    the dense network trained without (forbid) or with re-drawn (reinit) them, the ticket, and the weights it
    shares with earlier tickets."""
    head = ["round", "earlier tickets hold", "dense network", "ticket density", "ticket test acc", "overlap"]
    lines = [
        [
            str(int(r["round"])),
            f"{100 * float(r['forbidden']):.2f}%",
            f"{100 * float(r['dense_test_acc']):.2f}%",
            f"{100 * float(r['ticket_density']):.2f}%",
            f"{100 * float(r['ticket_test_acc']):.2f}%",
            str(int(r["overlap"])),
        ]
        for r in rows
    ]
    return _layout(f"disjoint tickets: test accuracy (%), {spread_note([1] if rows else [])}", head, lines)


def cost_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per branch (trunk first): ``jobs``, total ``wall_time_s``, total ``train_flops`` and ``dense_flops`` over
    the ``counted`` jobs that record them (None when none does: runs made before compute accounting), over all
    levels and replicates."""
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        t = totals.setdefault(
            row["branch"], {"jobs": 0, "counted": 0, "wall_time_s": 0.0, "train_flops": None, "dense_flops": None}
        )
        t["jobs"] += 1
        t["counted"] += row.get("train_flops") not in (None, "") and row.get("dense_flops") not in (None, "")
        t["wall_time_s"] += float(row.get("wall_time_s") or 0.0)
        for key in ("train_flops", "dense_flops"):
            if row.get(key) not in (None, ""):
                t[key] = (t[key] or 0) + int(float(row[key]))
    order = [b for b in BRANCH_ORDER if b in totals] + sorted(set(totals) - set(BRANCH_ORDER))
    return {b: totals[b] for b in order}


def _flops(n: float | int | None) -> str:
    return "-" if n is None else f"{n:.3g}"


def cost_table(rows: list[dict[str, Any]]) -> str:
    """What a run cost, per branch: jobs, wall time, and theoretical training FLOPs (kept weights only; the dense
    network's for the same jobs; their ratio), summed over levels and replicates (:mod:`ticketlab.flops`)."""
    summary = cost_summary(rows)
    head = ["branch", "jobs", "wall time (s)", "train FLOPs", "dense FLOPs", "of dense"]
    lines = [
        [
            LABELS.get(b, b),
            str(t["jobs"]) + ("" if t["counted"] in (0, t["jobs"]) else f" ({t['counted']} with FLOPs)"),
            f"{t['wall_time_s']:.1f}",
            _flops(t["train_flops"]),
            _flops(t["dense_flops"]),
            f"{100 * t['train_flops'] / t['dense_flops']:.1f}%" if t["train_flops"] and t["dense_flops"] else "-",
        ]
        for b, t in summary.items()
    ]
    total = sum(t["wall_time_s"] for t in summary.values())
    title = f"cost per branch, all levels and replicates (wall time in all: {total:.1f} s)"
    note = "FLOPs: 3 x forward x examples trained + forward x examples evaluated, 2 per multiply-accumulate"
    if any(t["counted"] != t["jobs"] for t in summary.values()):
        note += "; jobs made before ticketlab recorded FLOPs count in the wall time only"
    note += "\nwall time: a job trained in a batched pass counts its share of the pass (the pass's time / its jobs)"
    return _layout(title, head, lines, left=1) + "\n" + note
