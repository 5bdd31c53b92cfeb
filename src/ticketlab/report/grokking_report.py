"""``ticketlab report`` of a grokking run (``ticketlab grokking``, issue 16): the summary table of its
``results.csv`` (:func:`ticketlab.grokking.table`) and its ``curves.png``, and its HTML panel. Importing this module
(the CLI's ``cli_grokking`` and ``import ticketlab`` do) adds the report to :data:`ticketlab.report.REPORTERS` and
the panel to the page (:mod:`ticketlab.report.html`)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.grokking import summarize_rows, table
from ticketlab.report import REPORTERS
from ticketlab.report.html import PANELS, panel, pre
from ticketlab.rundir import RunDir
from ticketlab.store import read_csv


def grokking_report(run_dir: Path, metric: str = "final_test_acc") -> tuple[str, Path] | None:
    """``ticketlab report`` of a grokking run: :func:`table` of its ``results.csv`` and ``curves.png``; None for any
    other directory. TicketlabError for another ``metric`` or before ``results.csv`` exists."""
    run = RunDir(Path(run_dir))
    try:
        if not run.config_file.exists() or "grokking" not in run.saved():
            return None
    except TicketlabError:
        return None
    if metric != "final_test_acc":
        raise TicketlabError(f"--metric {metric}: a grokking run reports final test accuracy; drop --metric")
    if not run.results_file.exists():
        raise TicketlabError(f"{run.path}: no results.csv yet; run the same `ticketlab grokking` command to finish it")
    return table(summarize_rows(grokking_rows(run))), run.path / "curves.png"


def grokking_options(run: RunDir) -> dict[str, Any] | None:
    """The grokking options saved in the run's identity (densities, thresholds); None for any other run."""
    try:
        options = run.saved().get("grokking") if run.config_file.exists() else None
    except TicketlabError:
        return None
    return options if isinstance(options, dict) else None


def grokking_rows(run: RunDir) -> list[dict[str, Any]]:
    """The rows of a grokking run's ``results.csv`` with numbers as numbers (an empty cell: None); [] without it."""
    if not run.results_file.exists():
        return []
    return [
        {k: (v if k in ("mask", "note") else None if v == "" else float(v)) for k, v in raw.items()}
        for raw in read_csv(run.results_file)
    ]


REPORTERS.append(grokking_report)


@panel("Grokking tickets (ticketlab grokking)")
def grokking_panel(run: RunDir, rows: list[dict[str, Any]]) -> str | None:
    """The summary table (steps to generalise, final test and train accuracy per mask and density) and the test
    accuracy curves, with the thresholds used. None for other runs or before ``results.csv`` exists."""
    options = grokking_options(run)
    found = grokking_rows(run) if options is not None else []
    if not found:
        return None
    parts = [
        f"<p>Masks from the memorising network (train accuracy >= {options.get('memorised_at')}), the generalised "
        f"network (test accuracy >= {options.get('generalised_at')}), SNIP and SynFlow at theta_0, and random, each "
        "trained from theta_0 with the dense run's data order; steps to generalise: over the replicates that did.</p>",
        pre(table(summarize_rows(found))),
    ]
    curves = run.path / "curves.png"
    if curves.exists():
        data = base64.b64encode(curves.read_bytes()).decode("ascii")
        parts.append(f'<p><img alt="{html.escape("test accuracy vs step")}" src="data:image/png;base64,{data}"></p>')
    return "".join(parts)


PANELS.insert(0, PANELS.pop())  # first on the page: for a grokking run it is the result (the IMP panels are absent)
