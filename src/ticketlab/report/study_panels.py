"""HTML report panels for the studies of a run (issue 14): stability to SGD noise and barriers between levels
(``ticketlab stability``), alignment by permutation and mask transport (``ticketlab align``), and early-bird tickets
(``ticketlab early-bird``). Each reads the CSV its command writes in the run directory and is absent without it;
they join the page through :func:`ticketlab.report.html.panel` when this module is imported (``import ticketlab``
does).

Errors in the CSVs are fractions; the panels show percentage points. Spread is the sample std (ddof=1) over the
rows of a group, with n beside it.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ticketlab.report.html import html_table, panel
from ticketlab.report.plots import figure_svg, pyplot
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv


def _csv(run: RunDir, name: str) -> list[dict[str, Any]]:
    path = run.path / name
    return read_csv(path) if path.exists() else []


def _mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (sample std, ddof=1; the mean alone for one value)."""
    v = np.array([float(x) for x in values if x not in ("", "nan")]) * scale
    if v.size == 0:
        return "-"
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def _grouped(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _sorted_groups(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    """:func:`_grouped`, in numeric order of the keys (levels and steps are numbers in the CSVs)."""

    def order(item: tuple[tuple, list]) -> tuple:
        return tuple(float(v) if str(v).lstrip("-").replace(".", "", 1).isdigit() else 0.0 for v in item[0]) + item[0]

    return sorted(_grouped(rows, keys).items(), key=order)


def _col(group: list[dict[str, Any]], name: str) -> list[Any]:
    return [r[name] for r in group]


def _ratio(a: Any, b: Any) -> float:
    return float(a) / float(b) if a not in ("", None) and b not in ("", None) and float(b) else float("nan")


def _note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _path_figure(paths: list[dict[str, Any]]) -> str:
    """Test error (%) vs position on the path, mean over replicates, one line per (level, k)."""
    fig, ax = pyplot().subplots(figsize=(6.4, 3.6))
    for (level, k), group in _sorted_groups(paths, ("level", "k")):
        by_alpha = _sorted_groups(group, ("alpha",))
        alphas = [float(a) for (a,), _ in by_alpha]
        means = [100 * np.mean([float(r["test_error"]) for r in at]) for _, at in by_alpha]
        density = 100 * float(group[0]["density"])
        ax.plot(alphas, means, marker=".", label=f"level {level} ({density:.1f}%), k={k}it")
    ax.set_xlabel("position on the line between the two copies (alpha)")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure_svg(fig)


@panel("Stability to SGD noise (ticketlab stability)")
def stability_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    found = _csv(run, "instability.csv")
    if not found:
        return None
    lines = []
    for (level, k), group in _sorted_groups(found, ("level", "k")):
        inst = [float(r["instability"]) for r in group]
        lines.append([
            level, f"{100 * float(group[0]['density']):.2f}", f"{k}it", _mean_std(inst),
            _mean_std(_col(group, "barrier")), len(group), "yes" if np.mean(inst) < 0.02 else "no",
            _mean_std(_col(group, "acc_a")), _mean_std(_col(group, "acc_b")),
        ])  # fmt: skip
    head = ["level", "density %", "k", "instability (points)", "barrier (points)", "n", "stable", "acc A %", "acc B %"]
    parts = [
        _note(
            "Two copies of each level's ticket, started from its mask on the dense weights at step k and trained "
            "with different data orders; instability = the highest test error on the straight line between them "
            "minus the mean of the two ends (Frankle et al. 2020), stable under 2 points."
        ),
        html_table(head, lines, "stability"),
    ]
    paths = _csv(run, "stability.csv")
    if paths:
        parts.append(_path_figure(paths))
    return "".join(parts)


@panel("Error barriers between successive levels (ticketlab stability --between-levels)")
def barrier_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    found = _csv(run, "level_barriers.csv")
    if not found:
        return None
    lines = [
        [f"{a} -> {b}", f"{100 * float(group[0]['density_to']):.2f}", _mean_std([r["barrier"] for r in group]),
         _mean_std([r["acc_drop"] for r in group]), len(group)]
        for (a, b), group in _sorted_groups(found, ("level_from", "level_to"))
    ]  # fmt: skip
    head = ["levels", "density %", "barrier (points)", "accuracy drop vs dense (points)", "n"]
    text = "The error barrier on the line between the trained tickets of levels L and L+1 (Paul et al. 2023)."
    return _note(text) + html_table(head, lines, "barriers")


@panel("Alignment by permutation (ticketlab align)")
def align_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    found, moved = _csv(run, "align.csv"), _csv(run, "transport.csv")
    if not (found or moved):
        return None
    parts = []
    if found:
        lines = [
            [level, how, _mean_std([r["barrier"] for r in group]), _mean_std([r["instability"] for r in group]),
             _mean_std([r["mask_jaccard"] for r in group], 1.0, 3), len(group)]
            for (level, how), group in _sorted_groups(found, ("level", "alignment"))
        ]  # fmt: skip
        head = ["level", "alignment", "barrier (points)", "instability (points)", "mask Jaccard", "n pairs"]
        parts += [
            _note("Between two replicates' trained networks, before and after weight matching (Ainsworth et al. 2023)"),
            html_table(head, lines, "align"),
        ]
    if moved:
        lines = [
            [level, ticket, _mean_std(_col(group, "final_test_acc")), _mean_std(_col(group, "jaccard_own"), 1.0, 3),
             len(group)]
            for (level, ticket), group in _sorted_groups(moved, ("level", "ticket"))
        ]  # fmt: skip
        head = ["level", "mask", "test acc %", "Jaccard with b's own ticket", "n pairs"]
        parts += [
            _note("Mask transport: a's ticket mask carried to b's initialisation through the permutation, "
                  "beside a's plain mask and b's own ticket."),
            html_table(head, lines, "transport"),
        ]  # fmt: skip
    return "".join(parts)


@panel("Early-bird ticket (ticketlab early-bird)")
def early_bird_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    found = _csv(run, "early_bird.csv")
    if not found:
        return None
    columns = list(found[0])
    lines = [[r[c] for c in columns] for r in found]
    summary = [
        ["emergence step (it)", _mean_std([r["emergence_step"] for r in found], 1.0, 0)],
        ["ticket test acc %", _mean_std([r["ticket_test_acc"] for r in found])],
        ["random pruning test acc %", _mean_std([r["random_prune_test_acc"] for r in found])],
        ["IMP ticket test acc % (same density)", _mean_std([r["imp_ticket_test_acc"] for r in found])],
        ["training FLOPs, IMP / early-bird",
         _mean_std([_ratio(r["imp_flops"], r["early_bird_flops"]) for r in found], 1.0)],
    ]  # fmt: skip
    return (
        _note(f"n={len(found)} replicates; IMP compute {found[0]['imp_flops_source']} (You et al. 2020).")
        + html_table(["measure", "mean ± std"], summary, "early-bird")
        + html_table(columns, lines, "early-bird")
    )
