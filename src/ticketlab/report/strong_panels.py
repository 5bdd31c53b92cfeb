"""Reports of a supermask run (``ticketlab supermask``, issue 15): its HTML panel and its text report.

A supermask run is told by the ``supermask`` key of its saved identity (``config.json``). Its jobs
(``replicate_R/level_00/METHOD-kK-wW/``, ``dense-wW/``) are not IMP levels and branches, so the IMP panels get no
rows for it (:func:`ticketlab.report.html.render`); this module reads its ``results.csv`` instead (one row per width,
replicate, method and k: :data:`ticketlab.supermask_run.COLUMNS`) and summarises it with
:func:`ticketlab.supermask_run.summarize_rows` (mean ± sample std, ddof=1, over replicates), the same summary the
command printed and wrote to ``summary.csv``. Importing this module (``import ticketlab`` does) adds the panel to the
page and the text report to :data:`ticketlab.report.REPORTERS`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ticketlab import supermask_run as SR
from ticketlab.errors import TicketlabError
from ticketlab.report import REPORTERS
from ticketlab.report.html import PANELS, html_table, inline_png, panel
from ticketlab.report.tables import SPREAD
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv

FLOATS = ("width", "k", "density", "final_test_acc", "best_test_acc", "test_acc_expected", "train_acc", "wall_time_s")


def supermask_options(run: RunDir) -> dict[str, Any] | None:
    """The supermask options saved in the run's identity (methods, ks, weights, widths, ...); None when ``run`` is
    not a supermask run (or has no readable ``config.json``)."""
    try:
        options = run.saved().get("supermask")
    except TicketlabError:
        return None
    return options if isinstance(options, dict) else None


def supermask_rows(run: RunDir) -> list[dict[str, Any]]:
    """The rows of the run's ``results.csv`` (:data:`ticketlab.supermask_run.COLUMNS`) with their numbers as
    numbers (an empty cell: None), as :func:`ticketlab.supermask_run.supermask_run` returned them; [] without the
    file."""
    if not run.results_file.exists():
        return []
    rows = []
    for raw in read_csv(run.results_file):
        row: dict[str, Any] = dict(raw)
        for key in FLOATS:
            row[key] = float(raw[key]) if raw.get(key) not in (None, "") else None
        row["replicate"] = int(raw["replicate"])
        row["train_flops"] = int(float(raw["train_flops"])) if raw.get("train_flops") not in (None, "") else None
        rows.append(row)
    return rows


def supermask_report(run_dir: Path, metric: str = "final_test_acc") -> tuple[str, Path] | None:
    """``ticketlab report`` of a supermask run: the text table of :func:`ticketlab.supermask_run.table` and the
    accuracy-vs-k plot, redrawn (with accuracy vs width when there are several widths); None for any other
    directory. TicketlabError when no job has finished or for ``metric`` other than final test accuracy (the random
    masks are evaluated once, at the end: they have no best)."""
    run = RunDir(Path(run_dir))
    if not run.config_file.exists() or supermask_options(run) is None:
        return None
    if metric != "final_test_acc":
        raise TicketlabError(f"--metric {metric}: a supermask run reports final test accuracy; drop --metric")
    rows = supermask_rows(run)
    if not rows:
        raise TicketlabError(f"{run.path}: no results.csv yet; run the same `ticketlab supermask` command to finish it")
    summary = SR.summarize_rows(rows)
    return SR.table(summary), SR.plot(summary, run.path)[0]


REPORTERS.append(supermask_report)


def _pct(value: float | None, std: float | None = None, n: int = 1) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if n > 1 and std is not None else "")


def _what_ran(options: dict[str, Any], replicates: Any) -> str:
    extras = [
        what
        for what, on in (("rescaled (zhou)", options.get("rescale")), ("binary activations (biprop)",
                                                                      options.get("binary_activations")))
        if on
    ]  # fmt: skip
    return (
        f"Supermasks learned with {', '.join(options['methods'])} at k = {', '.join(f'{k:g}' for k in options['ks'])} "
        f"over frozen {options['weights']} weights{' (' + ', '.join(extras) + ')' if extras else ''}, at width "
        f"{', '.join(f'x{w:g}' for w in options['widths'])}, {replicates} replicate(s) each; references: a random mask "
        "of the learned mask's per-layer density on the same weights, and the dense network trained."
    )


def _width_table(summary: list[dict[str, Any]]) -> str:
    """Method x k at one width: density, accuracy (mean ± std, n), zhou's expected mask, random mask, dense."""
    dense = next((s for s in summary if s["method"] == "dense"), None)
    random = {(s["baseline_of"], s["k"]): s for s in summary if s["baseline_of"]}
    dense_acc = _pct(dense["test_acc_mean"], dense["test_acc_std"], dense["n"]) if dense else "-"
    lines = []
    for s in summary:
        if s["method"] == "dense" or s["baseline_of"]:
            continue
        rnd = random.get((s["method"], s["k"]))
        acc = _pct(s["test_acc_mean"], s["test_acc_std"], s["n"])
        random_acc = _pct(rnd["test_acc_mean"], rnd["test_acc_std"], rnd["n"]) if rnd else "-"
        density = f"{100 * s['density']:.1f}"
        lines.append(
            [s["method"], f"{s['k']:g}", density, acc, s["n"], _pct(s["expected_mean"]), random_acc, dense_acc]
        )
    head = ["method", "k", "density %", "test acc %", "n", "expected mask %", "random mask %", "dense %"]
    return html_table(head, lines, "supermask")


@panel("Strong lottery tickets: supermasks (ticketlab supermask)")
def supermask_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    """Per width, a table of method x k (density, test accuracy, zhou's expected mask, the random mask of the same
    per-layer density, the dense network), the run's two plots, and what was run. None for other runs."""
    options = supermask_options(run)
    found = supermask_rows(run) if options is not None else []
    if not found:
        return None
    summary = SR.summarize_rows(found)
    replicates = run.saved()["config"].get("imp", {}).get("replicates", "?")
    parts = [
        f"<p>{html.escape(_what_ran(options, replicates))} Test accuracy: mean ± {html.escape(SPREAD)} over n "
        "replicates; expected mask: zhou's network with each weight scaled by its keep probability (instead of one "
        "sampled mask); the random mask is evaluated without training.</p>"
    ]
    for width in sorted({s["width"] for s in summary}):
        parts.append(f"<h3>width x{width:g}</h3>")
        parts.append(_width_table([s for s in summary if s["width"] == width]))
    parts.append(inline_png(run.path / "accuracy_vs_k.png", "test accuracy vs k"))
    parts.append(inline_png(run.path / "accuracy_vs_width.png", "test accuracy vs width"))
    return "".join(parts)


PANELS.insert(0, PANELS.pop())  # first on the page: for a supermask run it is the result (the IMP panels are absent)
